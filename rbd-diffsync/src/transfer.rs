//! `DiffTransfer`: what `rbd export-diff | rbd import-diff` does, checked first, done with a
//! window of parallel I/O, and safe to interrupt and run again. The steps that decide who may
//! write and what a rerun trusts are in [`crate::protocol`]; this module runs them in order,
//! with the scan, the copy, the verification and the commit.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::copy::checkpoint::{self, Checkpointer};
use crate::copy::engine::{self, DiffSource, Window};
use crate::copy::rate::RateLimit;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::pipeline::{self, Planner, Queue};
use crate::plan::{self, KnownZero, Piece};
use crate::progress::{
    self, AbandonOnDrop, CancelToken, Phase, Progress, ProgressFlow, ProgressFn, Reporter,
    StopCheck, TransferStats, Waited,
};
use crate::protocol::batch::BatchLink;
use crate::protocol::checks::{Checks, Verdict};
use crate::protocol::claim::{self, Claimed, Fencing, Target};
use crate::protocol::rbd::RbdWorld;
use crate::protocol::record::{Record, SnapRef};
use crate::protocol::world::{Conn, DestImage, Header, Scan, SourceImage, Threads, World};
use crate::rbd::image::{Layout, Snapshot};
use crate::settings::{self, DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW};
use crate::spec::{ClusterSpec, ImageSpec};
use crate::verify;

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
    /// Where it runs, when not on librbd (a simulated cluster).
    world: Option<Arc<dyn World>>,
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
            world: None,
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

    /// After the writes, before the end snapshot, reads back from both images (the source at
    /// its end snapshot, the destination at HEAD) and compares every range the end snapshot
    /// will be claimed to equal (`--verify`): what the transfer wrote or zeroed, what an
    /// interrupted transfer it resumes or continues had written, and whatever the destination
    /// changed since `from_snap` (for a full transfer, all it holds). A difference fails the
    /// transfer with an error of kind [`Mismatch`](ErrorKind::Mismatch) naming the first
    /// differing offset, takes the checkpoint back below it, and no end snapshot is created:
    /// running the transfer again rewrites from there. Off by default.
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
        settings::check_io(self.chunk_size, self.window)?;
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
}

impl DiffTransfer {
    /// Runs every check and computes the diff, writing nothing (the destination is opened
    /// read-only, not claimed and not locked): what [`run`](Self::run) would do now.
    pub fn plan(mut self) -> Result<Plan> {
        let started = Instant::now();
        self.check_settings()?;
        let world = self.world();
        let mut reporter = self.reporter(started, &*world);
        reporter.dry_run();
        let result = self
            .prepare(&world, &mut reporter, false)
            .and_then(|prepared| self.count(prepared, &mut reporter));
        reporter.settle();
        if let Some(panic) = reporter.take_panic() {
            resume_unwind(panic);
        }
        result
    }

    /// Checks everything, then transfers. Nothing is written unless every check passed; the
    /// destination's end snapshot is created only after every write has succeeded. An
    /// interrupted run leaves no end snapshot, and running it again completes it. No thread
    /// of the transfer is left inside librbd or librados once this returns.
    ///
    /// The result says whether the end snapshot exists: a stop or a panic of the progress
    /// callback that comes once the end snapshot is being made is too late to stop it, and
    /// the stats are returned (the panic is not resumed).
    pub fn run(mut self) -> Result<TransferStats> {
        let started = Instant::now();
        self.check_settings()?;
        let world = self.world();
        let mut reporter = self.reporter(started, &*world);
        let result = self.transfer(&world, &mut reporter, started);
        reporter.settle();
        if let Some(panic) = reporter.take_panic() {
            if result.is_err() {
                resume_unwind(panic);
            }
        }
        result
    }

    /// Runs on `world` instead of librbd: the simulated cluster of the fault-schedule
    /// explorer.
    #[cfg(feature = "sim")]
    pub(crate) fn on_world(mut self, world: Arc<dyn World>) -> Self {
        self.world = Some(world);
        self
    }

    fn world(&self) -> Arc<dyn World> {
        self.world.clone().unwrap_or_else(|| {
            Arc::new(RbdWorld {
                batch: self.batch.clone(),
            })
        })
    }

    fn reporter(&mut self, started: Instant, world: &dyn World) -> Reporter {
        let mut reporter = Reporter::new(
            self.progress.take(),
            self.progress_interval,
            self.cancel.clone(),
            started,
        );
        reporter.set_threads(world.threads());
        reporter
    }

