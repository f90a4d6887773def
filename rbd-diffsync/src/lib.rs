//! Move the changes between two snapshots of a Ceph RBD image into another image, on the same
//! or another cluster: what `rbd export-diff ... - | rbd import-diff - ...` does, with a window
//! of parallel I/O, zero detection, progress, cancellation, checks before anything is written,
//! and reruns that complete what an interrupted transfer left.
//!
//! # Map of the crate
//!
//! ```text
//! front      DiffTransfer, SyncMany, Verify; settings   what callers build and run
//!   │
//! protocol/  claim, fence, lock, checks, record,        whether, where and how a transfer
//!   │        batch; world: the cluster as traits        writes; the commit
//! verify/    comparison of two images, range by range   what --verify reads back
//!   │
//! copy/      engine ◀─ DiffSource / DiffSink ─▶ librbd   a window of requests in flight,
//!   │        pair; budget, rate, checkpoints           bounded in bytes, requests, rate
//! plan/      extents, pieces, zero runs; diff scan;     what to copy, found ahead of it
//!   │        pipeline (cells scanned ahead)
//! rbd/       sys (the C API), cluster, image            the only code that calls librbd
//!
//! shared by all: error, spec (ClusterSpec, ImageSpec), progress (Reporter, stats), locks
//! ```
//!
//! Each layer calls only the layers under it. A new source or sink implements the copy
//! engine's two traits and leaves the engine alone; `docs/architecture.md` says more.
//!
//! ```no_run
//! use rbd_diffsync::{ClusterSpec, DiffTransfer};
//!
//! // Full: creates backups/vol.backup (if missing) and its snapshot s1.
//! DiffTransfer::new("rbd/vol@s1".parse()?, "backups/vol.backup".parse()?)
//!     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf"))
//!     .run()?;
//! // Incremental: only what changed between s1 and s2, then snapshot s2.
//! let stats = DiffTransfer::new("rbd/vol@s2".parse()?, "backups/vol.backup".parse()?)
//!     .from_snap("s1")
//!     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf"))
//!     .run()?;
//! println!("{} bytes written, {} zeroed", stats.bytes_written, stats.bytes_zeroed);
//! # Ok::<(), rbd_diffsync::Error>(())
//! ```
//!
//! # What a transfer guarantees
//!
//! 1. **Checks first.** The source image, its end snapshot and `from_snap`; for an
//!    incremental, the destination image and its `from_snap` of the same size; that the end
//!    snapshot is not on the destination yet; that the destination may be written (below). A
//!    failed check writes nothing.
//! 2. **A commit marker.** The destination's end snapshot is created only after every write
//!    has succeeded. A transfer that fails, is cancelled or is killed leaves no end snapshot.
//! 3. **Reruns complete interrupted transfers.** Before its first write a transfer records in
//!    the destination's image metadata (`rbd_diffsync.in_progress`) which source image
//!    (cluster fsid, pool id, image id), base and end snapshot it is writing; the record goes
//!    when the end snapshot is made. A later transfer of the same source and base, with an
//!    end snapshot not older, continues over what the interrupted one wrote: it also rewrites,
//!    from the source, every range the destination changed since `from_snap`, so the result
//!    reads as the source's end snapshot whatever the interrupted run had written. While it
//!    copies, a transfer records a checkpoint in that record (at most once a second, after a
//!    flush): the offset below which it has written everything. A rerun of the very same diff
//!    (same base and end snapshot, by id) resumes there instead of starting again
//!    ([`TransferStats::bytes_resumed`]): it trusts what lies below when the destination's
//!    lock passed straight from the interrupted run to it, and otherwise compares it with the
//!    source and rewrites what differs ([`TransferStats::bytes_rechecked`]). A source read at
//!    HEAD never resumes.
//! 4. **Nothing overwritten by mistake.** An incremental into a destination changed since
//!    `from_snap` by anyone else is refused
//!    ([`DestinationChanged`](ErrorKind::DestinationChanged)). A full transfer writes into an
//!    existing image only when it is empty (no snapshots, nothing allocated, as cinder creates
//!    it) or holds an interrupted full transfer from the same source; an image with snapshots
//!    or data is refused ([`Exists`](ErrorKind::Exists)), and so is one another client has
//!    open ([`Busy`](ErrorKind::Busy)). [`DiffTransfer::overwrite_existing`] allows both.
//! 5. **No other writer.** The destination is claimed (an atomic compare-and-set in its
//!    header naming the transfer and its process) before it is opened for writing, and its
//!    exclusive lock is held from the checks to the end snapshot, in a mode in which librbd
//!    hands it to nobody: another client's writes fail meanwhile. A destination locked or
//!    claimed by a live client is refused ([`Busy`](ErrorKind::Busy)), naming it. Only the
//!    transfer's own predecessor (the run it repeats) is ever fenced off, and only once it is
//!    gone: its process on this host ended, or on another host it does not answer a
//!    notification within 2 s (a stopped process on this host is alive, and the rerun is
//!    refused). Fencing is an explicit blocklist, confirmed in the OSD map, before its lock is
//!    taken over ([`TransferStats::broke_lock_of`]); a client that was fenced off fails with
//!    [`Fenced`](ErrorKind::Fenced). No other client is ever fenced.
//! 9. **No hang.** Every call to the cluster has a timeout
//!    ([`ClusterSpec::connect_timeout`], [`ClusterSpec::op_timeout`]: 30 s and 60 s by
//!    default); a key the monitors refuse is reported as such within seconds
//!    ([`PermissionDenied`](ErrorKind::PermissionDenied)), and a write refused or held by a
//!    full pool names the pool and its quota ([`NoSpace`](ErrorKind::NoSpace)).
//! 6. **The same content as the pipe.** Ranges the diff reports as gone read as zeros
//!    afterwards; the destination grows before the writes and shrinks after them; all-zero
//!    runs (4 KiB granularity) are never written as data, but become `write_zeroes`, or
//!    nothing where the destination is known to read zeros already.
//! 7. **A destination it creates has the source's layout**: object size, stripe unit, stripe
//!    count and features.
//! 8. **Stoppable at every phase.** The progress callback runs on the calling thread only, in
//!    every phase, also while a call to the cluster blocks; its return value, a panic in it,
//!    and the [`CancelToken`] stop the transfer. Steps that write are waited for; steps that
//!    only read are stopped, so a stop takes effect within the progress interval; `run()`
//!    returns once they have ended (a connection attempt given up on ends on its own within
//!    the connect timeout). Once the end snapshot is being made, the transfer completes, and
//!    its result says so.
//!
//! # Verification
//!
//! [`DiffTransfer::verify`] reads back, after the writes and before the end snapshot, every
//! range the end snapshot will be claimed to equal, from the source at its end snapshot and
//! from the destination: what the transfer wrote or zeroed, what an interrupted transfer it
//! resumes or continues had written, and whatever the destination changed since `from_snap`
//! (for a full transfer, all it holds). A difference fails the transfer with an error of kind
//! [`Mismatch`](ErrorKind::Mismatch) naming the first differing offset, takes the checkpoint
//! back below it, and no end snapshot is made: running the transfer again rewrites it.
//! [`Verify`] compares two whole images, on one cluster or two, with a window of reads in
//! flight; what neither image has allocated reads as zeros on both and is not read.
//!
//! ```no_run
//! use rbd_diffsync::{ClusterSpec, Verify};
//!
//! let stats = Verify::new("rbd/vol@s2".parse()?, "backups/vol.backup@s2".parse()?)
//!     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf"))
//!     .run()?;
//! println!("equal: {} bytes compared, {} unallocated on both", stats.bytes_compared,
//!     stats.bytes_skipped);
//! # Ok::<(), rbd_diffsync::Error>(())
//! ```
//!
//! # Errors
//!
//! One [`Error`] type with a stable [`ErrorKind`], the exact errno (or a library code) and a
//! message naming the cluster, image and snapshot concerned: the table is in [`error`].

