//! The copy engine: a window of requests in flight between a source that reads and a sink that
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
    /// Bytes of data the engine may hold at once: its own buffers, plus librados's receive
    /// buffers while a read is in flight (librbd copies from those into ours). Small pieces
    /// share it, so many more of them than of full chunks can be in flight.
    pub budget: usize,
    /// Requests in flight at most, whatever their size.
    pub max_requests: usize,
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
    /// The piece's data, a spare buffer or a new one; uninitialised until the read has
    /// filled it.
    buf: Vec<u8>,
    piece: Piece,
    phase: Phase,
    /// Requests of this slot not yet completed.
    pending: u32,
    /// Whether one of them failed: the piece then does not count as done.
    failed: bool,
}

impl Slot {
    /// What the slot holds of the window's budget: while a data piece is read, our buffer and
    /// librados's receive buffer; while it is written, ours only; a zeroing piece, nothing.
    fn charge(&self) -> usize {
        match self.phase {
            Phase::Reading => read_charge(&self.piece),
            Phase::Writing if self.piece.data => self.piece.len as usize,
            _ => 0,
        }
    }
}

/// What `piece` holds of the budget while it is read: our buffer and librados's.
fn read_charge(piece: &Piece) -> usize {
    if piece.data {
        2 * piece.len as usize
    } else {
        0
    }
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
    /// Indices of slots with no piece.
    idle: Vec<usize>,
    window: Window,
    /// Bytes of the budget held by the pieces in flight.
    charged: usize,
    /// Buffers of finished pieces, kept for the next ones while the budget allows, so that
    /// their memory is not given back and faulted in again for every piece.
    spare: Vec<Vec<u8>>,
    /// Their total capacity.
    spare_bytes: usize,
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

    /// A slot for `piece` if the window has room for it now. With nothing in flight there is
    /// always room, so that a piece larger than the budget still moves.
    fn slot_for(&mut self, piece: &Piece) -> Option<usize> {
        let charge = read_charge(piece);
        let busy = self.slots.len() - self.idle.len();
        if busy > 0
            && (busy >= self.window.max_requests || self.charged + charge > self.window.budget)
        {
            return None;
        }
        // Spares that this piece will not use give way to it.
        if !(piece.data && self.spare_fit(piece.len as usize).is_some()) {
            while self.charged + charge + self.spare_bytes > self.window.budget {
                let Some(buf) = self.spare.pop() else { break };
                self.spare_bytes -= buf.capacity();
            }
        }
        Some(self.idle.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                buf: Vec::new(),
                piece: *piece,
                phase: Phase::Idle,
                pending: 0,
                failed: false,
            });
            self.slots.len() - 1
        }))
    }

    /// Puts slot `i` back: its charge is returned and its buffer kept as a spare if the
    /// budget has room for it, freed otherwise.
    fn retire(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        self.charged -= slot.charge();
        slot.phase = Phase::Idle;
        let mut buf = std::mem::take(&mut slot.buf);
        self.idle.push(i);
        let cap = buf.capacity();
        if cap > 0 && self.charged + self.spare_bytes + cap <= self.window.budget {
            buf.clear();
            self.spare.push(buf);
            self.spare_bytes += cap;
        }
    }

    fn spare_fit(&self, len: usize) -> Option<usize> {
        self.spare
            .iter()
            .rposition(|b| b.capacity() >= len && b.capacity() / 2 <= len)
    }

    /// A buffer with room for `len` bytes: a spare one of about that size, or a new one.
    /// A spare more than twice too large is not used, so that the budget, which counts
    /// piece lengths, also bounds the memory held.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare_fit(len) {
            Some(k) => {
                let buf = self.spare.swap_remove(k);
                self.spare_bytes -= buf.capacity();
                buf
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Starts `piece` in slot `i`, or settles it at once when it needs no request.
    /// Returns the bytes settled at once.
    fn start(&mut self, i: usize, piece: Piece) -> u64 {
        let (started, phase) = if piece.data {
            let buf = self.buffer(piece.len as usize);
            let slot = &mut self.slots[i];
            slot.buf = buf;
            let buf = slot.buf.as_mut_ptr();
            // SAFETY: the slot's buffer is neither touched nor freed until the read's completion
            // has been received: the slot stays in `Reading`, and `Drop` drains before `slots`
            // goes. librbd writes into its spare capacity, which is never read before then.
            let started = unsafe {
                let token = token(i, Op::Read);
                self.source
                    .start_read(piece.offset, piece.len as usize, buf, &self.notifier, token)
            };
            (started, Phase::Reading)
        } else if self.known_zero.covers(piece.offset, piece.len) {
            self.counters.skipped += piece.len;
            self.retire(i);
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
                self.charged += slot.charge();
            }
            Err(e) => {
                self.fail(e);
                self.retire(i);
            }
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
                // SAFETY: librbd reported all `piece.len` bytes read into the buffer, whose
                // capacity is at least that.
                unsafe { self.slots[i].buf.set_len(piece.len as usize) };
                self.read_done(i);
            }
        }
        let slot = &mut self.slots[i];
        slot.pending -= 1;
        if slot.pending > 0 {
            return 0;
        }
        let failed = slot.failed;
        self.retire(i);
        if failed {
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
        // librados has freed its receive buffer: only ours is held now.
        let slot = &mut self.slots[i];
        let reading = slot.charge();
        slot.phase = Phase::Writing;
        self.charged -= reading - slot.charge();
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

/// Copies the job's pieces from `source` to `sink`, as many at a time as the window allows.
/// Stops starting new work at the first error or on cancellation (then `cancelled` makes the
/// error), waits for what is in flight, then returns.
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
    let mut run = Run {
        source,
        sink,
        known_zero,
        notifier,
        rx,
        slots: Vec::new(),
        idle: Vec::new(),
        window: Window {
            max_requests: window.max_requests.max(1),
            ..window
        },
        charged: 0,
        spare: Vec::new(),
        spare_bytes: 0,
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
            let Some(i) = run.slot_for(&pieces[next]) else {
                break;
            };
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
