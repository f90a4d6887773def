//! Progress reports, cancellation and the figures a transfer returns; and the `Reporter`, which
//! calls the user's callback on the transfer's own thread, also while a blocking librados or
//! librbd call runs on a helper thread.

use std::any::Any;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::error::{Error, Task};

/// What a running transfer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Phase {
    /// Connecting to the clusters and opening the images.
    Connecting,
    /// Checking the images, taking the destination's lock and computing the diff.
    Scanning,
    /// Reading, writing and zeroing.
    Copying,
    /// Reading both images and comparing them: a verification, or a transfer's check of what
    /// it wrote (`verify`), whose `bytes_done` and `bytes_total` count the bytes compared.
    Verifying,
    /// Shrinking the destination if needed, flushing and creating the end snapshot.
    Committing,
}

impl Phase {
    /// `"connecting"`, `"scanning"`, `"copying"`, `"verifying"` or `"committing"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Scanning => "scanning",
            Phase::Copying => "copying",
            Phase::Verifying => "verifying",
            Phase::Committing => "committing",
        }
    }
}

/// Where a running transfer is, as given to the progress callback.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// What the transfer is doing.
    pub phase: Phase,
    /// Bytes of the transfer done (copied, zeroed or found to need nothing).
    pub bytes_done: u64,
    /// Bytes of the transfer in all, as far as they are known: 0 until the copy starts. The
    /// exact diff is scanned a bounded way ahead of the copy, so for an image whose diff
    /// holds more than about 8192 pieces this grows during [`Phase::Copying`] until the scan
    /// has reached the end.
    pub bytes_total: u64,
    /// Time since the transfer started.
    pub elapsed: Duration,
    /// What the transfer has been waiting for, for more than a second: a cluster's answer, a
    /// lock, requests in flight.
    pub waiting_for: Option<String>,
    /// For how long it has waited for that.
    pub waited: Duration,
}

/// What a progress callback may return: `()` to go on, or a [`ControlFlow`] whose `Break`
/// stops the transfer as its [`CancelToken`] would.
pub trait ProgressFlow {
    /// `false` to stop the transfer.
    fn keep_going(self) -> bool;
}

impl ProgressFlow for () {
    fn keep_going(self) -> bool {
        true
    }
}

impl ProgressFlow for ControlFlow<()> {
    fn keep_going(self) -> bool {
        self.is_continue()
    }
}

/// Stops a running transfer from another thread (or a signal handler's thread): requests in
/// flight are drained, nothing more is started, no end snapshot is created and `run()` returns
/// an error of kind [`Cancelled`](crate::ErrorKind::Cancelled). Once the end snapshot is being
/// created it is too late: the transfer completes.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the transfer holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a finished transfer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TransferStats {
    /// The source, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: String,
    /// The destination image, `pool[/namespace]/image`, its pool resolved.
    pub dest: String,
    /// The base snapshot of an incremental; `None` for a full transfer.
    pub from_snap: Option<String>,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the destination as data.
    pub bytes_written: u64,
    /// Bytes made to read as zeros on the destination with write_zeroes.
    pub bytes_zeroed: u64,
    /// Zero bytes that needed no request because the destination read zeros there already.
    pub bytes_skipped: u64,
    /// Bytes read back from both images and compared after the writes (`verify`); 0 without.
    /// It covers every range the end snapshot is claimed to equal: what this transfer wrote,
    /// what an interrupted one it completed had written, and what the destination changed.
    pub bytes_verified: u64,
    /// Bytes below the checkpoint of an interrupted transfer that this one compared with the
    /// source instead of trusting them, because that transfer had let go of the destination
    /// before (another client could have written there since); chunks that differed were
    /// rewritten.
    pub bytes_rechecked: u64,
    /// Ranges reported by the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Size of the diff: the bytes of all those ranges.
    pub diff_bytes: u64,
    /// The source size at the end snapshot, which the destination now has.
    pub image_size: u64,
    /// Whether the destination image was created by this transfer.
    pub created_destination: bool,
    /// Whether the destination held the writes of an interrupted transfer of the same diff,
    /// which this one completed.
    pub continued_interrupted: bool,
    /// Bytes of the diff that the interrupted transfer of the very same diff had completed
    /// (below its checkpoint), and that this one did not do again.
    pub bytes_resumed: u64,
    /// The address of the killed client of an interrupted transfer into the destination that
    /// this transfer fenced off (blocklisted, breaking its exclusive lock if it held it)
    /// instead of waiting for its watch to expire.
    pub broke_lock_of: Option<String>,
    /// The snapshot created on the destination, if the source named one.
    pub end_snap: Option<String>,
    /// Wall time of the whole transfer, validation included.
    #[cfg_attr(feature = "serde", serde(serialize_with = "seconds"))]
    pub elapsed: Duration,
    /// Of that, the time spent creating the end snapshot (the commit marker). The monitor
    /// allots snapshot ids in its proposal rounds, so this takes up to about a second
    /// (`paxos_propose_interval`) whatever the size of the transfer.
    #[cfg_attr(feature = "serde", serde(serialize_with = "seconds"))]
    pub snapshot_elapsed: Duration,
}