#![warn(missing_docs)]

pub mod error;
mod locks;

// The shared vocabulary of every layer.
mod progress;
mod settings;
mod spec;

// The public front: the transfers and verifications callers build and run.
mod many;
mod transfer;

// The layers under it, each calling only the ones below it.
mod copy;
mod plan;
mod protocol;
mod rbd;
mod verify;

#[cfg(feature = "sim")]
#[doc(hidden)]
pub mod sim;

pub use error::{Error, ErrorKind, Result};
pub use many::{BatchProgress, SyncMany, VolumeProgress, VolumeState};
pub use progress::{CancelToken, Phase, Progress, ProgressFlow, TransferStats};
pub use settings::{
    BatchSettings, Settings, DEFAULT_BATCH_BUDGET, DEFAULT_BATCH_REQUESTS, DEFAULT_CHUNK_SIZE,
    DEFAULT_PARALLEL, DEFAULT_PROGRESS_INTERVAL, DEFAULT_WINDOW, MAX_CHUNK_SIZE, MAX_PARALLEL,
    MAX_WINDOW,
};
pub use spec::{ClusterSpec, ImageSpec, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT};
pub use transfer::{DiffTransfer, Plan};
pub use verify::{Verify, VerifyStats};

/// The librbd layer, planner and zero detection, for the project's own tests and benchmarks:
/// no stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::plan::scan::{scan_diff, Method as ScanMethod};
    pub use crate::plan::{
        complement, is_zero, normalize, pieces, zero_runs, DiffExtent, KnownZero, Piece, Run,
        ZERO_BLOCK,
    };
    pub use crate::protocol::record::{HOLDER_KEY, KEY as RECORD_KEY};
    pub use crate::rbd::cluster::{Cluster, Pool};
    pub use crate::rbd::image::{Image, ImageInfo, Layout, Snapshot, Watcher};
}
