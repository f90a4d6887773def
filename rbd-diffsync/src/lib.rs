//! Move the changes between two snapshots of a Ceph RBD image into another image, on the same
//! or another cluster: what `rbd export-diff ... - | rbd import-diff - ...` does, with a window
//! of parallel I/O, zero detection, progress, cancellation, and checks before anything is
//! written.
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
//! What a transfer guarantees:
//! 1. Everything is checked before the first write: the source image, its end snapshot and
//!    `from_snap`; for an incremental, the destination image and its `from_snap`; that the end
//!    snapshot is not already on the destination. A failed check writes nothing.
//! 2. Ranges the diff reports as gone read as zeros on the destination afterwards.
//! 3. The destination grows before the writes and shrinks after them.
//! 4. All-zero runs (4 KiB granularity) are never written as data: they become write_zeroes,
//!    or nothing where the destination reads zeros already.
//! 5. The destination's end snapshot is created only after every write succeeded: it is the
//!    commit marker.

mod cluster;
mod engine;
mod error;
mod image;
mod plan;
mod progress;
mod spec;
mod sys;
mod transfer;

pub use cluster::{Cluster, Pool};
pub use error::{Errno, Error, Result};
pub use image::{DiffExtent, Image, ImageInfo, Snapshot};
pub use progress::{CancelToken, Progress, TransferStats};
pub use spec::{ClusterSpec, ImageSpec, DEFAULT_POOL};
pub use transfer::{DiffTransfer, DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW};

/// The planner and zero detection, for the project's own micro-benchmarks: no stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::plan::{
        complement, is_zero, normalize, pieces, zero_runs, KnownZero, Piece, Run, ZERO_BLOCK,
    };
}
