//! `DiffTransfer`: what `rbd export-diff | rbd import-diff` does, checked first, done with a
//! window of parallel I/O, and safe to interrupt and run again.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::budget::RateLimit;
use crate::checkpoint::{self, Checkpointer};
use crate::cluster::{Cluster, Pool};
use crate::destination::{self, Checks, Verdict};
use crate::engine::{self, Window};
use crate::error::{Error, ErrorKind, Result};
use crate::image::{image_path, Image, ImageInfo, Layout, Snapshot};
use crate::many::BatchLink;
use crate::plan::{self, KnownZero};
use crate::progress::{
    AbandonOnDrop, CancelToken, Phase, Progress, ProgressFlow, ProgressFn, Reporter, StopCheck,
    TransferStats, Waited,
};
use crate::record::{Record, SnapRef};
use crate::scan;
use crate::spec::{ClusterSpec, ImageSpec};
use crate::stream::{self, Outline, Planner, Queue};
use crate::verify;

/// Default size of one data chunk: half the default RBD object size. With the default window
/// it was the fastest of 1, 2 and 4 MiB at 0 and 3 ms of round trip (the sweep behind the
/// latency proxy in BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: u64 = 2 << 20;
/// Default window: memory for this many chunks (64 MiB with the default chunk), our buffers,
/// librados's receive buffers and librbd's copies of writes together. 32 was the fastest of
/// 8, 16 and 32 for the full copy and the incremental, at 0 and 3 ms of round trip; 16 was up
/// to 1.14 times slower.
pub const DEFAULT_WINDOW: usize = 32;
/// Requests in flight at most: enough to keep an OSD busy with small writes, few enough not
/// to flood its queue.
const MAX_REQUESTS: usize = 128;
/// Zeroing requests need no buffer, so they are cut this many times larger than data chunks.
const ZERO_CHUNK_FACTOR: u64 = 16;

/// A transfer of the changes of `source` (at its snapshot, or HEAD) since `from_snap` (or since
/// the image was empty) into `dest`.
///
/// ```no_run
/// use rbd_diffsync::{ClusterSpec, DiffTransfer};
///
/// let stats = DiffTransfer::new("volumes/vol-1@snap2".parse()?, "backups/vol-1.backup".parse()?)
///     .from_snap("snap1")
///     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf").id("cinder"))
///     .dest_cluster(ClusterSpec::new().conf("/etc/ceph/backup.conf").id("cinder-backup"))
///     .on_progress(|p| eprintln!("{:?}: {} / {} bytes", p.phase, p.bytes_done, p.bytes_total))
///     .run()?;
/// println!("{} bytes written in {:?}", stats.bytes_written, stats.elapsed);
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
pub struct DiffTransfer {
    source: ImageSpec,
    dest: ImageSpec,
    from_snap: Option<String>,
    source_cluster: ClusterSpec,
    dest_cluster: Option<ClusterSpec>,
    chunk_size: u64,
    window: usize,
    whole_object: bool,
    overwrite_existing: bool,
    verify: bool,
    progress: Option<ProgressFn>,
    progress_interval: Duration,
    cancel: CancelToken,
    rate_limit: Option<u64>,
    /// What it shares with the other transfers of a batch.
    batch: Option<Arc<BatchLink>>,
}

impl std::fmt::Debug for DiffTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffTransfer")
            .field("source", &self.source)
            .field("dest", &self.dest)
            .field("from_snap", &self.from_snap)
            .field("source_cluster", &self.source_cluster)
            .field("dest_cluster", &self.dest_cluster)
            .field("chunk_size", &self.chunk_size)
            .field("window", &self.window)
            .field("whole_object", &self.whole_object)
            .field("overwrite_existing", &self.overwrite_existing)
            .field("verify", &self.verify)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

/// What a transfer would do, found by [`DiffTransfer::plan`] without writing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Plan {
    /// The source, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: String,
    /// The destination image, `pool[/namespace]/image`, its pool resolved.
    pub dest: String,
    /// The base of an incremental; `None` for a full transfer.
    pub from_snap: Option<String>,
    /// The snapshot the transfer creates on the destination; `None` for a source at HEAD.
    pub end_snap: Option<String>,
    /// The source size, which the destination will have.
    pub source_size: u64,
    /// The destination's size now; `None` when the transfer creates it.
    pub dest_size: Option<u64>,
    /// Whether the transfer creates the destination.
    pub create_destination: bool,
    /// Whether the destination holds the writes of an interrupted transfer of the same diff,
    /// which this one completes.
    pub continues_interrupted: bool,
    /// Where the transfer resumes: the checkpoint of the interrupted transfer of the very same
    /// diff (source image, base and end snapshot), below which it had written everything; 0
    /// when it starts from the beginning.
    pub resume_from: u64,
    /// Bytes of the diff below `resume_from`, done by the interrupted transfer and not again.
    pub bytes_resumed: u64,
    /// Whether the transfer writes over data or changes that `overwrite_existing` allowed.
    pub overwrites_destination: bool,
    /// Ranges of the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Bytes of those ranges.
    pub diff_bytes: u64,
    /// Bytes to read from the source: the diff's data ranges, and ranges of the destination
    /// to rewrite (from `resume_from` on).
    pub data_bytes: u64,
    /// Bytes to make read as zeros (some may need no request).
    pub zero_bytes: u64,
}

