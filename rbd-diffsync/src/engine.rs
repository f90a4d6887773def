//! The copy engine: a window of chunks in flight between a source that reads and a sink that
//! writes. Completions arrive on one channel and are handled on the calling thread only.

use std::sync::mpsc::Receiver;

use crate::error::{Error, Result};
use crate::image::{Done, Notifier};
use crate::plan::{zero_runs, KnownZero, Piece};
use crate::progress::{CancelToken, Reporter};

/// Where chunk data comes from.
pub(crate) trait DiffSource {
    /// Starts reading `len` bytes at `off` into `buf`; the result arrives on `done` as `token`.
    ///
    /// # Safety
    /// `buf` must stay valid, unread and unmoved until that result has arrived.
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: &Notifier,
        token: u64,
    ) -> Result<()>;

    /// An error for a failed read, naming the source.
    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error;
}

/// Where chunk data goes.
pub(crate) trait DiffSink {
    /// Starts writing `len` bytes from `buf` at `off`.
    ///
    /// # Safety
    /// `buf` must stay valid and unchanged until the result has arrived on `done`.
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: &Notifier,
        token: u64,
    ) -> Result<()>;

    /// Starts making `[off, off + len)` read as zeros.
    fn start_zero(&self, off: u64, len: u64, done: &Notifier, token: u64) -> Result<()>;

    /// An error for a failed write or zeroing, naming the sink.
    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error;
}

/// How wide the engine runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Chunks in flight at once; each owns one buffer of `chunk_size` bytes.
    pub chunks: usize,
    /// Largest data piece, in bytes.
    pub chunk_size: usize,
}

/// Byte counts of what the engine did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub read: u64,
    pub written: u64,
    pub zeroed: u64,
    pub skipped: u64,
}

/// The kind of request, kept in the low bits of its completion token beside the slot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read = 0,
    Write = 1,
    Zero = 2,
}

fn token(slot: usize, op: Op) -> u64 {
    ((slot as u64) << 2) | op as u64
}

fn untoken(token: u64) -> (usize, Op) {
    let op = match token & 3 {
        0 => Op::Read,
        1 => Op::Write,
        _ => Op::Zero,
    };
    ((token >> 2) as usize, op)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Reading,
    Writing,
}

struct Slot {
    buf: Vec<u8>,
    piece: Piece,
    phase: Phase,
    /// Requests of this slot not yet completed.
    pending: u32,
    /// Whether one of them failed: the piece then does not count as done.
    failed: bool,
}

/// The engine's state. Its `Drop` waits for every request still in flight, so that no buffer
/// is freed while librbd may still touch it, even when unwinding from a panic.
struct Run<'a> {
    source: &'a dyn DiffSource,
    sink: &'a dyn DiffSink,
    known_zero: &'a KnownZero,
    notifier: Notifier,
    rx: Receiver<Done>,
    slots: Vec<Slot>,
    chunk_size: usize,
    outstanding: usize,
    counters: Counters,
    error: Option<Error>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        while self.outstanding > 0 {
            // Our own `notifier` keeps the channel open, so recv only returns on a completion.
            if self.rx.recv().is_err() {
                break;
            }
            self.outstanding -= 1;
        }
    }
}