#[cfg(feature = "serde")]
pub(crate) fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl TransferStats {
    /// Diff bytes handled per second of wall time.
    pub fn throughput(&self) -> f64 {
        per_second(self.diff_bytes, self.elapsed)
    }
}

/// `bytes` per second of `elapsed`; 0 for no time.
pub(crate) fn per_second(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 / secs
    } else {
        0.0
    }
}

/// How a transfer runs its background steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Threads {
    /// On threads of their own, overlapping one another and the caller's progress reports.
    Spawn,
    /// One after the other on the calling thread: for a simulation, which decides every
    /// interleaving of clients itself and must see the same one again from the same seed.
    Inline,
}

/// A boxed progress callback: `false` stops the transfer.
pub(crate) type ProgressFn = Box<dyn FnMut(&Progress) -> bool + Send>;

/// A wait longer than this is reported as `waiting_for`.
const WAIT_REPORTED_AFTER: Duration = Duration::from_secs(1);

/// Why a transfer stops early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    Token,
    Callback,
}

/// Whether a transfer is to stop, as a helper thread can tell.
#[derive(Clone, Debug)]
pub(crate) struct StopCheck {
    cancel: CancelToken,
    halt: CancelToken,
    /// Set when the step's result is no longer wanted (see [`StopCheck::abandonable`]).
    abandon: CancelToken,
}

/// Cancels the token it holds when dropped: a step run in the background stops as soon as
/// the code that would have waited for it is gone.
pub(crate) struct AbandonOnDrop(CancelToken);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl StopCheck {
    /// One that never stops.
    #[cfg(feature = "internals")]
    pub(crate) fn never() -> StopCheck {
        StopCheck {
            cancel: CancelToken::new(),
            halt: CancelToken::new(),
            abandon: CancelToken::new(),
        }
    }

    pub(crate) fn stopped(&self) -> bool {
        self.cancel.is_cancelled() || self.halt.is_cancelled() || self.abandon.is_cancelled()
    }

    /// The same check, which also turns true once the guard returned with it is dropped.
    pub(crate) fn abandonable(&self) -> (StopCheck, AbandonOnDrop) {
        let abandon = CancelToken::new();
        let check = StopCheck {
            cancel: self.cancel.clone(),
            halt: self.halt.clone(),
            abandon: abandon.clone(),
        };
        (check, AbandonOnDrop(abandon))
    }
}

/// The outcome of a blocking step run on a helper thread.
pub(crate) enum Waited<T> {
    Done(T),
    /// The transfer was asked to stop while the step ran; the step goes on, detached, and its
    /// result is dropped.
    Stopped,
}

/// Calls the user's callback from the transfer's thread, at most every `interval` (and at
/// every change of phase and at the end), and keeps track of why the transfer should stop.
pub(crate) struct Reporter {
    callback: Option<ProgressFn>,
    interval: Duration,
    started: Instant,
    last: Option<Instant>,
    phase: Phase,
    total: u64,
    done: u64,
    waiting: Option<(String, Instant)>,
    cancel: CancelToken,
    /// Set once the transfer is to stop, for helper threads to see.
    halt: CancelToken,
    /// What runs: a transfer, its plan, or a verification.
    task: Task,
    stop: Option<Stop>,
    panic: Option<Box<dyn Any + Send>>,
    /// Whether blocking steps run on helper threads or inline.
    threads: Threads,
    /// Helper threads of steps detached by a stop, still running: joined by
    /// [`settle`](Self::settle) before the transfer returns.
    detached: Vec<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub(crate) fn new(
        callback: Option<ProgressFn>,
        interval: Duration,
        cancel: CancelToken,
        started: Instant,
    ) -> Self {
        Reporter {
            callback,
            interval,
            started,
            last: None,
            phase: Phase::Connecting,
            total: 0,
            done: 0,
            waiting: None,
            cancel,
            halt: CancelToken::new(),
            task: Task::Transfer,
            stop: None,
            panic: None,
            threads: Threads::Spawn,
            detached: Vec::new(),
        }
    }