impl DiffTransfer {
    /// Transfers `source` (`pool[/ns]/image@snap`; without `@snap`, HEAD, and then no snapshot
    /// is created on the destination) into the image `dest` (`pool[/ns]/image`).
    pub fn new(source: ImageSpec, dest: ImageSpec) -> Self {
        DiffTransfer {
            source,
            dest,
            from_snap: None,
            source_cluster: ClusterSpec::default(),
            dest_cluster: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
            whole_object: false,
            overwrite_existing: false,
            verify: false,
            progress: None,
            progress_interval: Duration::from_millis(200),
            cancel: CancelToken::new(),
            rate_limit: None,
            batch: None,
        }
    }

    /// Transfers only what changed since this snapshot, which must exist on both images:
    /// an incremental. Without it the transfer is full.
    pub fn from_snap(mut self, snap: impl Into<String>) -> Self {
        self.from_snap = Some(snap.into());
        self
    }

    /// The source's cluster, and the destination's unless [`dest_cluster`](Self::dest_cluster)
    /// says otherwise.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.source_cluster = spec;
        self
    }

    /// The destination's cluster, when it is not the source's.
    pub fn dest_cluster(mut self, spec: ClusterSpec) -> Self {
        self.dest_cluster = Some(spec);
        self
    }

    /// The largest data request, in bytes: a multiple of 4 KiB (default 2 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// The window of I/O in flight, as a number of chunks (default 16): the transfer holds at
    /// most `window × chunk_size` bytes of data at once, librados's receive buffers included.
    /// Smaller pieces share that memory, so many more of them (up to 128) are in flight.
    pub fn window(mut self, chunks: usize) -> Self {
        self.window = chunks;
        self
    }

    /// Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
    /// fast-diff, more data to read (zero detection keeps it from being written).
    pub fn whole_object(mut self, on: bool) -> Self {
        self.whole_object = on;
        self
    }

    /// Allows writing over what the destination holds (`--force`): a full transfer into an
    /// image that has snapshots, holds data or is open by another client, and an incremental
    /// into an image changed since `from_snap` by someone other than an interrupted transfer
    /// of the same diff (the changed ranges are then rewritten from the source, so that the
    /// destination reads as the source's end snapshot). Off by default: those are refused.
    pub fn overwrite_existing(mut self, on: bool) -> Self {
        self.overwrite_existing = on;
        self
    }

    /// After the writes, before the end snapshot, reads back every range the transfer wrote or
    /// zeroed from both images (the source at its end snapshot, the destination at HEAD) and
    /// compares them (`--verify`). A difference fails the transfer with an error of kind
    /// [`Mismatch`](ErrorKind::Mismatch) naming the first differing offset, and no end
    /// snapshot is created: running the transfer again rewrites those ranges. Off by default.
    /// In a [`SyncMany`](crate::SyncMany) batch, the reads of the verification are drawn from
    /// the batch's memory and request budget too: the transfer's share of it (the budget
    /// divided by `parallel`), at most its own window, waiting for room if need be.
    pub fn verify(mut self, on: bool) -> Self {
        self.verify = on;
        self
    }

    /// Called on the thread running the transfer (never on another), at most every
    /// [`progress_interval`](Self::progress_interval) (default 200 ms) in every phase, also
    /// while a blocking call to the cluster runs, and at every change of phase and at the end.
    /// Returning `ControlFlow::Break(())` stops the transfer as its cancel token would; a
    /// panic stops it too, and is resumed once the transfer has stopped.
    pub fn on_progress<R: ProgressFlow>(
        mut self,
        mut f: impl FnMut(&Progress) -> R + Send + 'static,
    ) -> Self {
        self.progress = Some(Box::new(move |p| f(p).keep_going()));
        self
    }

    /// The least time between two progress calls.
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// A token another thread may use to cancel the transfer.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Caps the bytes read from the source at `bytes_per_sec` on average (`--max-rate`); 0
    /// removes the cap (the default). Only data counts: ranges made to read as zeros cost no
    /// read and no data write, and are not held back. The cap is a token bucket holding 50 ms
    /// of the rate (at least 64 KiB), drawn from before each piece is read: waiting for it,
    /// the transfer still reports progress and stops when asked. A piece larger than what the
    /// bucket holds is read once the bucket is full, and the pieces after it wait for the
    /// debt: a transfer of `data` bytes takes at least `(data - bucket - one chunk) / rate`,
    /// and one of a single chunk is not held back at all. In a [`SyncMany`] batch its own
    /// cap applies besides the batch's. With [`verify`](Self::verify), the verification's
    /// reads of the source are held back by the same cap (those of the destination are not).
    ///
    /// [`SyncMany`]: crate::SyncMany
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    fn check_settings(&self) -> Result<()> {
        if let Some(snap) = self.dest.snap() {
            return Err(Error::invalid(format!(
                "invalid image spec {:?}: the destination must be an image; its snapshot is \
                 named after the source's, not {snap:?}",
                self.dest.to_string()
            )));
        }
        if let Some(from) = &self.from_snap {
            if from.is_empty() || from.contains(['@', '/', '\0']) {
                return Err(Error::invalid(format!("invalid from_snap name {from:?}")));
            }
            if Some(from.as_str()) == self.source.snap() {
                return Err(Error::invalid(format!(
                    "from_snap {from:?} is the end snapshot of {}: there is nothing to transfer",
                    self.source
                )));
            }
        }
        check_io_settings(self.chunk_size, self.window)?;
        if self.source.image_path() == self.dest.image_path()
            && self
                .dest_cluster
                .as_ref()
                .is_none_or(|d| *d == self.source_cluster)
        {
            return Err(Error::invalid(format!(
                "source and destination are the same image {}",
                self.dest.image_path()
            )));
        }
        Ok(())
    }

    /// Runs every check and computes the diff, writing nothing (the destination is opened
    /// read-only and not locked): what [`run`](Self::run) would do now.
    pub fn plan(mut self) -> Result<Plan> {
        let started = Instant::now();
        self.check_settings()?;
        let mut reporter = self.reporter(started);
        reporter.dry_run();
        let result = self
            .prepare(&mut reporter, false)
            .and_then(|prepared| self.count(prepared, &mut reporter));
        if let Some(panic) = reporter.take_panic() {
            resume_unwind(panic);
        }
        result
    }

    /// Checks everything, then transfers. Nothing is written unless every check passed; the
    /// destination's end snapshot is created only after every write has succeeded. An
    /// interrupted run leaves no end snapshot, and running it again completes it.
    pub fn run(mut self) -> Result<TransferStats> {
        let started = Instant::now();
        self.check_settings()?;
        let mut reporter = self.reporter(started);
        let result = self.prepare(&mut reporter, true).and_then(|prepared| {
            let (cluster, pool) = (prepared.dest_cluster.clone(), prepared.dest_pool.clone());
            self.execute(prepared, &mut reporter, started)
                .map_err(|e| explain_full_pool(&mut reporter, e, cluster, pool))
        });
        if let Some(panic) = reporter.take_panic() {
            resume_unwind(panic);
        }
        result
    }

    /// The plan with its counts, the diff scanned to the end (nothing is kept of it).
    fn count(&self, prepared: Prepared, reporter: &mut Reporter) -> Result<Plan> {
        let Prepared {
            mut plan,
            source,
            planner,
            ..
        } = prepared;
        let (image, from, stop) = (
            source.image.clone(),
            self.from_snap.clone(),
            reporter.stop_check(),
        );
        let what = format!("the diff of {}", source.spec);
        let totals = detached(reporter, &plan.dest, what, move || {
            let scan = |offset, len| scan::exact(&image, from.as_deref(), offset, len, &stop);
            planner.run(&scan, &mut |_| Ok(()))
        })
        .map_err(|e| self.stopped_or(reporter, e))?;
        plan.extents = totals.extents;
        plan.diff_bytes = totals.diff_bytes;
        plan.bytes_resumed = totals.bytes_resumed;
        plan.data_bytes = totals.data_bytes;
        plan.zero_bytes = totals.zero_bytes;
        Ok(plan)
    }

    fn reporter(&mut self, started: Instant) -> Reporter {
        Reporter::new(
            self.progress.take(),
            self.progress_interval,
            self.cancel.clone(),
            started,
        )
    }
}

