//! Checkpoints: while a transfer copies, the offset below which it has written everything is
//! recorded, at a bounded rate, in the destination's in-progress record, so that a rerun of
//! the same diff resumes there instead of starting again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::image::Image;
use crate::record::{Record, KEY};

/// How often a checkpoint is written at most: one metadata update of the destination's header
/// a second costs nothing beside the copy, and a rerun redoes at most about a second of work.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Writes checkpoints on a thread of its own, so that the copy never waits for them.
pub(crate) struct Checkpointer {
    tx: Option<Sender<u64>>,
    thread: Option<JoinHandle<()>>,
    write_last: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts recording the checkpoints of the transfer `record` names into `dest`.
    pub(crate) fn start(dest: Arc<Image>, record: Record, interval: Duration) -> Checkpointer {
        let (tx, rx) = mpsc::channel();
        let write_last = Arc::new(AtomicBool::new(false));
        let last = write_last.clone();
        let thread = thread::Builder::new()
            .name("rbd-diffsync-checkpoint".into())
            .spawn(move || record_marks(&dest, record, interval, &rx, &last))
            .ok();
        Checkpointer {
            tx: thread.is_some().then_some(tx),
            thread,
            write_last,
        }
    }

    /// The copy has written everything below `mark`.
    pub(crate) fn mark(&self, mark: u64) {
        if let Some(tx) = &self.tx {
            // A checkpointer that is gone records nothing more; the copy goes on.
            let _ = tx.send(mark);
        }
    }

    /// Stops, after recording the last mark if `write_last` (a transfer that did not finish
    /// keeps all it did for its rerun; one that finished removes the record anyway).
    pub(crate) fn finish(mut self, write_last: bool) {
        self.write_last.store(write_last, Ordering::SeqCst);
        self.stop();
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
    dest: &Image,
    mut record: Record,
    interval: Duration,
    rx: &Receiver<u64>,
    write_last: &AtomicBool,
) {
    let mut latest = record.done;
    let mut written_at = Instant::now();
    loop {
        let received = if latest > record.done {
            rx.recv_timeout(interval.saturating_sub(written_at.elapsed()))
        } else {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match received {
            Ok(mark) => latest = latest.max(mark),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if latest > record.done && written_at.elapsed() >= interval {
            write(dest, &mut record, latest);
            written_at = Instant::now();
        }
    }
    if write_last.load(Ordering::SeqCst) && latest > record.done {
        write(dest, &mut record, latest);
    }
}

/// Records `mark` once everything below it is durable: a flush first, for a destination
/// whose cache would acknowledge writes before they reach the OSDs. A checkpoint that cannot
/// be written (a full pool, say) is skipped: the rerun then redoes a little more.
fn write(dest: &Image, record: &mut Record, mark: u64) {
    if dest.flush().is_err() {
        return;
    }
    let next = Record {
        done: mark,
        ..record.clone()
    };
    if dest.metadata_set(KEY, &next.encode()).is_ok() {
        *record = next;
    }
}
