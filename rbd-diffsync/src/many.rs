//! `SyncMany`: many transfers at once, over one connection per cluster, within one budget of
//! memory and requests and one rate limit.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, Task};
use crate::locks::lock;
use crate::progress::{CancelToken, Phase, Progress, ProgressFlow, TransferStats};
use crate::protocol::batch::BatchLink;
use crate::rbd::cluster::Connections;
use crate::settings::BatchSettings;
use crate::spec::{ClusterSpec, ImageSpec};
use crate::transfer::DiffTransfer;

/// The destination of each transfer and its cluster, to find two transfers into one image: a
/// destination named without its pool is in its cluster's `rbd_default_pool`. That pool is
/// asked of the cluster (over the batch's connection, which the transfers use afterwards)
/// only for a destination that another one names with a pool, an image of the same name on
/// the same cluster; where it cannot be asked, the destination stays as written and the
/// transfer fails connecting on its own.
fn dest_keys(transfers: &[DiffTransfer], connections: &Connections) -> Vec<(String, ClusterSpec)> {
    let keys: Vec<(String, ClusterSpec)> = transfers.iter().map(DiffTransfer::dest_key).collect();
    let specs: Vec<Option<ImageSpec>> = keys
        .iter()
        .map(|(dest, _)| ImageSpec::parse(dest).ok())
        .collect();
    let named_with_a_pool = |image: &str, cluster: &ClusterSpec| {
        keys.iter().zip(&specs).any(|((_, c), spec)| {
            c == cluster
                && spec.as_ref().is_some_and(|s| {
                    s.pool().is_some() && s.namespace().is_none() && s.image() == image
                })
        })
    };
    keys.iter()
        .zip(&specs)
        .map(|((dest, cluster), spec)| {
            let resolved = spec
                .as_ref()
                .filter(|s| s.pool().is_none() && named_with_a_pool(s.image(), cluster))
                .and_then(|s| {
                    let pool = connections
                        .get(cluster)
                        .ok()?
                        .config("rbd_default_pool")
                        .ok()?;
                    Some(s.in_default_pool(&pool).to_string())
                });
            (resolved.unwrap_or_else(|| dest.clone()), cluster.clone())
        })
        .collect()
}

/// Where a volume of a batch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum VolumeState {
    /// Waiting for its turn.
    Queued,
    /// Its transfer runs.
    Running,
    /// Its transfer succeeded.
    Succeeded,
    /// Its transfer failed (or was cancelled before it started).
    Failed,
}

impl VolumeState {
    /// `"queued"`, `"running"`, `"succeeded"` or `"failed"`.
    pub fn name(self) -> &'static str {
        match self {
            VolumeState::Queued => "queued",
            VolumeState::Running => "running",
            VolumeState::Succeeded => "succeeded",
            VolumeState::Failed => "failed",
        }
    }
}

/// Where one volume of a batch is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct VolumeProgress {
    /// The source, as given.
    pub source: String,
    /// The destination, as given.
    pub dest: String,
    /// Queued, running, or how it ended.
    pub state: VolumeState,
    /// What its transfer does, once it runs.
    pub phase: Option<Phase>,
    /// Bytes of its transfer done.
    pub bytes_done: u64,
    /// Bytes of its transfer in all, as far as known (see [`Progress::bytes_total`]).
    pub bytes_total: u64,
    /// What it has been waiting for, for more than a second.
    pub waiting_for: Option<String>,
}

/// Where a batch is, as given to its progress callback.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchProgress {
    /// Each volume, in the order given.
    pub volumes: Vec<VolumeProgress>,
    /// Bytes done, of every volume.
    pub bytes_done: u64,
    /// Bytes in all, of the volumes whose diff is known.
    pub bytes_total: u64,
    /// Volumes queued, running, succeeded and failed.
    pub queued: usize,
    /// See `queued`.
    pub running: usize,
    /// See `queued`.
    pub succeeded: usize,
    /// See `queued`.
    pub failed: usize,
    /// Time since the batch started.
    pub elapsed: Duration,
}

impl BatchProgress {
    fn of(volumes: &[VolumeProgress], started: Instant) -> BatchProgress {
        let count = |s: VolumeState| volumes.iter().filter(|v| v.state == s).count();
        BatchProgress {
            bytes_done: volumes.iter().map(|v| v.bytes_done).sum(),
            bytes_total: volumes.iter().map(|v| v.bytes_total).sum(),
            queued: count(VolumeState::Queued),
            running: count(VolumeState::Running),
            succeeded: count(VolumeState::Succeeded),
            failed: count(VolumeState::Failed),
            volumes: volumes.to_vec(),
            elapsed: started.elapsed(),
        }
    }
}