impl Run<'_> {
    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.phase == Phase::Idle)
    }

    /// Starts `piece` in slot `i`, or settles it at once when it needs no request.
    /// Returns the bytes settled at once.
    fn start(&mut self, i: usize, piece: Piece) -> u64 {
        let (started, phase) = if piece.data {
            let chunk_size = self.chunk_size;
            let slot = &mut self.slots[i];
            if slot.buf.len() < chunk_size {
                slot.buf = vec![0; chunk_size];
            }
            let buf = slot.buf.as_mut_ptr();
            // SAFETY: the slot's buffer is neither touched nor freed until the read's completion
            // has been received: the slot stays in `Reading`, and `Drop` drains before `slots`
            // goes.
            let started = unsafe {
                let token = token(i, Op::Read);
                self.source
                    .start_read(piece.offset, piece.len as usize, buf, &self.notifier, token)
            };
            (started, Phase::Reading)
        } else if self.known_zero.covers(piece.offset, piece.len) {
            self.counters.skipped += piece.len;
            return piece.len;
        } else {
            self.counters.zeroed += piece.len;
            let token = token(i, Op::Zero);
            let started = self
                .sink
                .start_zero(piece.offset, piece.len, &self.notifier, token);
            (started, Phase::Writing)
        };
        match started {
            Ok(()) => {
                self.outstanding += 1;
                let slot = &mut self.slots[i];
                slot.piece = piece;
                slot.phase = phase;
                slot.pending = 1;
                slot.failed = false;
            }
            Err(e) => self.fail(e),
        }
        0
    }

    /// Handles one completion; returns the bytes of a piece that finished with it.
    fn complete(&mut self, done: Done) -> u64 {
        self.outstanding -= 1;
        let (i, op) = untoken(done.token);
        let phase = self.slots[i].phase;
        let piece = self.slots[i].piece;
        if done.ret < 0 {
            let e = match op {
                Op::Read => self.source.read_error(piece.offset, piece.len, done.ret),
                Op::Write => self
                    .sink
                    .write_error("write", piece.offset, piece.len, done.ret),
                Op::Zero => {
                    self.sink
                        .write_error("write_zeroes", piece.offset, piece.len, done.ret)
                }
            };
            self.fail(e);
            self.slots[i].failed = true;
        } else if phase == Phase::Reading {
            if done.ret as u64 != piece.len {
                let e = self
                    .source
                    .read_error(piece.offset, piece.len, -(libc::EIO as i64));
                self.fail(e);
                self.slots[i].failed = true;
            } else {
                self.read_done(i);
            }
        }
        let slot = &mut self.slots[i];
        slot.pending -= 1;
        if slot.pending > 0 {
            return 0;
        }
        slot.phase = Phase::Idle;
        if slot.failed {
            0
        } else {
            piece.len
        }
    }

    /// Sends the data runs of a read chunk to the sink, and its zero runs to be zeroed unless
    /// the destination reads zeros there already.
    fn read_done(&mut self, i: usize) {
        let piece = self.slots[i].piece;
        self.counters.read += piece.len;
        self.slots[i].phase = Phase::Writing;
        if self.error.is_some() {
            return;
        }
        let runs = zero_runs(&self.slots[i].buf[..piece.len as usize], piece.offset);
        for run in runs {
            let off = piece.offset + run.start as u64;
            let len = run.len as u64;
            let started = if run.zero {
                if self.known_zero.covers(off, len) {
                    self.counters.skipped += len;
                    continue;
                }
                self.counters.zeroed += len;
                self.sink
                    .start_zero(off, len, &self.notifier, token(i, Op::Zero))
            } else {
                self.counters.written += len;
                // SAFETY: the slot stays in `Writing` with this request pending, so its buffer
                // is left untouched until the write's completion has been received.
                unsafe {
                    let ptr = self.slots[i].buf.as_ptr().add(run.start);
                    self.sink
                        .start_write(off, run.len, ptr, &self.notifier, token(i, Op::Write))
                }
            };
            match started {
                Ok(()) => {
                    self.outstanding += 1;
                    self.slots[i].pending += 1;
                }
                Err(e) => {
                    self.fail(e);
                    self.slots[i].failed = true;
                    return;
                }
            }
        }
    }
}

/// What the engine is to do.
#[derive(Debug)]
pub(crate) struct Job<'a> {
    pub pieces: &'a [Piece],
    pub known_zero: &'a KnownZero,
    pub window: Window,
}

/// Copies the job's pieces from `source` to `sink`, `window.chunks` at a time. Stops starting
/// new work at the first error or on cancellation (then `cancelled` makes the error), waits
/// for what is in flight, then returns.
pub(crate) fn run(
    source: &dyn DiffSource,
    sink: &dyn DiffSink,
    job: Job<'_>,
    reporter: &mut Reporter,
    cancel: &CancelToken,
    cancelled: impl FnOnce() -> Error,
) -> Result<Counters> {
    let Job {
        pieces,
        known_zero,
        window,
    } = job;
    let (notifier, rx) = Notifier::new();
    let slots = (0..window.chunks.max(1))
        .map(|_| Slot {
            buf: Vec::new(),
            piece: Piece {
                offset: 0,
                len: 0,
                data: false,
            },
            phase: Phase::Idle,
            pending: 0,
            failed: false,
        })
        .collect();
    let mut run = Run {
        source,
        sink,
        known_zero,
        notifier,
        rx,
        slots,
        chunk_size: window.chunk_size,
        outstanding: 0,
        counters: Counters::default(),
        error: None,
    };
    let mut next = 0;
    let mut was_cancelled = false;
    loop {
        while run.error.is_none() && next < pieces.len() {
            if cancel.is_cancelled() {
                was_cancelled = true;
                break;
            }
            let Some(i) = run.free_slot() else { break };
            let settled = run.start(i, pieces[next]);
            next += 1;
            if settled > 0 {
                reporter.advance(settled);
            }
        }
        if run.outstanding == 0 {
            break;
        }
        let done = run
            .rx
            .recv()
            .expect("the engine's own notifier keeps the channel open");
        let finished = run.complete(done);
        if finished > 0 {
            reporter.advance(finished);
        }
    }
    if let Some(e) = run.error.take() {
        return Err(e);
    }
    if was_cancelled {
        return Err(cancelled());
    }
    Ok(run.counters)
}
