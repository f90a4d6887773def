//! `DiffTransfer`: what `rbd export-diff | rbd import-diff` does, checked first, done with a
//! window of parallel I/O, and safe to interrupt and run again. This is the builder; the run,
//! step by step, is [`crate::protocol`]'s.

use std::panic::resume_unwind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::progress::{CancelToken, Progress, ProgressFlow, ProgressFn, Reporter, TransferStats};
use crate::protocol::batch::BatchLink;
use crate::protocol::job::Job;
use crate::protocol::rbd::RbdWorld;
use crate::protocol::world::World;
use crate::settings::Settings;
use crate::spec::{ClusterSpec, ImageSpec};

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
    /// What the protocol carries out.
    job: Job,
    progress: Option<ProgressFn>,
    cancel: CancelToken,
    /// Where it runs, when not on librbd (a simulated cluster).
    world: Option<Arc<dyn World>>,
}

impl std::fmt::Debug for DiffTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffTransfer")
            .field("source", &self.job.source)
            .field("dest", &self.job.dest)
            .field("from_snap", &self.job.from_snap)
            .field("settings", &self.job.settings)
            .finish_non_exhaustive()
    }
}

pub use crate::protocol::job::Plan;

impl DiffTransfer {
    /// Transfers `source` (`pool[/ns]/image@snap`; without `@snap`, HEAD, and then no snapshot
    /// is created on the destination) into the image `dest` (`pool[/ns]/image`).
    pub fn new(source: ImageSpec, dest: ImageSpec) -> Self {
        DiffTransfer {
            job: Job {
                source,
                dest,
                from_snap: None,
                settings: Settings::default(),
                batch: None,
            },
            progress: None,
            cancel: CancelToken::new(),
            world: None,
        }
    }

    /// Takes every setting from `settings` at once (what the builder methods below set one
    /// by one): the way the command line, C and Python set a transfer up.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.job.settings = settings;
        self
    }

    /// Transfers only what changed since this snapshot, which must exist on both images:
    /// an incremental. Without it the transfer is full.
    pub fn from_snap(mut self, snap: impl Into<String>) -> Self {
        self.job.from_snap = Some(snap.into());
        self
    }

    /// The source's cluster, and the destination's unless [`dest_cluster`](Self::dest_cluster)
    /// says otherwise.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.job.settings.cluster = spec;
        self
    }

    /// The destination's cluster, when it is not the source's.
    pub fn dest_cluster(mut self, spec: ClusterSpec) -> Self {
        self.job.settings.dest_cluster = Some(spec);
        self
    }

    /// The largest data request, in bytes: a multiple of 4 KiB (default 2 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.job.settings.chunk_size = bytes;
        self
    }

    /// The window of I/O in flight, as a number of chunks (default 32): the transfer holds at
    /// most `window × chunk_size` bytes of data at once, librados's receive buffers included.
    /// Smaller pieces share that memory, so many more of them (up to 128) are in flight.
    pub fn window(mut self, chunks: usize) -> Self {
        self.job.settings.window = chunks;
        self
    }

    /// Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
    /// fast-diff, more data to read (zero detection keeps it from being written).
    pub fn whole_object(mut self, on: bool) -> Self {
        self.job.settings.whole_object = on;
        self
    }

    /// Allows writing over what the destination holds (`--force`): a full transfer into an
    /// image that has snapshots, holds data or is open by another client, and an incremental
    /// into an image changed since `from_snap` by someone other than an interrupted transfer
    /// of the same diff (the changed ranges are then rewritten from the source, so that the
    /// destination reads as the source's end snapshot). Off by default: those are refused.
    pub fn overwrite_existing(mut self, on: bool) -> Self {
        self.job.settings.overwrite_existing = on;
        self
    }

    /// After the writes, before the end snapshot, reads back from both images (the source at
    /// its end snapshot, the destination at HEAD) and compares every range the end snapshot
    /// will be claimed to equal (`--verify`): what the transfer wrote or zeroed, what an
    /// interrupted transfer it resumes or continues had written, and whatever the destination
    /// changed since `from_snap` (for a full transfer, all it holds). A difference fails the
    /// transfer with an error of kind [`Mismatch`](crate::ErrorKind::Mismatch) naming the first
    /// differing offset, takes the checkpoint back below it, and no end snapshot is created:
    /// running the transfer again rewrites from there. Off by default.
    /// In a [`SyncMany`](crate::SyncMany) batch, the reads of the verification are drawn from
    /// the batch's memory and request budget too: the transfer's share of it (the budget
    /// divided by `parallel`), at most its own window, waiting for room if need be.
    pub fn verify(mut self, on: bool) -> Self {
        self.job.settings.verify = on;
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
        self.job.settings.progress_interval = interval;
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
        self.job.settings.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }
}

impl DiffTransfer {
    /// Runs every check and computes the diff, writing nothing (the destination is opened
    /// read-only, not claimed and not locked): what [`run`](Self::run) would do now.
    pub fn plan(mut self) -> Result<Plan> {
        let started = Instant::now();
        self.job.check()?;
        let world = self.world();
        let mut reporter = self.reporter(started, &*world);
        reporter.dry_run();
        let result = self
            .job
            .prepare(&world, &mut reporter, false)
            .and_then(|prepared| self.job.count(prepared, &mut reporter));
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
        self.job.check()?;
        let world = self.world();
        let mut reporter = self.reporter(started, &*world);
        let result = self.job.transfer(&world, &mut reporter, started);
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
                batch: self.job.batch.clone(),
            })
        })
    }

    fn reporter(&mut self, started: Instant, world: &dyn World) -> Reporter {
        let mut reporter = Reporter::new(
            self.progress.take(),
            self.job.settings.progress_interval,
            self.cancel.clone(),
            started,
        );
        reporter.set_threads(world.threads());
        reporter
    }
}

impl DiffTransfer {
    /// Joins a batch: its budget, rate limit and connections are shared.
    pub(crate) fn join_batch(&mut self, link: Arc<BatchLink>) {
        self.job.batch = Some(link);
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
            self.job.source.to_string(),
            self.job.dest.to_string(),
            self.job.from_snap.clone(),
        )
    }

    /// The destination and its cluster, to find two transfers into one image.
    pub(crate) fn dest_key(&self) -> (String, ClusterSpec) {
        (
            self.job.dest.to_string(),
            self.job
                .settings
                .dest_cluster
                .clone()
                .unwrap_or_else(|| self.job.settings.cluster.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

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
            let err = t.job.check().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err}");
            assert_eq!(err.errno(), libc::EINVAL, "{what}: {err}");
        }
        let other_cluster = DiffTransfer::new(spec("a/b@s"), spec("a/b"))
            .dest_cluster(ClusterSpec::new().conf("/other/ceph.conf"));
        assert!(other_cluster.job.check().is_ok());
    }
}