type BatchProgressFn = Box<dyn FnMut(&BatchProgress) -> bool + Send>;

/// Many [`DiffTransfer`]s at once (`rbd-diffsync sync-many`): at most
/// [`parallel`](BatchSettings::parallel) of them run at a time, over one connection per
/// cluster, drawing their memory and requests in flight from one budget and their reads from
/// one rate limit. Each is a normal transfer, with every check and guarantee of
/// [`DiffTransfer::run`] (its own lock, record, end snapshot as commit marker, resume); one
/// that fails does not stop the others. [`run`](Self::run) returns each one's result, in the
/// order given.
///
/// ```no_run
/// use rbd_diffsync::{ClusterSpec, DiffTransfer, SyncMany};
///
/// let conf = ClusterSpec::new().conf("/etc/ceph/ceph.conf");
/// let mut transfers = Vec::new();
/// for v in ["vol-1", "vol-2", "vol-3"] {
///     transfers.push(
///         DiffTransfer::new(format!("volumes/{v}@s2").parse()?, format!("backups/{v}").parse()?)
///             .from_snap("s1")
///             .cluster(conf.clone()),
///     );
/// }
/// let results = SyncMany::new(transfers)
///     .parallel(4)
///     .rate_limit(200 << 20)
///     .run();
/// for r in &results {
///     match r {
///         Ok(stats) => println!("{}: {} bytes written", stats.dest, stats.bytes_written),
///         Err(e) => eprintln!("failed: {e} (errno {})", e.errno()),
///     }
/// }
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
pub struct SyncMany {
    transfers: Vec<DiffTransfer>,
    settings: BatchSettings,
    progress: Option<BatchProgressFn>,
    cancel: CancelToken,
}