    /// Runs blocking steps as `threads` says from now on.
    pub(crate) fn set_threads(&mut self, threads: Threads) {
        self.threads = threads;
    }

    /// How blocking steps run.
    pub(crate) fn threads(&self) -> Threads {
        self.threads
    }

    /// Waits for the steps that a stop detached, the callback ticking: no thread of the
    /// transfer is left inside librbd or librados once this returns.
    pub(crate) fn settle(&mut self) {
        while let Some(handle) = self.detached.pop() {
            let what = "the steps started before the stop to end".to_owned();
            self.waiting_for(Some(what));
            while !handle.is_finished() {
                std::thread::sleep(self.poll_interval());
                self.tick();
            }
            // A step that panicked after it was detached has nobody to tell.
            let _ = handle.join();
        }
        self.waiting_for(None);
    }

    /// Marks a plan: a stop then says nothing was written.
    pub(crate) fn dry_run(&mut self) {
        self.task = Task::Plan;
    }

    /// Marks a verification, which writes nothing either.
    pub(crate) fn verification(&mut self) {
        self.task = Task::Verify;
    }

    /// What scans on helper threads check between two extents: whether the caller's token
    /// is cancelled or the transfer is to stop for another reason.
    pub(crate) fn stop_check(&self) -> StopCheck {
        StopCheck {
            cancel: self.cancel.clone(),
            halt: self.halt.clone(),
            abandon: CancelToken::new(),
        }
    }

    /// Waits `pause`, the callback ticking; inline, not at all (a simulation's time is its
    /// schedule's).
    pub(crate) fn pause(&mut self, pause: Duration) {
        if self.threads == Threads::Inline {
            return;
        }
        let until = Instant::now() + pause;
        while Instant::now() < until && self.stop().is_none() {
            std::thread::sleep(self.poll_interval().min(until - Instant::now()));
            self.tick();
        }
    }

    /// Forgets the helper thread of the step a stop detached last: a connection attempt,
    /// which ends on its own within its connect timeout on a connection of its own, and is
    /// not waited for.
    pub(crate) fn forget_detached(&mut self) {
        self.detached.pop();
    }

    /// How long a wait may block between two ticks.
    pub(crate) fn poll_interval(&self) -> Duration {
        self.interval
            .clamp(Duration::from_millis(10), Duration::from_millis(100))
    }