/// The source image, open at its end snapshot.
struct Source {
    spec: ImageSpec,
    image: Arc<Image>,
    info: ImageInfo,
    layout: Layout,
    from: Option<Snapshot>,
    /// What the in-progress record says of this transfer (client filled in later).
    record: Record,
}

/// The images open, before the checks.
struct Opened {
    source: Source,
    dest_cluster: Cluster,
    dest_pool: Pool,
    /// `None` when the transfer creates the destination.
    dest: Option<Arc<Image>>,
    /// The destination client's address.
    me: String,
    /// Who the destination named as its writer before this transfer claimed it, when it was
    /// opened for writing.
    previous_holder: Option<String>,
}

/// Everything `run` needs once the checks have passed.
struct Prepared {
    plan: Plan,
    source: Source,
    dest_pool: Pool,
    dest_cluster: Cluster,
    /// `None` when the transfer creates the destination.
    dest: Option<Arc<Image>>,
    planner: Planner,
    known_zero: KnownZero,
    record: Record,
    /// The killed predecessor whose lock was broken.
    broke_lock_of: Option<String>,
}

/// What the source's scan found before the copy.
struct Scan {
    /// The diff, or where to scan it exactly while the copy runs.
    outline: Outline,
    /// For an incremental, the ranges the source read as zeros at `from_snap` (whole
    /// objects: only ever too few).
    zero_at_from: Vec<(u64, u64)>,
}

/// A scan of the source running on a thread of its own.
struct ScanJob {
    rx: mpsc::Receiver<std::thread::Result<Result<Scan>>>,
    /// What it is, for progress while it is waited for.
    what: String,
    /// Stops the scan when the job is dropped unwaited.
    _abandon: AbandonOnDrop,
}

/// The source's diff, and for an incremental the ranges it read as zeros at `from`, the two
/// scans at once (with the object map, each is a pass over it). A `stop` that turns true ends
/// them with `ECANCELED`.
fn scan_source(
    image: &Image,
    name: &str,
    from: Option<&Snapshot>,
    size: u64,
    whole_object: bool,
    stop: &StopCheck,
) -> Result<Scan> {
    let Some(from) = from else {
        let method = scan::Method::choose(whole_object, &[image])?;
        return Ok(Scan {
            outline: scan::outline(image, None, size, method, stop)?,
            zero_at_from: Vec::new(),
        });
    };
    // The base too must have a valid object map for the diff to be read from it.
    let at_from = Image::open_read_only(image.pool(), name, Some(&from.name))?;
    let method = scan::Method::choose(whole_object, &[image, &at_from])?;
    std::thread::scope(|s| {
        let zeros = s.spawn(|| {
            let allocated = destination::allocated_ranges(&at_from, from.size, true, stop)?;
            Ok(plan::complement(&allocated, size))
        });
        let outline = scan::outline(image, Some(&from.name), size, method, stop);
        let zero_at_from = zeros.join().unwrap_or_else(|panic| resume_unwind(panic));
        Ok(Scan {
            outline: outline?,
            zero_at_from: zero_at_from?,
        })
    })
}