impl std::fmt::Debug for SyncMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncMany")
            .field("transfers", &self.transfers)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SyncMany {
    /// A batch of these transfers, with the default settings.
    pub fn new(transfers: Vec<DiffTransfer>) -> Self {
        SyncMany {
            transfers,
            settings: BatchSettings::default(),
            progress: None,
            cancel: CancelToken::new(),
        }
    }

    /// All the settings at once.
    pub fn settings(mut self, settings: BatchSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Transfers running at once (`--parallel`).
    pub fn parallel(mut self, n: usize) -> Self {
        self.settings.parallel = n;
        self
    }

    /// Bytes of data held at once by all the transfers together.
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.settings.memory_budget = bytes;
        self
    }

    /// Requests in flight at once, for all the transfers together.
    pub fn max_requests(mut self, n: usize) -> Self {
        self.settings.max_requests = n;
        self
    }

    /// Bytes per second read by all the transfers together (`--max-rate`); 0 for no cap.
    pub fn rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.settings.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    /// The least time between two calls of the progress callback.
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.settings.progress_interval = interval;
        self
    }

    /// Cancels every transfer of the batch: those running stop as their own cancel token
    /// would stop them, those not started fail with [`Cancelled`](crate::ErrorKind::Cancelled).
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Called on the thread that runs the batch, at most every
    /// [`progress_interval`](Self::progress_interval) and when a volume ends, with every
    /// volume's progress and the totals. Returning `ControlFlow::Break(())` cancels the
    /// batch; a panic cancels it too, and is resumed once every transfer has stopped. A
    /// transfer's own progress callback is still called, on the thread that runs it.
    pub fn on_progress<R: ProgressFlow>(
        mut self,
        mut f: impl FnMut(&BatchProgress) -> R + Send + 'static,
    ) -> Self {
        self.progress = Some(Box::new(move |p| f(p).keep_going()));
        self
    }

    /// Runs the transfers, at most `parallel` at a time, and returns each one's result in
    /// the order given. Settings out of range fail every transfer with
    /// [`InvalidArgument`](crate::ErrorKind::InvalidArgument), and so does a second transfer into
    /// the same destination image, also one that names it without its pool (`vol` in the
    /// cluster's `rbd_default_pool`) where the other names the pool (`rbd/vol`).
    pub fn run(mut self) -> Vec<Result<TransferStats>> {
        let started = Instant::now();
        let n = self.transfers.len();
        if let Err(e) = self.settings.check() {
            let (kind, errno, message) = (e.kind(), e.errno(), e.message().to_owned());
            return (0..n)
                .map(|_| Err(Error::new(kind, errno, message.clone())))
                .collect();
        }
        let s = &self.settings;
        let link = Arc::new(BatchLink::new(
            s.parallel,
            s.memory_budget,
            s.max_requests,
            s.rate_limit,
        ));
        let volumes: Volumes = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let queued = self.enqueue(&link, &volumes);
        let stopping = CancelToken::new();
        if self.cancel.is_cancelled() {
            stopping.cancel();
        }
        let shared = Shared {
            queue: Mutex::new(queued.queue),
            done: Mutex::new(queued.results),
            volumes,
            stopping,
            cancel: self.cancel.clone(),
        };
        let (tx, rx) = mpsc::channel::<()>();
        let (transfer_panic, callback_panic) = thread::scope(|scope| {
            let workers: Vec<_> = (0..self.settings.parallel.min(lock(&shared.queue).len()))
                .map(|_| {
                    let (tx, shared) = (tx.clone(), &shared);
                    scope.spawn(move || shared.work(&tx))
                })
                .collect();
            drop(tx);
            let callback_panic = self.report_until_done(&rx, &shared, &queued.tokens, started);
            let mut transfer_panic = None;
            for w in workers {
                let panic = w.join().unwrap_or_else(Some);
                if transfer_panic.is_none() {
                    transfer_panic = panic;
                }
            }
            (transfer_panic, callback_panic)
        });
        if let Some(p) = transfer_panic.or(callback_panic) {
            resume_unwind(p);
        }
        shared
            .done
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_iter()
            .map(|r| r.expect("every transfer has a result"))
            .collect()
    }

    /// Each transfer in its volume's place, joined to the batch and reporting into `volumes`,
    /// queued in order; a second transfer into a destination fails at once instead.
    fn enqueue(&mut self, link: &Arc<BatchLink>, volumes: &Volumes) -> Queued {
        let n = self.transfers.len();
        let mut queued = Queued {
            queue: VecDeque::new(),
            results: (0..n).map(|_| None).collect(),
            tokens: Vec::new(),
        };
        let mut seen = HashMap::new();
        let keys = if self.cancel.is_cancelled() {
            // Nothing will run: nothing to ask the clusters.
            self.transfers.iter().map(DiffTransfer::dest_key).collect()
        } else {
            dest_keys(&self.transfers, &link.connections)
        };
        let transfers = std::mem::take(&mut self.transfers).into_iter().zip(keys);
        for (i, (mut t, key)) in transfers.enumerate() {
            let (source, dest, _) = t.names();
            lock(volumes).push(VolumeProgress {
                source,
                dest: dest.clone(),
                state: VolumeState::Queued,
                phase: None,
                bytes_done: 0,
                bytes_total: 0,
                waiting_for: None,
            });
            if let Some(first) = seen.insert(key, i) {
                queued.results[i] = Some(Err(Error::invalid(format!(
                    "the destination {dest} is that of transfer {} of the batch too",
                    first + 1
                ))
                .with_image(&dest)));
                lock(volumes)[i].state = VolumeState::Failed;
                continue;
            }
            t.join_batch(link.clone());
            let t = tracked(t, i, volumes.clone());
            queued.tokens.push(t.token());
            queued.queue.push_back((i, t));
        }
        queued
    }

    /// Calls the batch's callback while the workers run, at its interval and once more at
    /// the end, and cancels every transfer when it asks to stop, panics, or the batch is
    /// cancelled. Returns the callback's panic.
    fn report_until_done(
        &mut self,
        rx: &mpsc::Receiver<()>,
        shared: &Shared,
        tokens: &[CancelToken],
        started: Instant,
    ) -> Option<Panic> {
        let interval = self.settings.progress_interval;
        let poll = interval.clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut last: Option<Instant> = None;
        let mut callback = self.progress.take();
        let (mut cancelled, mut callback_panic) = (false, None);
        loop {
            let finished = match rx.recv_timeout(poll) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            let mut stop = self.cancel.is_cancelled() || shared.stopping.is_cancelled();
            let due = last.is_none_or(|l| l.elapsed() >= interval);
            if let Some(f) = callback.as_mut().filter(|_| due || finished) {
                last = Some(Instant::now());
                let p = BatchProgress::of(&lock(&shared.volumes), started);
                match catch_unwind(AssertUnwindSafe(|| f(&p))) {
                    Ok(true) => {}
                    Ok(false) => stop = true,
                    Err(p) => {
                        callback_panic = Some(p);
                        callback = None;
                        stop = true;
                    }
                }
            }
            if stop && !cancelled {
                cancelled = true;
                shared.stopping.cancel();
                for t in tokens {
                    t.cancel();
                }
            }
            if finished {
                return callback_panic;
            }
        }
    }
}

/// A panic caught on its way, to be resumed once everything has stopped.
type Panic = Box<dyn std::any::Any + Send>;

/// Every volume's progress, in the order of the transfers.
type Volumes = Arc<Mutex<Vec<VolumeProgress>>>;

/// The transfers of a batch ready to run: in order with their places, the results known
/// before any runs (a duplicate destination), and every one's cancel token.
struct Queued {
    queue: VecDeque<(usize, DiffTransfer)>,
    results: Vec<Option<Result<TransferStats>>>,
    tokens: Vec<CancelToken>,
}

