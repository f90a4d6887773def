//! Progress reports, cancellation and the figures a transfer returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a running transfer is, as given to the progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes of the diff done (copied, zeroed or found to need nothing).
    pub bytes_done: u64,
    /// Bytes of the diff in all.
    pub bytes_total: u64,
    /// Time since the transfer started.
    pub elapsed: Duration,
}

/// Stops a running transfer from another thread: requests in flight are drained, nothing more
/// is started, no end snapshot is created and `run()` returns [`Error::Cancelled`](crate::Error).
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
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the destination as data.
    pub bytes_written: u64,
    /// Bytes made to read as zeros on the destination with write_zeroes.
    pub bytes_zeroed: u64,
    /// Zero bytes that needed no request because the destination read zeros there already.
    pub bytes_skipped: u64,
    /// Ranges reported by the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Size of the diff: the bytes of all those ranges.
    pub diff_bytes: u64,
    /// The source size at the end snapshot, which the destination now has.
    pub image_size: u64,
    /// Whether the destination image was created by this transfer.
    pub created_destination: bool,
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
fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl TransferStats {
    /// Diff bytes handled per second of wall time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.diff_bytes as f64 / secs
        } else {
            0.0
        }
    }
}

/// A boxed progress callback.
pub(crate) type ProgressFn = Box<dyn FnMut(&Progress) + Send>;

/// Calls the user's callback from the engine's thread, at most every `interval`, and always
/// once at the end.
pub(crate) struct Reporter {
    callback: Option<ProgressFn>,
    interval: Duration,
    started: Instant,
    last: Option<Instant>,
    total: u64,
    done: u64,
}

impl Reporter {
    pub(crate) fn new(callback: Option<ProgressFn>, interval: Duration, started: Instant) -> Self {
        Reporter {
            callback,
            interval,
            started,
            last: None,
            total: 0,
            done: 0,
        }
    }

    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = total;
        self.report(true);
    }

    pub(crate) fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        self.report(false);
    }

    pub(crate) fn finish(&mut self) {
        self.report(true);
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
        callback(&Progress {
            bytes_done: self.done,
            bytes_total: self.total,
            elapsed: now - self.started,
        });
    }
}