/// What the checks found about the destination; the default is one to be created.
#[derive(Default)]
struct Found {
    /// Its size, if it exists.
    size: Option<u64>,
    verdict: Verdict,
    /// For a full transfer into it, its allocated ranges.
    allocated: Option<Vec<(u64, u64)>>,
}

/// The checks of an existing destination (see [`Checks`]): its snapshots, its changes since
/// `from`, or for a full transfer its allocated ranges. Reads only.
fn check_destination(
    dest: &Image,
    end: Option<String>,
    from: Option<Snapshot>,
    record: &Record,
    me: &str,
    force: bool,
    stop: &StopCheck,
) -> Result<Found> {
    let label = dest.path();
    let snaps = dest.snapshots()?;
    if let Some(end) = end.filter(|end| snaps.iter().any(|s| s.name == *end)) {
        return Err(Error::snap_exists(label, &end));
    }
    // Read again: it may have changed while the lock was awaited.
    let previous = destination::read_record(dest)?;
    let size = dest.size()?;
    let checks = Checks {
        dest,
        dest_size: size,
        snaps: &snaps,
        me,
        record,
        previous: previous.as_ref(),
        force,
        stop,
    };
    Ok(match &from {
        Some(from) => Found {
            size: Some(size),
            verdict: checks.incremental(from)?,
            allocated: None,
        },
        None => {
            let allocated = destination::allocated_ranges(dest, size, false, stop)?;
            Found {
                size: Some(size),
                verdict: checks.full(&allocated)?,
                allocated: Some(allocated),
            }
        }
    })
}

/// Checks a chunk size and a window (in chunks).
pub(crate) fn check_io_settings(chunk_size: u64, window: usize) -> Result<()> {
    if chunk_size < plan::ZERO_BLOCK || chunk_size % plan::ZERO_BLOCK != 0 || chunk_size > 1 << 30 {
        return Err(Error::invalid(format!(
            "chunk size {chunk_size} is not a multiple of 4096 between 4 KiB and 1 GiB"
        )));
    }
    if window == 0 || window > 1024 {
        return Err(Error::invalid(format!(
            "window {window} is not between 1 and 1024"
        )));
    }
    Ok(())
}

/// The engine's window for `window` chunks of `chunk_size` bytes.
pub(crate) fn io_window(chunk_size: u64, window: usize) -> Window {
    Window {
        budget: window * chunk_size as usize,
        max_requests: MAX_REQUESTS.max(window),
    }
}

/// Runs a blocking step that writes nothing on a helper thread, the reporter ticking.
pub(crate) fn detached<T: Send + 'static>(
    reporter: &mut Reporter,
    dest: &str,
    what: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match reporter.wait(what, true, f) {
        Waited::Done(result) => result,
        Waited::Stopped => Err(reporter.stopped_error(dest)),
    }
}

/// Runs a blocking step that writes on a helper thread, the reporter ticking; it is waited for
/// even when the transfer is asked to stop meanwhile.
fn waited<T: Send + 'static>(
    reporter: &mut Reporter,
    what: String,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match reporter.wait(what, false, f) {
        Waited::Done(result) => result,
        Waited::Stopped => unreachable!("a step that writes is not detached"),
    }
}

impl DiffTransfer {
    /// Connects to the cluster of `spec`, or, in a batch, takes the batch's connection.
    fn connect(&self, reporter: &mut Reporter, dest: &str, spec: &ClusterSpec) -> Result<Cluster> {
        let Some(batch) = &self.batch else {
            return connect(reporter, dest, spec);
        };
        let (batch, owned) = (batch.clone(), spec.clone());
        detached(
            reporter,
            dest,
            format!("the monitors of {spec}"),
            move || batch.connections.get(&owned),
        )
    }

    /// Joins a batch: its budget, rate limit and connections are shared.
    pub(crate) fn join_batch(&mut self, link: Arc<BatchLink>) {
        self.batch = Some(link);
    }

    /// Takes the progress callback out, to be called by the batch's own.
    pub(crate) fn take_progress(&mut self) -> Option<ProgressFn> {
        self.progress.take()
    }

    /// The cancel token of the transfer.
    pub(crate) fn token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Source, destination and base, as given.
    pub(crate) fn names(&self) -> (String, String, Option<String>) {
        (
            self.source.to_string(),
            self.dest.to_string(),
            self.from_snap.clone(),
        )
    }

    /// The destination and its cluster, to find two transfers into one image.
    pub(crate) fn dest_key(&self) -> (String, ClusterSpec) {
        (
            self.dest.to_string(),
            self.dest_cluster
                .clone()
                .unwrap_or_else(|| self.source_cluster.clone()),
        )
    }
}

pub(crate) fn connect(reporter: &mut Reporter, dest: &str, spec: &ClusterSpec) -> Result<Cluster> {
    let owned = spec.clone();
    detached(
        reporter,
        dest,
        format!("the monitors of {spec}"),
        move || Cluster::connect(&owned),
    )
}

/// Opens the pool of `spec` on `cluster`, with the cluster's `rbd_default_pool` for a spec that
/// names none; returns the spec with its pool filled in.
pub(crate) fn open_pool(cluster: &Cluster, spec: &ImageSpec) -> Result<(ImageSpec, Pool)> {
    let spec = match spec.pool() {
        Some(_) => spec.clone(),
        None => spec.in_default_pool(&cluster.config("rbd_default_pool")?),
    };
    let pool = cluster.pool(spec.pool().unwrap_or_default(), spec.namespace())?;
    Ok((spec, pool))
}