/// What the workers of a batch share.
struct Shared {
    queue: Mutex<VecDeque<(usize, DiffTransfer)>>,
    done: Mutex<Vec<Option<Result<TransferStats>>>>,
    volumes: Volumes,
    /// Cancelled when the batch stops: transfers not started yet fail as cancelled.
    stopping: CancelToken,
    /// The batch's own token.
    cancel: CancelToken,
}

impl Shared {
    /// A worker: runs queued transfers one after the other until the queue is empty, telling
    /// `tx` after each. Returns the panic of a transfer's own callback, if one panicked.
    fn work(&self, tx: &mpsc::Sender<()>) -> Option<Panic> {
        let mut panic = None;
        loop {
            // Not `while let`: its guard would hold the queue for the whole transfer.
            let Some((i, t)) = lock(&self.queue).pop_front() else {
                break;
            };
            let result = if self.stopping.is_cancelled() || self.cancel.is_cancelled() {
                let (_, dest, _) = t.names();
                Err(Error::cancelled(
                    &dest,
                    "cancelled before it started",
                    Task::Transfer,
                ))
            } else {
                self.run_one(i, t, &mut panic)
            };
            lock(&self.volumes)[i].state = if result.is_ok() {
                VolumeState::Succeeded
            } else {
                VolumeState::Failed
            };
            lock(&self.done)[i] = Some(result);
            let _ = tx.send(());
        }
        panic
    }

    /// Runs transfer `i`. If its own callback panics, every other transfer stops, and the
    /// panic goes into `panic`, to go on afterwards.
    fn run_one(
        &self,
        i: usize,
        t: DiffTransfer,
        panic: &mut Option<Panic>,
    ) -> Result<TransferStats> {
        lock(&self.volumes)[i].state = VolumeState::Running;
        match catch_unwind(AssertUnwindSafe(|| t.run())) {
            Ok(result) => result,
            Err(p) => {
                self.stopping.cancel();
                let dest = lock(&self.volumes)[i].dest.clone();
                panic.get_or_insert(p);
                Err(Error::cancelled(
                    &dest,
                    "stopped: the progress callback panicked",
                    Task::Transfer,
                ))
            }
        }
    }
}

/// `t`, reporting its progress into volume `i` of `volumes` before calling its own callback.
fn tracked(mut t: DiffTransfer, i: usize, volumes: Volumes) -> DiffTransfer {
    let mut own = t.take_progress();
    t.on_progress(move |p: &Progress| {
        {
            let mut v = lock(&volumes);
            let v = &mut v[i];
            v.phase = Some(p.phase);
            v.bytes_done = p.bytes_done;
            v.bytes_total = p.bytes_total;
            v.waiting_for.clone_from(&p.waiting_for);
        }
        if own.as_mut().is_none_or(|f| f(p)) {
            std::ops::ControlFlow::Continue(())
        } else {
            std::ops::ControlFlow::Break(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> crate::ImageSpec {
        s.parse().unwrap()
    }

    #[test]
    fn bad_settings_and_a_second_transfer_into_one_image_fail_without_connecting() {
        let results = SyncMany::new(vec![
            DiffTransfer::new(spec("a/b@s"), spec("c/d")),
            DiffTransfer::new(spec("a/e@s"), spec("c/f")),
        ])
        .parallel(0)
        .run();
        assert_eq!(results.len(), 2);
        for r in results {
            assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        }
        // Both fail: the first on the wrong window (before connecting), the second because
        // its destination is the first's.
        let results = SyncMany::new(vec![
            DiffTransfer::new(spec("a/b@s"), spec("c/d")).window(0),
            DiffTransfer::new(spec("a/e@s"), spec("c/d")),
        ])
        .run();
        let errors: Vec<Error> = results.into_iter().map(|r| r.unwrap_err()).collect();
        assert_eq!(errors[0].errno(), libc::EINVAL, "{}", errors[0]);
        assert_eq!(errors[1].errno(), libc::EINVAL);
        assert!(errors[1].message().contains("transfer 1"), "{}", errors[1]);
        assert_eq!(errors[1].image(), Some("c/d"));
    }

    #[test]
    fn a_cancelled_batch_starts_nothing() {
        let token = CancelToken::new();
        token.cancel();
        let transfers = (0..3)
            .map(|k| DiffTransfer::new(spec(&format!("a/b{k}@s")), spec(&format!("c/d{k}"))))
            .collect();
        let results = SyncMany::new(transfers)
            .parallel(1)
            .cancel_token(token)
            .run();
        // The first may have started before the cancellation was seen; none got further.
        for r in results {
            assert!(r.is_err());
        }
    }
}
