//! Checkpoints: while a transfer copies, the offset below which it has written everything is
//! recorded, at a bounded rate, in the destination's in-progress record, so that a rerun of
//! the same diff resumes there instead of starting again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::locks::lock;
use crate::progress::Threads;

/// How often a checkpoint is written at most: one metadata update of the destination's header
/// a second costs nothing beside the copy, and a rerun redoes at most about a second of work.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Records a checkpoint: flushes the destination, then writes the record with it. `Ok(false)`
/// when the write could not be made (a full pool, say: the rerun then redoes a little more);
/// an error when it must not be tried again (this client was fenced off).
pub(crate) type Write = dyn Fn(u64) -> Result<bool, Error> + Send + Sync;

/// Writes checkpoints on a thread of its own, so that the copy never waits for them; or, on a
/// world whose steps run inline, at every mark.
pub(crate) struct Checkpointer {
    tx: Option<Sender<u64>>,
    thread: Option<JoinHandle<()>>,
    write_last: Arc<AtomicBool>,
    /// Inline: the writer, and the last checkpoint written.
    inline: Option<(Arc<Write>, Mutex<u64>)>,
    /// The first error of a write, which stops the checkpoints.
    failed: Arc<Mutex<Option<Error>>>,
}

impl Checkpointer {
    /// Starts recording checkpoints above `done` with `write`.
    pub(crate) fn start(
        write: Arc<Write>,
        done: u64,
        interval: Duration,
        threads: Threads,
    ) -> Checkpointer {
        let failed = Arc::new(Mutex::new(None));
        let write_last = Arc::new(AtomicBool::new(false));
        if threads == Threads::Inline {
            return Checkpointer {
                tx: None,
                thread: None,
                write_last,
                inline: Some((write, Mutex::new(done))),
                failed,
            };
        }
        let (tx, rx) = mpsc::channel();
        let (last, fail) = (write_last.clone(), failed.clone());
        let thread = thread::Builder::new()
            .name("rbd-diffsync-checkpoint".into())
            .spawn(move || record_marks(&*write, done, interval, &rx, &last, &fail))
            .ok();
        Checkpointer {
            tx: thread.is_some().then_some(tx),
            thread,
            write_last,
            inline: None,
            failed,
        }
    }

    /// The copy has written everything below `mark`.
    pub(crate) fn mark(&self, mark: u64) {
        if let Some((write, written)) = &self.inline {
            let mut written = lock(written);
            if mark > *written && self.failed_error_is_none() {
                match write(mark) {
                    Ok(true) => *written = mark,
                    Ok(false) => {}
                    Err(e) => *lock(&self.failed) = Some(e),
                }
            }
            return;
        }
        if let Some(tx) = &self.tx {
            // A checkpointer that is gone records nothing more; the copy goes on.
            let _ = tx.send(mark);
        }
    }

    fn failed_error_is_none(&self) -> bool {
        lock(&self.failed).is_none()
    }

    /// Stops, after recording the last mark if `write_last` (a transfer that did not finish
    /// keeps all it did for its rerun; one that finished removes the record anyway). Returns
    /// the error that stopped the checkpoints, if one did.
    pub(crate) fn finish(mut self, write_last: bool) -> Option<Error> {
        self.write_last.store(write_last, Ordering::SeqCst);
        self.stop();
        lock(&self.failed).take()
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn record_marks(
    write: &Write,
    mut done: u64,
    interval: Duration,
    rx: &Receiver<u64>,
    write_last: &AtomicBool,
    failed: &Mutex<Option<Error>>,
) {
    let mut latest = done;
    let mut written_at = Instant::now();
    let attempt = |mark: u64, done: &mut u64| match write(mark) {
        Ok(true) => {
            *done = mark;
            true
        }
        Ok(false) => true,
        Err(e) => {
            *lock(failed) = Some(e);
            false
        }
    };
    loop {
        let received = if latest > done {
            rx.recv_timeout(interval.saturating_sub(written_at.elapsed()))
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match received {
            Ok(mark) => latest = latest.max(mark),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if latest > done && written_at.elapsed() >= interval {
            if !attempt(latest, &mut done) {
                return;
            }
            written_at = Instant::now();
        }
    }
    if write_last.load(Ordering::SeqCst) && latest > done {
        attempt(latest, &mut done);
    }
}