/// Opens the source at its end snapshot and checks its snapshots: `from_name` must be one of
/// them, not newer than the end.
fn open_source(conn: &Cluster, spec: &ImageSpec, from_name: Option<&str>) -> Result<Source> {
    let (spec, pool) = open_pool(conn, spec)?;
    let image = Image::open_read_only(&pool, spec.image(), spec.snap())?;
    let path = spec.image_path();
    let snaps = image.snapshots()?;
    let find = |name: &str| snaps.iter().find(|s| s.name == name).cloned();
    let end = spec.snap().and_then(find);
    let from = match from_name {
        Some(name) => Some(find(name).ok_or_else(|| Error::snap_not_found(&path, name))?),
        None => None,
    };
    if let (Some(from), Some(end)) = (&from, &end) {
        if end.id < from.id {
            return Err(Error::invalid(format!(
                "from_snap {:?} is newer than the end snapshot {:?} of {path}",
                from.name, end.name
            ))
            .with_image(path)
            .with_snap(&from.name));
        }
    }
    let snap_ref = |s: &Snapshot| SnapRef {
        id: s.id,
        name: s.name.clone(),
    };
    let record = Record {
        fsid: conn.fsid()?,
        pool_id: pool.id(),
        namespace: pool.namespace().unwrap_or_default().to_owned(),
        image_id: image.id()?,
        source: path,
        from: from.as_ref().map(snap_ref),
        end: end.as_ref().map(snap_ref),
        client: String::new(),
        started: unix_now(),
        done: 0,
    };
    Ok(Source {
        info: image.info()?,
        layout: image.layout()?,
        image: Arc::new(image),
        spec,
        from,
        record,
    })
}

/// An open destination, and who it named as its writer before this transfer claimed it.
type OpenDest = (Arc<Image>, Option<String>);