    pub(crate) fn phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.waiting = None;
        self.report(true);
    }

    /// Enters `phase`, which counts `total` bytes of its own from 0.
    pub(crate) fn restart(&mut self, phase: Phase, total: u64) {
        self.done = 0;
        self.total = total;
        self.phase(phase);
    }

    /// Sets the bytes in all, reported with the next call.
    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    pub(crate) fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        self.report(false);
    }

    /// Gives the callback its due call, if any.
    pub(crate) fn tick(&mut self) {
        self.report(false);
    }

    pub(crate) fn finish(&mut self) {
        self.waiting = None;
        self.report(true);
    }

    /// Says what the transfer waits for (`None`: nothing). Shown once it lasts over a second.
    pub(crate) fn waiting_for(&mut self, what: Option<String>) {
        match what {
            None => self.waiting = None,
            Some(what) => {
                if self.waiting.as_ref().is_none_or(|(w, _)| *w != what) {
                    self.waiting = Some((what, Instant::now()));
                }
            }
        }
    }

    /// Why the transfer is to stop, if it is.
    pub(crate) fn stop(&mut self) -> Option<Stop> {
        if self.stop.is_none() && self.cancel.is_cancelled() {
            self.stop = Some(Stop::Token);
        }
        if self.stop.is_some() {
            self.halt.cancel();
        }
        self.stop
    }

    /// The panic of the callback, if it panicked: the transfer stopped because of it, and its
    /// caller resumes it once everything is cleaned up.
    pub(crate) fn take_panic(&mut self) -> Option<Box<dyn Any + Send>> {
        self.panic.take()
    }

    /// An error for a transfer into `image` that stopped as asked.
    pub(crate) fn stopped_error(&mut self, image: &str) -> Error {
        let why = match self.stop() {
            Some(Stop::Callback) if self.panic.is_some() => {
                "stopped: the progress callback panicked"
            }
            Some(Stop::Callback) => "stopped by the progress callback",
            _ => "cancelled",
        };
        Error::cancelled(image, why, self.task)
    }

    fn report(&mut self, force: bool) {
        let Some(callback) = self.callback.as_mut() else {
            return;
        };
        let now = Instant::now();
        if !force && self.last.is_some_and(|last| now - last < self.interval) {
            return;
        }
        self.last = Some(now);
        let (waiting_for, waited) = match &self.waiting {
            Some((what, since)) if now - *since >= WAIT_REPORTED_AFTER => {
                (Some(what.clone()), now - *since)
            }
            _ => (None, Duration::ZERO),
        };
        let progress = Progress {
            phase: self.phase,
            bytes_done: self.done,
            bytes_total: self.total,
            elapsed: now - self.started,
            waiting_for,
            waited,
        };
        match catch_unwind(AssertUnwindSafe(|| callback(&progress))) {
            Ok(true) => {}
            Ok(false) => {
                self.stop.get_or_insert(Stop::Callback);
            }
            Err(panic) => {
                // No more calls: the callback's state may be broken.
                self.callback = None;
                self.panic = Some(panic);
                self.stop = Some(Stop::Callback);
            }
        }
    }

    /// Runs `f` on a helper thread while this thread keeps calling the callback, and says what
    /// it waits for once that lasts over a second. When the transfer is asked to stop meanwhile
    /// and `detachable` is set, returns [`Waited::Stopped`] at once and leaves `f` to finish on
    /// its own, to be joined by [`settle`](Self::settle): only steps that write nothing may be
    /// detached. Inline (see [`Threads`]), `f` simply runs; on a thread of the caller's own
    /// when no helper thread can be started.
    pub(crate) fn wait<T: Send + 'static>(
        &mut self,
        what: impl Into<String>,
        detachable: bool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Waited<T> {
        if self.threads == Threads::Inline {
            return Waited::Done(f());
        }
        let (tx, rx) = mpsc::sync_channel(1);
        // The step is shared with the helper so that, if no thread can be started, it still
        // runs, on this one (without progress reports meanwhile).
        let step = Arc::new(std::sync::Mutex::new(Some(f)));
        let shared = step.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-diffsync-wait".to_owned())
            .spawn(move || {
                let f = shared.lock().ok().and_then(|mut f| f.take());
                if let Some(f) = f {
                    // The receiver is gone when the step was detached: nobody wants the result.
                    let _ = tx.send(f());
                }
            });
        let handle = match spawned {
            Ok(handle) => handle,
            Err(_) => {
                let f = step.lock().ok().and_then(|mut f| f.take());
                return Waited::Done(f.expect("a step that no thread took")());
            }
        };
        let what = what.into();
        self.waiting_for(Some(what));
        let poll = self.poll_interval();
        let outcome = loop {
            match rx.recv_timeout(poll) {
                Ok(value) => break Waited::Done(value),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.tick();
                    if detachable && self.stop().is_some() {
                        self.detached.push(handle);
                        break Waited::Stopped;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The step panicked: let its panic continue here.
                    match handle.join() {
                        Err(panic) => std::panic::resume_unwind(panic),
                        Ok(()) => unreachable!("the helper sends before it ends"),
                    }
                }
            }
        };
        self.waiting_for(None);
        outcome
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        // Without a callback to call: only the joins.
        for handle in self.detached.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Reporter {
    /// Runs a blocking step that writes nothing on a helper thread, ticking; a stop detaches
    /// it and fails with the stop's error for `dest`.
    pub(crate) fn detached<T: Send + 'static>(
        &mut self,
        dest: &str,
        what: String,
        f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
        match self.wait(what, true, f) {
            Waited::Done(result) => result,
            Waited::Stopped => Err(self.stopped_error(dest)),
        }
    }

    /// Runs a blocking step that writes on a helper thread, ticking; it is waited for even
    /// when the transfer is asked to stop meanwhile.
    pub(crate) fn waited<T: Send + 'static>(
        &mut self,
        what: impl Into<String>,
        f: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
        match self.wait(what, false, f) {
            Waited::Done(result) => result,
            Waited::Stopped => unreachable!("a step that writes is not detached"),
        }
    }

    /// Connects with `connect` on a helper thread, ticking: a stop gives the attempt up (it
    /// ends on its own within the connect timeout) and fails with the stop's error for `dest`.
    pub(crate) fn connecting<T: Send + 'static>(
        &mut self,
        dest: &str,
        monitors: String,
        connect: impl FnOnce() -> crate::error::Result<T> + Send + 'static,
    ) -> crate::error::Result<T> {
        match self.wait(monitors, true, connect) {
            Waited::Done(result) => result,
            Waited::Stopped => {
                self.forget_detached();
                Err(self.stopped_error(dest))
            }
        }
    }
}