    fn transfer(
        &self,
        world: &Arc<dyn World>,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let prepared = self
            .prepare(world, reporter, true)
            .map_err(|e| self.why_fenced(e))?;
        let target = prepared.target.clone();
        let claimed = prepared.claimed.as_ref().map(|c| c.header.clone());
        let result = self.execute(prepared, reporter, started);
        if let (Err(e), Some(header)) = (&result, claimed) {
            // The record stays for the rerun; the claim goes, this client is leaving (a
            // killed one's stays and names it). Not after a timeout or with a full pool: the
            // write would wait out the operation timeout again.
            if ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno()) {
                let _ = header.swap_claim(Some(&target.text), None);
            }
        }
        result
    }

    /// A client blocklisted while it runs fails every call with ESHUTDOWN: an error that says
    /// why.
    fn why_fenced(&self, e: Error) -> Error {
        if e.errno() == libc::ESHUTDOWN && e.kind() != ErrorKind::Fenced {
            claim::fenced(&self.dest_label(), e.message())
        } else {
            e
        }
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
        let totals = reporter
            .detached(&plan.dest, what, move || {
                let scan = |offset, len| image.exact(from.as_deref(), offset, len, &stop);
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

    /// A scan stopped by the halt token reports ECANCELED: say why it stopped.
    fn stopped_or(&self, reporter: &mut Reporter, e: Error) -> Error {
        if reporter.stop().is_some() {
            reporter.stopped_error(&self.dest_label())
        } else {
            e
        }
    }

    fn dest_label(&self) -> String {
        self.dest.image_path()
    }
}

/// The source image, open at its end snapshot.
struct Source {
    /// Resolved.
    spec: ImageSpec,
    image: Arc<dyn SourceImage>,
    size: u64,
    layout: Layout,
    from: Option<Snapshot>,
    end: Option<Snapshot>,
    /// The transfer as its claim and record name it, without its client.
    identity: Record,
}

/// The source open, and the destination found (its header, if it exists).
struct Opened {
    source: Source,
    target: Target,
    header: Option<Arc<dyn Header>>,
}

/// Where the copy starts, and whether what lies below was proven written.
#[derive(Clone, Copy, Debug, Default)]
struct Resume {
    /// The predecessor's checkpoint (0: from the start).
    from: u64,
    /// Whether this run took the destination's lock over from the predecessor that wrote
    /// below `from`: then nobody else can have written there since, and it is not done
    /// again. Otherwise it is compared with the source first, and what differs rewritten.
    trusted: bool,
}

/// Everything the copy needs once the checks have passed.
struct Prepared {
    plan: Plan,
    source: Source,
    target: Target,
    /// The claim, when the transfer writes.
    claimed: Option<Claimed>,
    /// Open for writing (for reading when planning); `None` for a destination a plan would
    /// create.
    dest: Option<Arc<dyn DestImage>>,
    planner: Planner,
    known_zero: KnownZero,
    resume: Resume,
    /// The killed predecessor whose lock was broken.
    broke_lock_of: Option<String>,
}

/// A scan of the source running on a thread of its own, or done already.
struct ScanJob(Option<ScanState>);

enum ScanState {
    Running {
        rx: mpsc::Receiver<std::thread::Result<Result<Scan>>>,
        thread: std::thread::JoinHandle<()>,
        /// What it is, for progress while it is waited for.
        what: String,
        /// Stops the scan when the job is dropped unwaited.
        abandon: AbandonOnDrop,
    },
    Done(Result<Scan>),
}

impl Drop for ScanJob {
    fn drop(&mut self) {
        if let Some(ScanState::Running {
            thread, abandon, ..
        }) = self.0.take()
        {
            // Stopped, then waited for: no thread is left inside librbd.
            drop(abandon);
            let _ = thread.join();
        }
    }
}

/// What the checks found about the destination; the default is one to be created.
#[derive(Default)]
struct Found {
    /// Its size, if it exists.
    size: Option<u64>,
    verdict: Verdict,
    /// For a full transfer into it, its allocated ranges.
    allocated: Option<Vec<(u64, u64)>>,
    /// The in-progress record found under the lock.
    previous: Option<Record>,
}

/// Connects to the cluster of `spec` on `world`, on a helper thread.
fn connect(
    world: &Arc<dyn World>,
    reporter: &mut Reporter,
    dest: &str,
    spec: &ClusterSpec,
) -> Result<Arc<dyn Conn>> {
    let (world, owned) = (world.clone(), spec.clone());
    reporter.connecting(dest, format!("the monitors of {spec}"), move || {
        world.connect(&owned)
    })
}

/// Opens the source at its end snapshot and checks its snapshots: `from_name` must be one of
/// them, not newer than the end.
fn open_source(conn: &dyn Conn, spec: &ImageSpec, from_name: Option<&str>) -> Result<Source> {
    let spec = conn.resolve(spec)?;
    let image = conn.open_source(&spec)?;
    let facts = image.facts()?;
    let path = spec.image_path();
    let find = |name: &str| facts.snapshots.iter().find(|s| s.name == name).cloned();
    // Opened at it, so it was there; gone now means removed meanwhile.
    let end = match spec.snap() {
        Some(name) => Some(find(name).ok_or_else(|| Error::snap_not_found(&path, name))?),
        None => None,
    };
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
    let identity = Record {
        fsid: conn.fsid()?,
        pool_id: facts.pool_id,
        namespace: facts.namespace,
        image_id: facts.image_id,
        source: path,
        from: from.as_ref().map(snap_ref),
        end: end.as_ref().map(snap_ref),
        client: Default::default(),
        started: unix_now(),
        done: 0,
    };
    Ok(Source {
        spec,
        image,
        size: facts.info.size,
        layout: facts.layout,
        from,
        end,
        identity,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl DiffTransfer {
    /// Connects to both clusters (one connection when they are the same), opens the source
    /// at its end snapshot (checking its snapshots) and, at once, finds the destination's
    /// header; returns the destination as the protocol works on it.
    fn open(&self, world: &Arc<dyn World>, reporter: &mut Reporter) -> Result<Opened> {
        let label = self.dest_label();
        let src_conn = connect(world, reporter, &label, &self.source_cluster)?;
        let dest_conn = match &self.dest_cluster {
            Some(spec) if *spec != self.source_cluster => connect(world, reporter, &label, spec)?,
            _ => src_conn.clone(),
        };
        let (src, from) = (self.source.clone(), self.from_snap.clone());
        let (conn, dest) = (dest_conn.clone(), self.dest.clone());
        let threads = reporter.threads();
        let what = format!("{} and {} to open", self.source, self.dest);
        let (source, found) = reporter.detached(&label, what, move || {
            let (source, found) = progress::both(
                threads,
                || open_source(&*src_conn, &src, from.as_deref()),
                || -> Result<_> {
                    let spec = conn.resolve(&dest)?;
                    let header = conn.header(&spec)?;
                    Ok((spec, header, conn.client()?))
                },
            );
            // The source's error first: without a source there is nothing to check.
            Ok((source?, found?))
        })?;
        let (spec, header, client) = found;
        let mine = Record {
            client,
            ..source.identity.clone()
        };
        let target = Target {
            conn: dest_conn,
            label: spec.image_path(),
            spec,
            text: mine.encode(),
            mine,
        };
        Ok(Opened {
            source,
            target,
            header,
        })
    }

    /// Every check and the diff; nothing is written. With `write`, the destination is
    /// created if missing, claimed, opened for writing, its dead predecessor fenced off, and
    /// its exclusive lock taken, held until the transfer ends; without, it is opened
    /// read-only.
    fn prepare(
        &self,
        world: &Arc<dyn World>,
        reporter: &mut Reporter,
        write: bool,
    ) -> Result<Prepared> {
        reporter.phase(Phase::Connecting);
        let Opened {
            source,
            target,
            header,
        } = self.open(world, reporter)?;
        // The scan of the source overlaps the claim, the lock and the checks of the
        // destination: both are round trips to the OSDs, and neither needs the other. The
        // phase turns to scanning once the destination is open.
        let scanning = self.start_scan(reporter, &source);
        let (dest, claimed, fencing, created) = if write {
            let (dest, claimed, fencing, created) =
                self.take_destination(reporter, &target, &source, header)?;
            (Some(dest), Some(claimed), fencing, created)
        } else {
            let dest = match header {
                Some(_) => Some(self.look_at(reporter, &target)?),
                None if self.from_snap.is_some() => {
                    return Err(Error::image_not_found(&target.label))
                }
                None => None,
            };
            reporter.phase(Phase::Scanning);
            (dest, None, Fencing::default(), false)
        };
        // Checked also when this transfer created it: another writer may have written it
        // before the lock was taken.
        let checked = self
            .check_destination(reporter, &target, &source, dest.as_ref())
            .and_then(|found| Ok((found, self.finish_scan(reporter, scanning, &target.label)?)));
        let (found, scan) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                if let Some(claimed) = &claimed {
                    // Refused: nothing of this transfer stays on the destination.
                    target.unclaim(claimed, true);
                }
                return Err(e);
            }
        };
        let trusted = found.previous.as_ref().is_some_and(|p| {
            fencing.took_lock && fencing.lock_of.as_ref() == Some(&p.client.address)
        });
        let (planner, known_zero, mut plan, resume) =
            self.work(&source, scan, found, target.label.clone(), trusted);
        plan.create_destination |= created;
        Ok(Prepared {
            plan,
            source,
            target,
            claimed,
            dest,
            planner,
            known_zero,
            resume,
            broke_lock_of: fencing.fenced.into_iter().next(),
        })
    }

    /// Opens the destination read-only, for a plan.
    fn look_at(&self, reporter: &mut Reporter, target: &Target) -> Result<Arc<dyn DestImage>> {
        let (conn, spec) = (target.conn.clone(), target.spec.clone());
        reporter.detached(
            &target.label,
            format!("{} to open", target.label),
            move || conn.open_dest(&spec, false),
        )
    }

    /// Creates the destination if it is missing (full transfers), claims it, opens it for
    /// writing, fences off its dead predecessor and takes its exclusive lock. Returns it, the
    /// claim, who was fenced off, and whether it was created. A refusal gives the claim
    /// back.
    fn take_destination(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        header: Option<Arc<dyn Header>>,
    ) -> Result<(Arc<dyn DestImage>, Claimed, Fencing, bool)> {
        let (header, created) = match header {
            Some(header) => (header, false),
            None if self.from_snap.is_some() => return Err(Error::image_not_found(&target.label)),
            None => {
                let (conn, spec) = (target.conn.clone(), target.spec.clone());
                let (size, layout) = (source.size, source.layout);
                let what = format!("{} to be created", target.label);
                let (header, created) = reporter.waited(what, move || {
                    let created = match conn.create(&spec, size, &layout) {
                        // Created by another meanwhile: claimed as any existing image.
                        Err(e) if e.kind() == ErrorKind::Exists => false,
                        other => other.map(|()| true)?,
                    };
                    let header = conn
                        .header(&spec)?
                        .ok_or_else(|| Error::image_not_found(&spec.image_path()))?;
                    Ok((header, created))
                })?;
                (header, created)
            }
        };
        let claimed = target.claim(reporter, header)?;
        match self.open_and_lock(reporter, target, source, &claimed) {
            Ok((dest, fencing)) => Ok((dest, claimed, fencing, created)),
            Err(e) => {
                target.unclaim(&claimed, true);
                Err(e)
            }
        }
    }

    /// The destination opened for writing under the claim, its predecessor fenced off, its
    /// lock taken.
    fn open_and_lock(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        claimed: &Claimed,
    ) -> Result<(Arc<dyn DestImage>, Fencing)> {
        let (conn, spec) = (target.conn.clone(), target.spec.clone());
        let what = format!("{} to open", target.label);
        let dest = reporter.waited(what, move || conn.open_dest(&spec, true))?;
        reporter.phase(Phase::Scanning);
        let id = dest.id()?;
        let same_image = source.identity.pool_id == id.pool_id
            && source.identity.namespace == id.namespace
            && source.identity.image_id == id.image_id
            && source.identity.fsid == target.conn.fsid()?;
        if same_image {
            return Err(Error::invalid(format!(
                "source {} and destination {} are the same image",
                source.spec, target.label
            ))
            .with_image(&target.label));
        }
        let mut fencing = target.fence_predecessors(reporter, &dest, claimed)?;
        target.lock(reporter, &dest, &mut fencing)?;
        Ok((dest, fencing))
    }

    /// The checks of an existing destination (see [`Checks`]), under its lock and claim: its
    /// snapshots, its changes since `from`, or for a full transfer its allocated ranges.
    /// Reads only. The default for one to be created.
    fn check_destination(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        source: &Source,
        dest: Option<&Arc<dyn DestImage>>,
    ) -> Result<Found> {
        let Some(dest) = dest else {
            return Ok(Found::default());
        };
        let (image, conn, spec) = (dest.clone(), target.conn.clone(), target.spec.clone());
        let (end, from) = (source.spec.snap().map(str::to_owned), source.from.clone());
        let (mine, force) = (target.mine.clone(), self.overwrite_existing);
        let stop = reporter.stop_check();
        let what = format!("the checks of {}", target.label);
        reporter
            .detached(&target.label, what, move || {
                let header = conn
                    .header(&spec)?
                    .ok_or_else(|| Error::image_not_found(&spec.image_path()))?;
                check_existing(&*image, &*header, end, from, &mine, force, &stop)
            })
            .map_err(|e| self.stopped_or(reporter, e))
    }

    /// Starts the source's scan (see [`SourceImage::scan`]) on a thread of its own, to run
    /// while the destination is claimed, locked and checked; inline, it is done at once. The
    /// scan stops, and is waited for, when the returned job is dropped unwaited.
    fn start_scan(&self, reporter: &Reporter, source: &Source) -> ScanJob {
        let (image, from, whole_object) =
            (source.image.clone(), source.from.clone(), self.whole_object);
        let size = source.size;
        let what = match &self.from_snap {
            Some(from) => format!("the diff of {} since {from}", source.spec),
            None => format!("the allocated ranges of {}", source.spec),
        };
        let (stop, abandon) = reporter.stop_check().abandonable();
        let scan = move || image.scan(from.as_ref(), size, whole_object, &stop);
        if reporter.threads() == Threads::Inline {
            return ScanJob(Some(ScanState::Done(scan())));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let scan = Arc::new(std::sync::Mutex::new(Some(scan)));
        let shared = scan.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-diffsync-scan".to_owned())
            .spawn(move || {
                let scan = shared.lock().ok().and_then(|mut s| s.take());
                if let Some(scan) = scan {
                    // Nobody waits any more when the job was dropped.
                    let _ = tx.send(catch_unwind(AssertUnwindSafe(scan)));
                }
            });
        match spawned {
            Ok(thread) => ScanJob(Some(ScanState::Running {
                rx,
                thread,
                what,
                abandon,
            })),
            // No thread to spare: scanned now, on this one.
            Err(_) => {
                let scan = scan.lock().ok().and_then(|mut s| s.take());
                ScanJob(Some(ScanState::Done(scan
                    .expect("a scan that no thread took")(
                ))))
            }
        }
    }

    /// Waits for the scan started by [`start_scan`](Self::start_scan), the reporter ticking.
    fn finish_scan(&self, reporter: &mut Reporter, mut job: ScanJob, label: &str) -> Result<Scan> {
        let scanned = match job.0.take().expect("a scan job is waited for once") {
            ScanState::Done(result) => result,
            ScanState::Running {
                rx,
                thread,
                what,
                abandon,
            } => {
                let waited = reporter.wait(what, true, move || match rx.recv() {
                    Ok(Ok(scanned)) => scanned,
                    Ok(Err(panic)) => resume_unwind(panic),
                    Err(_) => unreachable!("the scan thread sends its result before it ends"),
                });
                // Stopped or done: the scan thread ends now; no thread is left in librbd.
                drop(abandon);
                let _ = thread.join();
                match waited {
                    Waited::Done(result) => result,
                    Waited::Stopped => Err(reporter.stopped_error(label)),
                }
            }
        };
        scanned.map_err(|e| self.stopped_or(reporter, e))
    }

    /// What to do: the source's diff, plus the ranges the destination changed since
    /// `from_snap` that the diff does not cover (read from the source), plus, for a full
    /// transfer into an existing image, what it holds outside the diff (zeroed); and where
    /// the destination reads zeros already. The diff's exact extents are found cell by cell
    /// while the copy runs (see [`crate::plan::pipeline`]): the plan's counts of them are not known
    /// yet.
    fn work(
        &self,
        source: &Source,
        scan: Scan,
        found: Found,
        label: String,
        trusted: bool,
    ) -> (Planner, KnownZero, Plan, Resume) {
        let size = source.size;
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
        let resume = Resume {
            from: found.verdict.resume_from,
            trusted,
        };
        let planner = Planner {
            outline: scan.outline,
            cell: pipeline::cell_size(source.layout.order),
            size,
            rewrite: clip(&found.verdict.changed, size),
            stale,
            resume_from: resume.from,
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
            resume_from: resume.from,
            bytes_resumed: 0,
            overwrites_destination: found.verdict.overwrites,
            extents: 0,
            diff_bytes: 0,
            data_bytes: 0,
            zero_bytes: 0,
        };
        (planner, known_zero, plan, resume)
    }
}

/// The checks of an existing destination under its lock (see [`Checks`]): its snapshots, its
/// changes since `from`, or for a full transfer its allocated ranges. Reads only.
fn check_existing(
    dest: &dyn DestImage,
    header: &dyn Header,
    end: Option<String>,
    from: Option<Snapshot>,
    mine: &Record,
    force: bool,
    stop: &StopCheck,
) -> Result<Found> {
    let label = dest.path().to_owned();
    let snaps = dest.snapshots()?;
    if let Some(end) = end.filter(|end| snaps.iter().any(|s| s.name == *end)) {
        return Err(Error::snap_exists(&label, &end));
    }
    // Read now, under the lock: what a predecessor wrote before it was fenced off is in.
    let previous = header.read()?.record.as_deref().and_then(Record::decode);
    let size = dest.size()?;
    let checks = Checks {
        dest,
        dest_size: size,
        snaps: &snaps,
        me: &mine.client.address,
        record: mine,
        previous: previous.as_ref(),
        force,
        stop,
    };
    Ok(match &from {
        Some(from) => Found {
            size: Some(size),
            verdict: checks.incremental(from)?,
            allocated: None,
            previous,
        },
        None => {
            let allocated = dest.allocated(size, stop)?;
            Found {
                size: Some(size),
                verdict: checks.full(&allocated)?,
                allocated: Some(allocated),
                previous,
            }
        }
    })
}

impl DiffTransfer {
    /// The copy, the verification and the commit, then the destination closed.
    fn execute(
        &self,
        prepared: Prepared,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let dest = prepared.dest.clone();
        let target = prepared.target.clone();
        let result = self
            .write(prepared, reporter, started)
            .map_err(|e| explain_full_pool(reporter, self.why_fenced(e), &target));
        if let Some(dest) = dest {
            // Closing releases the lock: in a full pool librbd waits out the operation timeout
            // for it, which the progress reports say.
            let what = format!("{} to close, its exclusive lock released", target.label);
            let _ = reporter.wait(what, false, move || drop(dest));
        }
        result
    }

    fn write(
        &self,
        prepared: Prepared,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let Prepared {
            plan,
            source,
            target,
            claimed,
            dest,
            planner,
            known_zero,
            resume,
            broke_lock_of,
        } = prepared;
        let label = plan.dest.clone();
        let (Some(dest), Some(claimed)) = (dest, claimed) else {
            unreachable!("a transfer that writes has its destination open and claimed")
        };
        if reporter.stop().is_some() {
            target.unclaim(&claimed, true);
            return Err(reporter.stopped_error(&label));
        }
        // The plan is made cell by cell on a thread of its own, a bounded queue ahead of the
        // copy. It only reads the source, so it starts now: its first cell is scanned while
        // the destination is prepared for the first write. A return before the copy closes
        // the queue, which stops it; it is waited for before the transfer returns.
        let queue = Arc::new(match reporter.threads() {
            Threads::Spawn => Queue::default(),
            Threads::Inline => Queue::unbounded(),
        });
        let planning = start_planning(
            planner.clone(),
            source.image.clone(),
            self.from_snap.clone(),
            queue.clone(),
            reporter.stop_check(),
            reporter.threads(),
        );
        let _closes = ClosesOnDrop(&queue, planning);
        // The first write: from here on a rerun recognises what this transfer wrote. What the
        // interrupted transfer did stays recorded as done until this one gets further, if it
        // is known to read as the source.
        let recorded = if resume.trusted { resume.from } else { 0 };
        self.record(reporter, &target, &claimed, recorded)?;
        let dest_size = plan.dest_size.unwrap_or(source.size);
        if source.size > dest_size {
            let (image, size) = (dest.clone(), source.size);
            reporter.waited(format!("{label} to grow"), move || image.resize(size))?;
        }
        let own_rate = self.rate_limit.map(RateLimit::new);
        let batch = self.batch.as_deref();
        let rates: Vec<&RateLimit> = own_rate
            .iter()
            .chain(batch.and_then(|b| b.rate.as_ref()))
            .collect();
        let shared = engine::Limits {
            budget: batch.map(|b| &b.budget),
            rates: &rates,
        };
        let mut rechecked = 0;
        if !resume.trusted && resume.from > 0 {
            let images = (&*source.image, &dest);
            rechecked = self.recheck(images, &planner, resume.from, shared, reporter, &label)?;
            self.record(reporter, &target, &claimed, resume.from)?;
        }
        let (copied, totals) = self.copy(
            (&source, &dest),
            (&target, &claimed),
            (&queue, &known_zero, resume.from),
            shared,
            reporter,
        )?;
        if reporter.stop().is_some() {
            return Err(reporter.stopped_error(&label));
        }
        let bytes_verified = if self.verify {
            self.verify_written(
                (&source, &dest),
                (&target, &claimed),
                &totals.ranges,
                &rates,
                reporter,
            )?
        } else {
            0
        };
        let snapshot_elapsed =
            self.commit(reporter, &source, &target, &claimed, &dest, dest_size)?;
        reporter.finish();
        Ok(TransferStats {
            source: plan.source.clone(),
            dest: plan.dest.clone(),
            from_snap: plan.from_snap.clone(),
            bytes_read: copied.read,
            bytes_written: copied.written,
            bytes_zeroed: copied.zeroed,
            bytes_skipped: copied.skipped,
            bytes_verified,
            bytes_rechecked: rechecked,
            extents: totals.extents,
            diff_bytes: totals.diff_bytes,
            image_size: source.size,
            created_destination: plan.create_destination,
            continued_interrupted: plan.continues_interrupted,
            bytes_resumed: totals.bytes_resumed,
            broke_lock_of,
            end_snap: plan.end_snap.clone(),
            elapsed: started.elapsed(),
            snapshot_elapsed,
        })
    }

    /// Writes the transfer's record with checkpoint `done`, under its claim.
    fn record(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        claimed: &Claimed,
        done: u64,
    ) -> Result<()> {
        let (t, header) = (target.clone(), claimed.header.clone());
        let what = format!("the in-progress record on {}", target.label);
        reporter.waited(what, move || t.write_record(&*header, Some(done)))
    }

    /// The copy of the queue's pieces, with checkpoints; what it did and what the planning
    /// found.
    fn copy(
        &self,
        (source, dest): (&Source, &Arc<dyn DestImage>),
        (target, claimed): (&Target, &Claimed),
        (queue, known_zero, from): (&Arc<Queue>, &KnownZero, u64),
        shared: engine::Limits<'_>,
        reporter: &mut Reporter,
    ) -> Result<(engine::Counters, pipeline::Totals)> {
        let label = target.label.clone();
        // Checkpoints are of use only to a rerun of the same diff, which a source read at
        // HEAD never has.
        let checkpoints = source.spec.snap().map(|_| {
            let (t, header, image) = (target.clone(), claimed.header.clone(), dest.clone());
            let write: Arc<checkpoint::Write> = Arc::new(move |mark| {
                if image.flush().is_err() {
                    return Ok(false);
                }
                match t.write_record(&*header, Some(mark)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::Fenced => Err(e),
                    Err(_) => Ok(false),
                }
            });
            Checkpointer::start(write, from, checkpoint::INTERVAL, reporter.threads())
        });
        let marks = |mark: u64| {
            if let Some(checkpoints) = &checkpoints {
                checkpoints.mark(mark);
            }
        };
        // The copy starts with the first pieces planned (for most images, all of them).
        while !queue.wait_ready(reporter.poll_interval()) && reporter.stop().is_none() {
            reporter.waiting_for(Some(format!("the diff scan of {}", source.spec)));
            reporter.tick();
        }
        reporter.set_total(queue.planned());
        reporter.phase(Phase::Copying);
        let mut feed = &**queue;
        let job = engine::Job {
            pieces: &mut feed,
            known_zero,
            window: Window::of(self.chunk_size, self.window),
            marks: Some(&marks),
            shared,
        };
        // A scan stopped by a cancel fails the planning with ECANCELED: say why it stopped.
        let copied = engine::run(&*source.image, &**dest, job, reporter, &label).map_err(|e| {
            if e.kind() == ErrorKind::Cancelled {
                self.stopped_or(reporter, e)
            } else {
                e
            }
        });
        // Nothing more is taken from the queue: a planning still running stops.
        queue.close();
        if let Some(checkpoints) = checkpoints {
            // A transfer that did not finish keeps what it did for its rerun, unless its
            // writes failed for a full pool or a timeout: a last checkpoint would wait out
            // the operation timeout again.
            let keep = copied.as_ref().err().is_some_and(|e| {
                ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno())
            });
            if let Some(fenced) = checkpoints.finish(keep) {
                return Err(fenced);
            }
        }
        let counters = copied?;
        let totals = queue.totals().ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                libc::EIO,
                format!("the planning of the transfer into {label} ended without its totals"),
            )
        })?;
        Ok((counters, totals))
    }

    /// Compares what lies below `below` of the transfer's work with the source, chunk by
    /// chunk, and rewrites the chunks that differ: what a rerun does with the checkpoint of a
    /// predecessor that let go of the destination before it (another client could have
    /// written there since). Returns the bytes compared.
    fn recheck(
        &self,
        (source, dest): (&dyn SourceImage, &Arc<dyn DestImage>),
        planner: &Planner,
        below: u64,
        shared: engine::Limits<'_>,
        reporter: &mut Reporter,
        label: &str,
    ) -> Result<u64> {
        let below_plan = Planner {
            size: below.min(planner.size),
            resume_from: 0,
            keep_ranges: true,
            ..planner.clone()
        };
        let stop = reporter.stop_check();
        let from = self.from_snap.clone();
        let scan = |offset, len| source.exact(from.as_deref(), offset, len, &stop);
        let totals = below_plan
            .run(&scan, &mut |_| Ok(()))
            .map_err(|e| self.stopped_or(reporter, e))?;
        let total: u64 = totals.ranges.iter().map(|r| r.1).sum();
        reporter.restart(Phase::Verifying, total);
        let reads = verify::Reads {
            chunk: self.chunk_size,
            window: Window::of(self.chunk_size, self.window),
            rates: shared.rates,
        };
        let compared = verify::compare(
            [source as &dyn engine::DiffSource, &**dest],
            &totals.ranges,
            reads,
            verify::Compare::All,
            reporter,
            label,
        )?;
        if !compared.differing.is_empty() {
            let extents: Vec<plan::DiffExtent> = compared
                .differing
                .iter()
                .map(|&(offset, len)| plan::DiffExtent {
                    offset,
                    len,
                    exists: true,
                })
                .collect();
            let pieces: Vec<Piece> = plan::pieces(&extents, self.chunk_size, self.chunk_size);
            reporter.restart(Phase::Copying, pieces.iter().map(|p| p.len).sum());
            let mut feed = engine::Listed::new(&pieces);
            let job = engine::Job {
                pieces: &mut feed,
                known_zero: &KnownZero::Ranges(Vec::new()),
                window: Window::of(self.chunk_size, self.window),
                marks: None,
                shared,
            };
            engine::run(source, &**dest, job, reporter, label)?;
        }
        Ok(compared.bytes)
    }

    /// The verification: every range the end snapshot will be claimed to equal, compared
    /// (see [`DiffTransfer::verify`]). A difference takes the checkpoint back below it, so
    /// that the rerun the error advises rewrites it.
    fn verify_written(
        &self,
        (source, dest): (&Source, &Arc<dyn DestImage>),
        (target, claimed): (&Target, &Claimed),
        work: &[(u64, u64)],
        rates: &[&RateLimit],
        reporter: &mut Reporter,
    ) -> Result<u64> {
        let label = target.label.clone();
        // What the destination changed meanwhile, as it is now: a write that bypassed the
        // transfer shows there.
        let (image, from, size) = (dest.clone(), source.from.clone(), source.size);
        let stop = reporter.stop_check();
        let what = format!("the changes of {label}");
        let changed = reporter.detached(&label, what, move || match &from {
            Some(from) => image.changed_since(from, size, true, &stop),
            None => image.allocated(size, &stop),
        })?;
        let ranges = plan::union(work, &clip(&changed, size));
        let chunk = self.chunk_size;
        let window = Window::of(chunk, self.window);
        // In a batch, the verification draws its window from the batch's budget: its share,
        // at most its own window.
        let (window, _reserved) = match self.batch.as_deref() {
            Some(batch) => {
                let w = batch.verify_window(window, chunk);
                let reserved = batch
                    .budget
                    .reserve(w.budget, w.max_requests, reporter, &label)?;
                (w, Some(reserved))
            }
            None => (window, None),
        };
        let reads = verify::Reads {
            chunk,
            window,
            rates,
        };
        let sides = [
            (&*source.image as &dyn DiffSource, source.image.label()),
            (&**dest as &dyn DiffSource, dest.path()),
        ];
        match verify::written(sides, &ranges, reads, reporter, &label) {
            Err(e) if e.kind() == ErrorKind::Mismatch => {
                let at = e.offset().unwrap_or(0);
                let object = 1u64 << source.layout.order;
                let back = at / object * object;
                // Below the first difference everything compared equal.
                let _ = self.record(reporter, target, claimed, back);
                Err(e)
            }
            other => other,
        }
    }

    /// Makes the end snapshot, once the source's snapshots are known to still be there and
    /// the destination still this transfer's; then removes the record and the claim. Too late
    /// to stop from here. Returns the time the snapshot took.
    fn commit(
        &self,
        reporter: &mut Reporter,
        source: &Source,
        target: &Target,
        claimed: &Claimed,
        dest: &Arc<dyn DestImage>,
        dest_size: u64,
    ) -> Result<Duration> {
        reporter.phase(Phase::Committing);
        let label = target.label.clone();
        let (image, src) = (source.image.clone(), source.spec.clone());
        let wanted: Vec<Snapshot> = source.end.iter().chain(&source.from).cloned().collect();
        let what = format!("the snapshots of {src} to be checked");
        reporter.waited(what, move || {
            let now = image.snapshots_now()?;
            for snap in &wanted {
                if !now.iter().any(|s| s.id == snap.id && s.name == snap.name) {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        libc::ENOENT,
                        format!(
                            "snapshot {:?} of {} was removed while the transfer read it: what \
                             was read of it cannot be trusted, and no end snapshot was created; \
                             transfer another snapshot",
                            snap.name,
                            src.image_path()
                        ),
                    )
                    .with_image(src.image_path())
                    .with_snap(&snap.name));
                }
            }
            Ok(())
        })?;
        let (image, header, t) = (dest.clone(), claimed.header.clone(), target.clone());
        let shrink_to = (source.size < dest_size).then_some(source.size);
        let end = source.spec.snap().map(str::to_owned);
        let what = match &end {
            Some(end) => format!("the end snapshot {label}@{end} to be created"),
            None => format!("{label} to flush its writes"),
        };
        reporter.waited(what, move || {
            let state = header.read()?;
            if state.claim.as_deref() != Some(t.text.as_str()) {
                return Err(t.fenced_error("its claim on the destination was taken over"));
            }
            if image.lockable()? && !image.holds_lock()? {
                return Err(t.fenced_error("it lost the destination's exclusive lock"));
            }
            if let Some(size) = shrink_to {
                image.resize(size)?;
            }
            image.flush()?;
            let snapshot_started = Instant::now();
            if let Some(end) = &end {
                if let Err(e) = image.create_snapshot(end) {
                    // The snapshot may exist though its creation reported a failure: the
                    // result says whether it does.
                    let made = image
                        .snapshots()
                        .is_ok_and(|snaps| snaps.iter().any(|s| s.name == *end));
                    if !made {
                        return Err(e);
                    }
                }
            }
            let elapsed = snapshot_started.elapsed();
            // The end snapshot makes the transfer complete: a record left behind by a failure
            // here is harmless (the next transfer starts from that unchanged snapshot, and
            // replaces the record), so it does not fail the transfer.
            let _ = t.write_record(&*header, None);
            Ok(elapsed)
        })
    }
}