/// The destination's pool and the destination, opened for writing with `lock` (named first as
/// written by `me`, with who was named before) or for reading; `None` for a full transfer's
/// missing one.
fn open_destination(
    conn: &Cluster,
    spec: &ImageSpec,
    lock: bool,
    incremental: bool,
    me: &str,
) -> Result<(Pool, Option<OpenDest>)> {
    let (spec, pool) = open_pool(conn, spec)?;
    let opened = if lock {
        destination::open_claimed(&pool, spec.image(), me)
    } else {
        Image::open_read_only(&pool, spec.image(), None).map(|image| (image, None))
    };
    match opened {
        Ok((image, previous)) => Ok((pool, Some((Arc::new(image), previous)))),
        Err(e) if e.kind() == ErrorKind::NotFound && !incremental => Ok((pool, None)),
        Err(e) => Err(e),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DiffTransfer {
    fn dest_label(&self) -> String {
        self.dest.image_path()
    }

    /// Connects to both clusters (one connection when they are the same), then opens the
    /// source at its end snapshot (checking its snapshots) and the destination at once: for
    /// writing with `lock`, `None` for a full transfer's missing one. Opening an image is a few
    /// round trips to the OSDs; the two images' opens overlap.
    fn open_images(&self, reporter: &mut Reporter, lock: bool) -> Result<Opened> {
        let label = self.dest_label();
        let src_cluster = self.connect(reporter, &label, &self.source_cluster)?;
        let dest_cluster = match &self.dest_cluster {
            Some(spec) if *spec != self.source_cluster => self.connect(reporter, &label, spec)?,
            _ => src_cluster.clone(),
        };
        let (src_conn, src_spec, from_name) = (
            src_cluster.clone(),
            self.source.clone(),
            self.from_snap.clone(),
        );
        let (dest_conn, dest_spec, incremental) = (
            dest_cluster.clone(),
            self.dest.clone(),
            self.from_snap.is_some(),
        );
        let me = dest_cluster.address()?;
        let what = format!("{} and {} to open", self.source, self.dest);
        let claimant = me.clone();
        let (stop, _abandon) = reporter.stop_check().abandonable();
        let (source, (dest_pool, dest)) = detached(reporter, &label, what, move || {
            std::thread::scope(|s| {
                let dest = s.spawn(|| {
                    open_destination(&dest_conn, &dest_spec, lock, incremental, &claimant)
                });
                let source = open_source(&src_conn, &src_spec, from_name.as_deref());
                let dest = dest.join().unwrap_or_else(|panic| resume_unwind(panic));
                if let (Ok((_, Some((image, previous)))), true) = (&dest, lock) {
                    if source.is_err() || stop.stopped() {
                        // Refused, or no longer waited for: the claim goes.
                        destination::unclaim(image, previous.as_deref());
                    }
                }
                // The source's error first: without a source there is nothing to check.
                Ok((source?, dest?))
            })
        })?;
        let (dest, previous_holder) = match dest {
            Some((dest, previous)) => (Some(dest), previous),
            None => (None, None),
        };
        Ok(Opened {
            source,
            dest_cluster,
            dest_pool,
            dest,
            me,
            previous_holder,
        })
    }

    /// Every check and the diff; nothing is written. With `lock`, the destination is opened
    /// for writing and its exclusive lock taken, and held until the transfer ends.
    fn prepare(&self, reporter: &mut Reporter, lock: bool) -> Result<Prepared> {
        reporter.phase(Phase::Connecting);
        // With `lock`, the destination names this client as its writer to be before it is
        // open: a rerun after a kill from here on recognises this client, its watch and its
        // lock.
        let opened = self.open_images(reporter, lock)?;
        let claimed = match (&opened.dest, lock) {
            (Some(dest), true) => Some((dest.clone(), opened.previous_holder.clone())),
            _ => None,
        };
        let prepared = self.check(reporter, opened, lock);
        if let (Err(_), Some((dest, previous))) = (&prepared, &claimed) {
            // Refused: nothing of this transfer stays on the destination.
            destination::unclaim(dest, previous.as_deref());
        }
        prepared
    }

    /// The scan, the lock and the checks of `prepare`, once the images are open.
    fn check(&self, reporter: &mut Reporter, opened: Opened, lock: bool) -> Result<Prepared> {
        let Opened {
            source,
            dest_cluster,
            dest_pool,
            dest,
            me,
            previous_holder,
        } = opened;
        let label = image_path(&dest_pool, self.dest.image());
        reporter.phase(Phase::Scanning);
        // The scan of the source overlaps the lock and the checks of the destination: both
        // are round trips to the OSDs, and neither needs the other.
        let scanning = self.start_scan(reporter, &source);
        let mut record = source.record.clone();
        record.client = me.clone();
        let mut broke_lock_of = None;
        let found = match &dest {
            Some(dest) => {
                if lock {
                    let previous = destination::read_record(dest)?;
                    broke_lock_of = destination::lock(
                        reporter,
                        dest,
                        &me,
                        previous.as_ref(),
                        previous_holder.as_deref(),
                    )?;
                }
                // Under the lock from here on: what is read now stays true until the end.
                let (image, record, me) = (dest.clone(), record.clone(), me.clone());
                let (end, from) = (source.spec.snap().map(str::to_owned), source.from.clone());
                let force = self.overwrite_existing;
                let stop = reporter.stop_check();
                let what = format!("the checks of {label}");
                detached(reporter, &label, what, move || {
                    check_destination(&image, end, from, &record, &me, force, &stop)
                })
                .map_err(|e| self.stopped_or(reporter, e))?
            }
            None => Found::default(),
        };
        let scan = self.finish_scan(reporter, scanning, &label)?;
        let (planner, known_zero, plan) = self.work(&source, scan, found, label);
        Ok(Prepared {
            plan,
            source,
            dest_pool,
            dest_cluster,
            dest,
            planner,
            known_zero,
            record,
            broke_lock_of,
        })
    }

    /// Starts the source's scan on a thread of its own (see [`scan_source`]), to run while the
    /// destination is locked and checked. The scan stops when the returned job is dropped
    /// unwaited, as on an error of those checks.
    fn start_scan(&self, reporter: &Reporter, source: &Source) -> ScanJob {
        let (image, from, whole_object) =
            (source.image.clone(), source.from.clone(), self.whole_object);
        let (name, size) = (source.spec.image().to_owned(), source.info.size);
        let what = match &self.from_snap {
            Some(from) => format!("the diff of {} since {from}", source.spec),
            None => format!("the allocated ranges of {}", source.spec),
        };
        let (stop, abandon) = reporter.stop_check().abandonable();
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("rbd-diffsync-scan".to_owned())
            .spawn(move || {
                let scanned = catch_unwind(AssertUnwindSafe(|| {
                    scan_source(&image, &name, from.as_ref(), size, whole_object, &stop)
                }));
                // Nobody waits any more when the job was dropped.
                let _ = tx.send(scanned);
            });
        if let Err(e) = spawned {
            panic!("cannot start a thread: {e}");
        }
        ScanJob {
            rx,
            what,
            _abandon: abandon,
        }
    }

    /// Waits for the scan started by [`start_scan`](Self::start_scan), the reporter ticking.
    fn finish_scan(&self, reporter: &mut Reporter, job: ScanJob, label: &str) -> Result<Scan> {
        let ScanJob { rx, what, _abandon } = job;
        let scanned = detached(reporter, label, what, move || match rx.recv() {
            Ok(Ok(scanned)) => scanned,
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => unreachable!("the scan thread sends its result before it ends"),
        });
        scanned.map_err(|e| self.stopped_or(reporter, e))
    }

    /// What to do: the source's diff, plus the ranges the destination changed since
    /// `from_snap` that the diff does not cover (read from the source), plus, for a full
    /// transfer into an existing image, what it holds outside the diff (zeroed); and where
    /// the destination reads zeros already. The diff's exact extents are found cell by cell
    /// while the copy runs (see [`crate::stream`]): the plan's counts of them are not known
    /// yet.
    fn work(
        &self,
        source: &Source,
        scan: Scan,
        found: Found,
        label: String,
    ) -> (Planner, KnownZero, Plan) {
        let size = source.info.size;
        let (stale, known_zero) = match (found.allocated, found.size) {
            (Some(allocated), _) => {
                let allocated = clip(&allocated, size);
                let known_zero = KnownZero::Ranges(plan::complement(&allocated, size));
                (allocated, known_zero)
            }
            (None, Some(_)) => (
                Vec::new(),
                KnownZero::Ranges(plan::subtract(&scan.zero_at_from, &found.verdict.changed)),
            ),
            (None, None) => (Vec::new(), KnownZero::All),
        };
        let resume_from = found.verdict.resume_from;
        let planner = Planner {
            outline: scan.outline,
            cell: stream::cell_size(source.layout.order),
            size,
            rewrite: clip(&found.verdict.changed, size),
            stale,
            resume_from,
            chunk: self.chunk_size,
            zero_chunk: self.chunk_size * ZERO_CHUNK_FACTOR,
            keep_ranges: self.verify,
        };
        let plan = Plan {
            source: source.spec.to_string(),
            dest: label,
            from_snap: self.from_snap.clone(),
            end_snap: source.spec.snap().map(str::to_owned),
            source_size: size,
            dest_size: found.size,
            create_destination: found.size.is_none(),
            continues_interrupted: found.verdict.continued,
            resume_from,
            bytes_resumed: 0,
            overwrites_destination: found.verdict.overwrites,
            extents: 0,
            diff_bytes: 0,
            data_bytes: 0,
            zero_bytes: 0,
        };
        (planner, known_zero, plan)
    }

    /// A scan stopped by the halt token reports ECANCELED: say why it stopped.
    fn stopped_or(&self, reporter: &mut Reporter, e: Error) -> Error {
        if reporter.stop().is_some() {
            reporter.stopped_error(&self.dest_label())
        } else {
            e
        }
    }

    fn execute(
        &self,
        prepared: Prepared,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let Prepared {
            plan,
            source,
            dest_pool,
            dest_cluster,
            dest,
            planner,
            known_zero,
            mut record,
            broke_lock_of,
        } = prepared;
        let label = plan.dest.clone();
        if reporter.stop().is_some() {
            return Err(reporter.stopped_error(&label));
        }
        // The plan is made cell by cell on a thread of its own, a bounded queue ahead of the
        // copy. It only reads the source, so it starts now: its first cell is scanned while
        // the destination is prepared for the first write. A return before the copy closes
        // the queue, which stops it.
        let queue = Arc::new(Queue::default());
        let planning = start_planning(
            planner,
            source.image.clone(),
            self.from_snap.clone(),
            queue.clone(),
            reporter.stop_check(),
        );
        let _closes = ClosesOnDrop(&queue);
        let dest = match dest {
            Some(dest) => dest,
            None => {
                let (pool, name, layout, size) = (
                    dest_pool.clone(),
                    self.dest.image().to_owned(),
                    source.layout,
                    source.info.size,
                );
                let me = dest_cluster.address()?;
                let claimant = me.clone();
                let image = waited(reporter, format!("{label} to be created"), move || {
                    Image::create(&pool, &name, size, Some(&layout))?;
                    let (image, _) = destination::open_claimed(&pool, &name, &claimant)?;
                    Ok(Arc::new(image))
                })?;
                record.client = me.clone();
                destination::lock(reporter, &image, &me, None, None)?;
                image
            }
        };
        // The first write: from here on a rerun recognises what this transfer wrote. What the
        // interrupted transfer did stays recorded as done until this one gets further.
        record.done = plan.resume_from;
        let (image, written) = (dest.clone(), record.clone());
        waited(
            reporter,
            format!("the in-progress record on {label}"),
            move || destination::write_record(&image, &written),
        )?;
        let dest_size = plan.dest_size.unwrap_or(source.info.size);
        if source.info.size > dest_size {
            let (image, size) = (dest.clone(), source.info.size);
            waited(reporter, format!("{label} to grow"), move || {
                image.resize(size)
            })?;
        }

        let window = io_window(self.chunk_size, self.window);
        // Checkpoints are of use only to a rerun of the same diff, which a source read at
        // HEAD never has.
        let checkpoints = source
            .spec
            .snap()
            .map(|_| Checkpointer::start(dest.clone(), record.clone(), checkpoint::INTERVAL));
        let marks = |mark: u64| {
            if let Some(checkpoints) = &checkpoints {
                checkpoints.mark(mark);
            }
        };
        let own_rate = self.rate_limit.map(RateLimit::new);
        let batch = self.batch.as_deref();
        let rates: Vec<&RateLimit> = own_rate
            .iter()
            .chain(batch.and_then(|b| b.rate.as_ref()))
            .collect();
        // The copy starts with the first pieces planned (for most images, all of them).
        while !queue.wait_ready(reporter.poll_interval()) && reporter.stop().is_none() {
            reporter.waiting_for(Some(format!("the diff scan of {}", source.spec)));
            reporter.tick();
        }
        reporter.set_total(queue.planned());
        reporter.phase(Phase::Copying);
        let mut feed = &*queue;
        let job = engine::Job {
            pieces: &mut feed,
            known_zero: &known_zero,
            window,
            marks: Some(&marks),
            shared: engine::Limits {
                budget: batch.map(|b| &b.budget),
                rates: &rates,
            },
        };
        // A scan stopped by a cancel fails the planning with ECANCELED: say why it stopped.
        let copied = engine::run(&*source.image, &*dest, job, reporter, &label).map_err(|e| {
            if e.kind() == ErrorKind::Cancelled {
                self.stopped_or(reporter, e)
            } else {
                e
            }
        });
        // Nothing more is taken from the queue: a planning still running stops.
        queue.close();
        if let Some(checkpoints) = checkpoints {
            checkpoints.finish(copied.is_err());
        }
        // A copy that ended took every piece: the planning has ended. One that failed may
        // have failed for a panic of the planning; a planning still running is left to stop.
        if copied.is_ok() || planning.is_finished() {
            if let Err(panic) = planning.join() {
                resume_unwind(panic);
            }
        }
        let counters = copied?;
        let totals = queue
            .totals()
            .expect("a planning whose every piece was copied has succeeded");
        if reporter.stop().is_some() {
            return Err(reporter.stopped_error(&label));
        }
        let bytes_verified = if self.verify {
            let chunk = self.chunk_size;
            // In a batch, the verification draws its window from the batch's budget: its
            // share, at most its own window.
            let (window, _reserved) = match batch {
                Some(batch) => {
                    let w = batch.verify_window(window, chunk);
                    let reserved =
                        batch
                            .budget
                            .reserve(w.budget, w.max_requests, reporter, &label)?;
                    (w, Some(reserved))
                }
                None => (window, None),
            };
            let reads = verify::Reads {
                chunk,
                window,
                rates: &rates,
            };
            verify::written(
                &source.image,
                &dest,
                &totals.ranges,
                reads,
                reporter,
                &label,
            )?
        } else {
            0
        };

        // Too late to stop from here: the end snapshot is as good as made.
        reporter.phase(Phase::Committing);
        let image = dest.clone();
        let (shrink_to, end) = (
            (source.info.size < dest_size).then_some(source.info.size),
            source.spec.snap().map(str::to_owned),
        );
        let what = match &end {
            Some(end) => format!("the end snapshot {label}@{end} to be created"),
            None => format!("{label} to flush its writes"),
        };
        let snapshot_elapsed = waited(reporter, what, move || {
            if let Some(size) = shrink_to {
                image.resize(size)?;
            }
            image.flush()?;
            let snapshot_started = Instant::now();
            if let Some(end) = &end {
                // Nobody else writes it under the lock: nothing to quiesce.
                image.create_snapshot(end, false)?;
            }
            let elapsed = snapshot_started.elapsed();
            // The end snapshot makes the transfer complete: a record left behind by a failure
            // here is harmless (the next transfer starts from that unchanged snapshot, and
            // replaces the record), so it does not fail the transfer.
            let _ = destination::clear_record(&image);
            Ok(elapsed)
        })?;
        reporter.finish();
        Ok(TransferStats {
            source: plan.source.clone(),
            dest: plan.dest.clone(),
            from_snap: plan.from_snap.clone(),
            bytes_read: counters.read,
            bytes_written: counters.written,
            bytes_zeroed: counters.zeroed,
            bytes_skipped: counters.skipped,
            bytes_verified,
            extents: totals.extents,
            diff_bytes: totals.diff_bytes,
            image_size: source.info.size,
            created_destination: plan.create_destination,
            continued_interrupted: plan.continues_interrupted,
            bytes_resumed: totals.bytes_resumed,
            broke_lock_of,
            end_snap: plan.end_snap.clone(),
            elapsed: started.elapsed(),
            snapshot_elapsed,
        })
    }
}

/// Closes the queue when dropped, so that a planning still running stops.
struct ClosesOnDrop<'a>(&'a Queue);

impl Drop for ClosesOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Starts planning the transfer's pieces into `queue` on a thread of its own, the exact diff
/// of `image` since `from` scanned as it goes; the queue ends with what it found, or its
/// error.
fn start_planning(
    planner: Planner,
    image: Arc<Image>,
    from: Option<String>,
    queue: Arc<Queue>,
    stop: StopCheck,
) -> std::thread::JoinHandle<()> {
    let spawned = std::thread::Builder::new()
        .name("rbd-diffsync-plan".to_owned())
        .spawn(move || {
            let scan = |offset, len| scan::exact(&image, from.as_deref(), offset, len, &stop);
            let planned = catch_unwind(AssertUnwindSafe(|| {
                planner.run(&scan, &mut |pieces| queue.push(pieces))
            }));
            match planned {
                Ok(result) => queue.finish(result),
                Err(panic) => {
                    // The engine stops; the caller raises the panic once it has.
                    queue.finish(Err(Error::new(
                        ErrorKind::Other,
                        libc::EIO,
                        "the planning of the transfer panicked",
                    )));
                    resume_unwind(panic)
                }
            }
        });
    spawned.unwrap_or_else(|e| panic!("cannot start a thread: {e}"))
}

/// A write that timed out or was refused for space: if the destination's pool is marked full,
/// an error that says so (the OSDs hold writes to a full pool until they time out).
fn explain_full_pool(reporter: &mut Reporter, e: Error, cluster: Cluster, pool: Pool) -> Error {
    if ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno()) {
        return e;
    }
    let name = pool.name().to_owned();
    let what = format!("the monitors to tell whether pool {name} is full");
    let full = match reporter.wait(what, true, move || cluster.pool_full(&name)) {
        Waited::Done(Some(full)) => full,
        _ => return e,
    };
    let errno = if full.contains("quota") {
        libc::EDQUOT
    } else {
        libc::ENOSPC
    };
    let image = e.image().map(str::to_owned);
    let error = Error::new(
        ErrorKind::NoSpace,
        errno,
        format!(
            "{full}; then run the transfer again: it resumes where this one stopped, and no end \
             snapshot was created ({})",
            e.message()
        ),
    );
    match image {
        Some(image) => error.with_image(image),
        None => error,
    }
}

