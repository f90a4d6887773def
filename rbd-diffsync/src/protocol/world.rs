//! What the protocol needs of the clusters it works on, as traits: connections, the source
//! image at its end snapshot, the destination image with its lock, watchers and header. The
//! protocol is written once against them; [`super::rbd`] implements them on librbd, and the
//! simulated cluster of the fault-schedule explorer (feature `sim`) implements them in memory.

use std::sync::Arc;
use std::time::Duration;

use crate::copy::engine::{DiffSink, DiffSource};
use crate::error::Result;
use crate::plan::pipeline::Outline;
use crate::plan::DiffExtent;
use crate::progress::StopCheck;
pub(crate) use crate::progress::Threads;
use crate::protocol::record::Client;
use crate::rbd::image::{ImageInfo, Layout, Snapshot};
use crate::spec::{ClusterSpec, ImageSpec};

/// Where transfers connect.
pub(crate) trait World: Send + Sync {
    /// How background steps run on it.
    fn threads(&self) -> Threads;

    /// A connection to the cluster `spec` names.
    fn connect(&self, spec: &ClusterSpec) -> Result<Arc<dyn Conn>>;
}

/// The facts of a source image that a transfer records and checks.
#[derive(Clone, Debug)]
pub(crate) struct SourceFacts {
    pub info: ImageInfo,
    pub layout: Layout,
    pub image_id: String,
    pub pool_id: i64,
    /// The namespace, empty for none.
    pub namespace: String,
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// What the source's scan found before the copy.
pub(crate) struct Scan {
    /// The diff, or where to scan it exactly while the copy runs.
    pub outline: Outline,
    /// For an incremental, the ranges the source read as zeros at `from_snap` (whole
    /// objects: only ever too few).
    pub zero_at_from: Vec<(u64, u64)>,
}

/// The pool and image ids of a destination, to tell it from the source whatever their names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageId {
    pub pool_id: i64,
    pub namespace: String,
    pub image_id: String,
}

/// The state of a client's process, as seen from its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Process {
    /// It ended (or was killed and awaits its parent): its connections are gone.
    Ended,
    /// It is stopped (SIGSTOP, a debugger): alive, and it goes on when continued.
    Stopped,
    /// It runs.
    Running,
}

/// A connection to one cluster, as one client.
pub(crate) trait Conn: Send + Sync {
    /// The cluster's fsid.
    fn fsid(&self) -> Result<String>;

    /// This client: its address, process, and whether other transfers share it.
    fn client(&self) -> Result<Client>;

    /// `spec` with its pool filled in (the cluster's `rbd_default_pool` when it names none).
    fn resolve(&self, spec: &ImageSpec) -> Result<ImageSpec>;

    /// Opens the image of `spec` (resolved) for reading, at its snapshot or HEAD.
    fn open_source(&self, spec: &ImageSpec) -> Result<Arc<dyn SourceImage>>;

    /// The header of the image of `spec` (resolved), reached without opening the image;
    /// `None` if there is no such image (or it is of the old format).
    fn header(&self, spec: &ImageSpec) -> Result<Option<Arc<dyn Header>>>;

    /// Opens the image of `spec` (resolved) at HEAD: for writing, which registers this
    /// client's watch, or for reading only, which does not. `NotFound` if it is missing.
    fn open_dest(&self, spec: &ImageSpec, write: bool) -> Result<Arc<dyn DestImage>>;

    /// Creates the image of `spec` (resolved), of `size` bytes with `layout`.
    fn create(&self, spec: &ImageSpec, size: u64, layout: &Layout) -> Result<()>;

    /// Fences off the client at `address`: blocklists it, and returns once the cluster's
    /// OSD map lists it as blocklisted. Nothing it sends after that is carried out.
    fn fence(&self, address: &str) -> Result<()>;

    /// The state of the process of `client`, when it runs on this host (in this pid
    /// namespace); `None` when that cannot be told from here.
    fn process(&self, client: &Client) -> Option<Process>;

    /// Why `pool` takes no writes, if it is marked full: its quota, or the cluster's space.
    fn pool_full(&self, pool: &str) -> Option<String>;
}

/// The source image, open at its end snapshot (or HEAD).
pub(crate) trait SourceImage: DiffSource + Send + Sync {
    /// `pool[/namespace]/image[@snap]`.
    fn label(&self) -> &str;

    /// Its size, layout, ids and snapshots.
    fn facts(&self) -> Result<SourceFacts>;