/// Closes the queue when dropped, so that a planning still running stops, then waits for it.
struct ClosesOnDrop<'a>(&'a Queue, Option<std::thread::JoinHandle<()>>);

impl Drop for ClosesOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
        if let Some(planning) = self.1.take() {
            // A panic of the planning failed the copy already.
            let _ = planning.join();
        }
    }
}

/// Starts planning the transfer's pieces into `queue`, the exact diff of `image` since
/// `from` scanned as it goes: on a thread of its own, or (inline, or with no thread to spare)
/// all at once now. The queue ends with what it found, or its error.
fn start_planning(
    planner: Planner,
    image: Arc<dyn SourceImage>,
    from: Option<String>,
    queue: Arc<Queue>,
    stop: StopCheck,
    threads: Threads,
) -> Option<std::thread::JoinHandle<()>> {
    let plan = move || {
        let scan = |offset, len| image.exact(from.as_deref(), offset, len, &stop);
        let planned = catch_unwind(AssertUnwindSafe(|| {
            planner.run(&scan, &mut |pieces| queue.push(pieces))
        }));
        match planned {
            Ok(result) => queue.finish(result),
            Err(_) => queue.finish(Err(Error::new(
                ErrorKind::Other,
                libc::EIO,
                "the planning of the transfer panicked",
            ))),
        }
    };
    if threads == Threads::Inline {
        plan();
        return None;
    }
    let plan = Arc::new(std::sync::Mutex::new(Some(plan)));
    let shared = plan.clone();
    let spawned = std::thread::Builder::new()
        .name("rbd-diffsync-plan".to_owned())
        .spawn(move || {
            if let Some(plan) = shared.lock().ok().and_then(|mut p| p.take()) {
                plan();
            }
        });
    match spawned {
        Ok(thread) => Some(thread),
        Err(_) => {
            if let Some(plan) = plan.lock().ok().and_then(|mut p| p.take()) {
                plan();
            }
            None
        }
    }
}

/// A write that timed out or was refused for space: if the destination's pool is marked full,
/// an error that says so (the OSDs hold writes to a full pool until they time out).
fn explain_full_pool(reporter: &mut Reporter, e: Error, target: &Target) -> Error {
    if ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno()) {
        return e;
    }
    let (conn, name) = (
        target.conn.clone(),
        target.spec.pool().unwrap_or_default().to_owned(),
    );
    let what = format!("the monitors to tell whether pool {name} is full");
    let full = match reporter.wait(what, true, move || conn.pool_full(&name)) {
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

impl DiffTransfer {
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