/// `ranges` cut to `[0, size)`.
fn clip(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .filter(|&&(offset, _)| offset < size)
        .map(|&(offset, len)| (offset, len.min(size - offset)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> ImageSpec {
        s.parse().unwrap()
    }

    #[test]
    fn a_transfer_can_move_to_another_thread() {
        fn send<T: Send>(_: &T) {}
        send(&DiffTransfer::new(spec("a/b@s"), spec("c/d")));
    }

    #[test]
    fn settings_are_checked_before_connecting() {
        let bad = [
            DiffTransfer::new(spec("a/b@s"), spec("c/d@x")),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).from_snap("s"),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).from_snap("x@y"),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).chunk_size(1000),
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).window(0),
            DiffTransfer::new(spec("a/b@s"), spec("a/b")),
        ];
        for t in bad {
            let what = format!("{t:?}");
            let err = t.check_settings().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
            assert_eq!(err.errno(), libc::EINVAL, "{what}: {err}");
        }
        let other_cluster = DiffTransfer::new(spec("a/b@s"), spec("a/b"))
            .dest_cluster(ClusterSpec::new().conf("/other/ceph.conf"));
        assert!(other_cluster.check_settings().is_ok());
    }

    #[test]
    fn clip_cuts_ranges_at_the_size() {
        assert_eq!(
            clip(&[(0, 10), (8, 10), (20, 5)], 12),
            vec![(0, 10), (8, 4)]
        );
    }
}