    /// The diff since `from` (or since it was empty), and for an incremental the ranges it
    /// read as zeros at `from`; `size` is the size at the end snapshot. A `stop` that turns
    /// true ends the scan with `ECANCELED`.
    fn scan(
        &self,
        from: Option<&Snapshot>,
        size: u64,
        whole_object: bool,
        stop: &StopCheck,
    ) -> Result<Scan>;

    /// The exact diff since `from` over `[offset, offset + len)`, as librbd reports it.
    fn exact(
        &self,
        from: Option<&str>,
        offset: u64,
        len: u64,
        stop: &StopCheck,
    ) -> Result<Vec<DiffExtent>>;

    /// The image's snapshots as the cluster has them now (not as they were when it was
    /// opened), oldest first.
    fn snapshots_now(&self) -> Result<Vec<Snapshot>>;
}

/// The destination image, open at HEAD.
pub(crate) trait DestImage: DiffSink + DiffSource + Send + Sync {
    /// `pool[/namespace]/image`.
    fn path(&self) -> &str;

    /// Its pool and image ids.
    fn id(&self) -> Result<ImageId>;

    /// Its size in bytes.
    fn size(&self) -> Result<u64>;

    /// Its snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<Snapshot>>;

    /// Whether it has the exclusive-lock feature.
    fn lockable(&self) -> Result<bool>;

    /// The addresses of the clients holding its exclusive lock.
    fn lock_owners(&self) -> Result<Vec<String>>;

    /// The addresses of the clients watching it (having it open for writing).
    fn watchers(&self) -> Result<Vec<String>>;

    /// Whether the client at `address` answers a notification within `timeout`; `None` when
    /// it no longer watches the image.
    fn answers(&self, address: &str, timeout: Duration) -> Result<Option<bool>>;

    /// Takes the exclusive lock and keeps it until the image is closed; a lock held by a live
    /// client fails with `EROFS`.
    fn acquire_lock(&self) -> Result<()>;

    /// Whether this client holds the exclusive lock, as it knows.
    fn holds_lock(&self) -> Result<bool>;

    /// Takes the exclusive lock over from the client at `owner`, fenced off before: breaks
    /// its lock and takes it. `true` if the lock was `owner`'s and passed to this client with
    /// nobody holding it in between. (On librbd these are two calls one after the other: a
    /// writer that took the lock and let it go again between them would go unseen; its writes
    /// are caught only by a verification.)
    fn take_over_lock(&self, owner: &str) -> Result<bool>;

    /// The ranges where it changed since its snapshot `from`, including what a resize added
    /// or cut off; `size` is its size now. Whole objects, or with `exact` the ranges written
    /// (found within the whole objects).
    fn changed_since(
        &self,
        from: &Snapshot,
        size: u64,
        exact: bool,
        stop: &StopCheck,
    ) -> Result<Vec<(u64, u64)>>;

    /// The ranges of `[0, size)` that hold data (whole objects, parent data included).
    fn allocated(&self, size: u64, stop: &StopCheck) -> Result<Vec<(u64, u64)>>;

    /// Grows or shrinks it to `size` bytes.
    fn resize(&self, size: u64) -> Result<()>;

    /// Waits until every completed write is on the OSDs.
    fn flush(&self) -> Result<()>;

    /// Creates the snapshot `name` of HEAD (nobody else writes it: no quiesce).
    fn create_snapshot(&self, name: &str) -> Result<()>;
}

/// What the destination's header says of transfers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HeaderState {
    /// The claim, as stored.
    pub claim: Option<String>,
    /// The in-progress record, as stored.
    pub record: Option<String>,
}

/// The destination's header object, where the claim and the in-progress record are kept
/// (under librbd's metadata keys), written without librbd's lock: each write is one atomic
/// operation that first compares the claim.
pub(crate) trait Header: Send + Sync {
    /// The claim and the record, in one read.
    fn read(&self) -> Result<HeaderState>;

    /// Sets the claim to `new` (removes it for `None`) if it is `expected` (absent for
    /// `None`); `Ok(false)`, changing nothing, if it is not.
    fn swap_claim(&self, expected: Option<&str>, new: Option<&str>) -> Result<bool>;

    /// Sets the record (removes it for `None`), and removes the claim too if
    /// `release_claim`, if the claim is `holder`; `Ok(false)`, changing nothing, if it is not.
    fn write_record(&self, holder: &str, record: Option<&str>, release_claim: bool)
        -> Result<bool>;
}