/// Runs `a` and `b`, at once on two threads unless steps run inline (or no thread can be
/// started).
pub(crate) fn both<A: Send, B: Send>(
    threads: Threads,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if threads == Threads::Inline {
        return (a(), b());
    }
    let b = std::sync::Mutex::new(Some(b));
    let take = || b.lock().ok().and_then(|mut b| b.take());
    std::thread::scope(|s| {
        let other = std::thread::Builder::new().spawn_scoped(s, || take().map(|b| b()));
        let first = a();
        let second = match other {
            Ok(other) => other
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => None,
        };
        let second = second.unwrap_or_else(|| take().expect("a step that no thread took")());
        (first, second)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn reporter(log: Arc<Mutex<Vec<Progress>>>, stop_after: usize) -> Reporter {
        let callback: ProgressFn = Box::new(move |p| {
            let mut log = log.lock().unwrap();
            log.push(p.clone());
            log.len() < stop_after
        });
        Reporter::new(
            Some(callback),
            Duration::from_millis(20),
            CancelToken::new(),
            Instant::now(),
        )
    }

    #[test]
    fn a_blocking_step_keeps_the_callback_ticking_and_says_what_it_waits_for() {
        // The step ends only once the callback has reported the wait for it: a report came
        // while it blocked, by construction.
        let (seen_tx, seen_rx) = mpsc::channel();
        let callback: ProgressFn = Box::new(move |p| {
            if p.waiting_for.as_deref() == Some("the monitor") {
                let _ = seen_tx.send(p.clone());
            }
            true
        });
        let mut r = Reporter::new(
            Some(callback),
            Duration::from_millis(20),
            CancelToken::new(),
            Instant::now(),
        );
        r.phase(Phase::Connecting);
        let Waited::Done(seen) = r.wait("the monitor", true, move || {
            seen_rx.recv_timeout(Duration::from_secs(60))
        }) else {
            panic!("not stopped")
        };
        let seen = seen.expect("a report of the wait while the step blocked");
        assert_eq!(seen.phase, Phase::Connecting);
        assert!(seen.waited >= WAIT_REPORTED_AFTER);
    }

    #[test]
    fn a_stop_detaches_a_detachable_step_and_settle_waits_for_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut r = reporter(log, 3);
        let (release, released) = mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        // The step blocks until the test releases it, after the wait returned.
        let out = r.wait("a stalled cluster", true, move || {
            let _ = released.recv_timeout(Duration::from_secs(60));
            done.store(true, Ordering::SeqCst);
        });
        assert!(matches!(out, Waited::Stopped));
        assert!(
            !finished.load(Ordering::SeqCst),
            "returned before the step ended"
        );
        assert_eq!(r.stop(), Some(Stop::Callback));
        assert_eq!(r.stopped_error("p/img").kind(), crate::ErrorKind::Cancelled);
        release.send(()).unwrap();
        r.settle();
        assert!(
            finished.load(Ordering::SeqCst),
            "settle waits for the detached step"
        );
    }

    #[test]
    fn a_step_that_writes_is_waited_for_even_when_stopped() {
        let token = CancelToken::new();
        let mut r = Reporter::new(
            None,
            Duration::from_millis(10),
            token.clone(),
            Instant::now(),
        );
        token.cancel();
        let out = r.wait("a snapshot", false, || {
            std::thread::sleep(Duration::from_millis(200));
            1
        });
        assert!(matches!(out, Waited::Done(1)));
        assert_eq!(r.stop(), Some(Stop::Token));
    }

    #[test]
    fn a_panicking_callback_stops_the_transfer_and_is_kept_for_later() {
        let callback: ProgressFn = Box::new(|_| panic!("boom"));
        let mut r = Reporter::new(
            Some(callback),
            Duration::ZERO,
            CancelToken::new(),
            Instant::now(),
        );
        r.advance(1);
        r.advance(1);
        assert_eq!(r.stop(), Some(Stop::Callback));
        assert!(r.stopped_error("p/i").to_string().contains("panicked"));
        let panic = r.take_panic().expect("kept");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
    }

    #[test]
    fn control_flow_and_unit_are_progress_results() {
        assert!(().keep_going());
        assert!(ControlFlow::<()>::Continue(()).keep_going());
        assert!(!ControlFlow::Break(()).keep_going());
    }

    #[test]
    fn both_runs_both_steps_in_either_mode() {
        for threads in [Threads::Spawn, Threads::Inline] {
            assert_eq!(both(threads, || 1, || 2), (1, 2));
        }
    }
}
