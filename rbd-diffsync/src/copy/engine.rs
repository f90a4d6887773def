//! The copy engine: moves pieces from a [`DiffSource`] to a [`DiffSink`] with many requests in
//! flight, bounded in bytes and in requests, and never a zero run written as data.
//!
//! Sources and sinks start requests and report each one's result through a [`Completion`],
//! from whatever thread finishes it (librbd's callback threads, or the caller's own for a sink
//! that completes at once). Nothing here knows librbd.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use crate::copy::budget::{Budget, Ticket};
pub(crate) use crate::copy::completion::{Completion, Done, WAKE};
use crate::copy::rate::RateLimit;
use crate::error::{Error, Result};
use crate::plan::pipeline::{Popped, Queue, Waker};
use crate::plan::{zero_runs, KnownZero, Piece};
use crate::progress::Reporter;

/// Where chunk data comes from.
///
/// A `start_*` call that returns `Ok` has taken its [`Completion`] and completes it exactly
/// once; one that returns `Err` has dropped it without completing it.
pub(crate) trait DiffSource: Sync {
    /// Starts reading `len` bytes at `off` into `buf`.
    ///
    /// # Safety
    /// `buf` must stay valid for writes of `len` bytes, unread and unmoved, until `done` has
    /// been completed.
    unsafe fn start_read(&self, off: u64, len: usize, buf: *mut u8, done: Completion)
        -> Result<()>;

    /// An error for a failed read, naming the source.
    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error;
}

/// Where chunk data goes. The same contract as [`DiffSource`].
pub(crate) trait DiffSink: Sync {
    /// Starts writing `len` bytes from `buf` at `off`.
    ///
    /// # Safety
    /// `buf` must stay valid and unchanged until `done` has been completed.
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: Completion,
    ) -> Result<()>;

    /// Starts making `[off, off + len)` read as zeros.
    fn start_zero(&self, off: u64, len: u64, done: Completion) -> Result<()>;

    /// An error for a failed write or zeroing, naming the sink.
    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error;
}

/// Requests in flight at most: enough to keep an OSD busy with small writes, few enough not
/// to flood its queue.
const MAX_REQUESTS: usize = 128;
/// How wide the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// Bytes of data the engine may hold at once: its own buffers, plus librados's receive
    /// buffers while a read is in flight (librbd copies from those into ours). Small pieces
    /// share it, so many more of them than of full chunks can be in flight.
    pub budget: usize,
    /// Requests in flight at most, whatever their size: reads, writes and zeroings together.
    pub max_requests: usize,
}

impl Window {
    /// The window for `window` chunks of `chunk_size` bytes.
    pub(crate) fn of(chunk_size: u64, window: usize) -> Window {
        Window {
            budget: window * chunk_size as usize,
            max_requests: MAX_REQUESTS.max(window),
        }
    }
}

/// What a [`Feed`] has for the engine.
pub(crate) enum Next {
    /// The next piece.
    Piece(Piece),
    /// Nothing yet: the feed wakes the engine (a [`WAKE`] completion) when it has more.
    Later,
    /// No more pieces.
    End,
    /// No more pieces: the feed failed.
    Failed(Error),
}

/// Where the engine's pieces come from: in order of offset, each starting at or after the end
/// of the one before.
pub(crate) trait Feed {
    /// The next piece, if it is known yet. After [`Next::Later`] the feed sends a [`WAKE`]
    /// through `waker` once it has another answer.
    fn next(&mut self, waker: &Sender<Done>) -> Next;

    /// Bytes of every piece known so far, those not yet taken included: the transfer's total
    /// as far as it is known.
    fn planned(&self) -> u64;
}

/// A feed of pieces all known beforehand.
pub(crate) struct Listed<'a> {
    pieces: std::slice::Iter<'a, Piece>,
    total: u64,
}

impl<'a> Listed<'a> {
    pub(crate) fn new(pieces: &'a [Piece]) -> Listed<'a> {
        Listed {
            pieces: pieces.iter(),
            total: pieces.iter().map(|p| p.len).sum(),
        }
    }
}

impl Feed for Listed<'_> {
    fn next(&mut self, _: &Sender<Done>) -> Next {
        match self.pieces.next() {
            Some(&p) => Next::Piece(p),
            None => Next::End,
        }
    }

    fn planned(&self) -> u64 {
        self.total
    }
}

impl Feed for &Queue {
    fn next(&mut self, waker: &Sender<Done>) -> Next {
        let waker = || -> Waker {
            let waker = waker.clone();
            Box::new(move || {
                // A receiver that is gone waits for nothing any more.
                let _ = waker.send(Done {
                    token: WAKE,
                    ret: 0,
                });
            })
        };
        match self.pop(waker) {
            Popped::Piece(piece) => Next::Piece(piece),
            Popped::Later => Next::Later,
            Popped::End => Next::End,
            Popped::Failed(e) => Next::Failed(e),
        }
    }

    fn planned(&self) -> u64 {
        Queue::planned(self)
    }
}

/// What the engine shares with other engines: a budget of memory and requests to draw from
/// besides its own window, and rate limits on the bytes it reads.
#[derive(Clone, Copy, Default)]
pub(crate) struct Limits<'a> {
    pub budget: Option<&'a Budget>,
    pub rates: &'a [&'a RateLimit],
}

/// What the engine did, counted as requests completed successfully.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub read: u64,
    pub written: u64,
    pub zeroed: u64,
    pub skipped: u64,
    /// The most requests that were in flight at once.
    pub peak_requests: usize,
    /// The most bytes of the budget held at once, spare buffers included.
    pub peak_held: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Zero,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Zero => "write_zeroes",
        }
    }
}

/// A request of a slot: started, or queued until the request budget has room.
#[derive(Clone, Copy, Debug)]
struct Request {
    slot: usize,
    op: Op,
    off: u64,
    len: u64,
    /// Where a write's data starts in the slot's buffer.
    start: usize,
}

/// A piece in flight, with its buffer.
struct Slot {
    /// The piece's data; uninitialised until the read has filled it.
    buf: Vec<u8>,
    piece: Piece,
    /// The piece's index in the job: the how-manieth the feed gave.
    index: usize,
    /// Bytes of the budget it holds: twice its length while read (our buffer and librados's),
    /// its length plus its data runs' while written (librbd's copy of what it writes),
    /// nothing for a zeroing piece.
    charge: usize,
    /// Its requests not yet completed, queued ones included.
    pending: u32,
    /// Whether one of them failed or was never started: the piece then is not done.
    failed: bool,
    /// Zero bytes of it that needed no request.
    skipped: u64,
}

/// The engine's state. Its `Drop` waits for every request still in flight, so that no buffer
/// is freed while a source or sink may still touch it, even when unwinding from a panic.
struct Run<'a> {
    source: &'a dyn DiffSource,
    sink: &'a dyn DiffSink,
    known_zero: &'a KnownZero,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    slots: Vec<Slot>,
    /// Indices of slots with no piece.
    idle: Vec<usize>,
    /// Requests started, by token; `None` entries are free.
    started: Vec<Option<Request>>,
    free_tokens: Vec<usize>,
    /// Requests waiting for the request budget, oldest first.
    queued: VecDeque<Request>,
    window: Window,
    charged: usize,
    /// Buffers of finished pieces, kept for the next ones while the budget allows, so that
    /// their memory is not given back and faulted in again for every piece.
    spare: Vec<Vec<u8>>,
    spare_bytes: usize,
    in_flight: usize,
    counters: Counters,
    error: Option<Error>,
    /// The transfer was asked to stop: nothing more is started.
    stopping: bool,
    feed: &'a mut (dyn Feed + 'a),
    /// The feed's next piece, taken from it but not started.
    upcoming: Option<Piece>,
    /// The feed said [`Next::Later`] when last asked: it will wake the engine.
    feed_later: bool,
    /// The feed said [`Next::End`] (or failed).
    feed_ended: bool,
    /// The pieces started and not yet below the watermark, from the first one not done
    /// (index `open`: everything below its offset is done), with whether each is done.
    started_pieces: VecDeque<(Piece, bool)>,
    open: usize,
    /// The end of the last piece started.
    end: u64,
    marks: Option<&'a dyn Fn(u64)>,
    /// The budget shared with other engines, and what this one holds of its bytes (its
    /// requests in flight hold one request each).
    budget: Option<&'a Budget>,
    granted: usize,
    byte_ticket: Option<Ticket>,
    request_ticket: Option<Ticket>,
    /// A draw from the shared budget was refused: the budget wakes the engine.
    blocked: bool,
    rates: &'a [&'a RateLimit],
    /// The piece whose bytes the rate limits have reserved, and from when it may be read.
    rate_ready: Option<(usize, Instant)>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        let requests = self.in_flight;
        drain(&self.rx, &mut self.in_flight);
        if let Some(budget) = self.budget {
            budget.leave(&mut self.byte_ticket, &mut self.request_ticket);
            // The memory goes before the budget says it is free.
            self.spare.clear();
            for slot in &mut self.slots {
                slot.buf = Vec::new();
            }
            budget.give(self.granted, requests);
            self.granted = 0;
        }
    }
}

/// Waits for the `in_flight` requests whose completions `rx` receives: what a loop over
/// requests does before the buffers they use may go.
pub(crate) fn drain(rx: &Receiver<Done>, in_flight: &mut usize) {
    while *in_flight > 0 {
        // The loop's own sender keeps the channel open, so recv only returns on a completion.
        match rx.recv() {
            Err(_) => break,
            Ok(done) if done.token == WAKE => {}
            Ok(_) => *in_flight -= 1,
        }
    }
}

/// The next completion, waited for up to the reporter's poll interval: `None` after a wait
/// that timed out, which is reported as waiting for `what` and gives the callback its due
/// call.
pub(crate) fn next_completion(
    rx: &Receiver<Done>,
    reporter: &mut Reporter,
    what: impl FnOnce() -> String,
) -> Option<Done> {
    match rx.recv_timeout(reporter.poll_interval()) {
        Ok(done) => {
            reporter.waiting_for(None);
            Some(done)
        }
        Err(RecvTimeoutError::Timeout) => {
            reporter.waiting_for(Some(what()));
            reporter.tick();
            None
        }
        Err(RecvTimeoutError::Disconnected) => {
            unreachable!("the loop's own sender keeps the channel open")
        }
    }
}

/// The next completion, or `None` once `ready` (when the rate limits let the next read go)
/// or the reporter's poll interval comes first; a wait that timed out is reported as waiting
/// for the tightest of `rates`.
pub(crate) fn completion_or_rate(
    rx: &Receiver<Done>,
    ready: Instant,
    rates: &[&RateLimit],
    reporter: &mut Reporter,
) -> Option<Done> {
    let timeout = ready
        .saturating_duration_since(Instant::now())
        .min(reporter.poll_interval());
    match rx.recv_timeout(timeout) {
        Ok(done) => Some(done),
        Err(_) => {
            let rate = rates.iter().map(|r| r.rate()).min().unwrap_or(0);
            reporter.waiting_for(Some(format!(
                "the rate limit of {:.1} MiB/s",
                rate as f64 / (1u64 << 20) as f64
            )));
            reporter.tick();
            None
        }
    }
}

/// The instant from which a read of `bytes` may go under `rates` (which must not be empty),
/// reserving them: the latest of their answers.
pub(crate) fn rate_ready(rates: &[&RateLimit], bytes: u64) -> Instant {
    rates
        .iter()
        .map(|r| r.reserve(bytes))
        .max()
        .expect("some rate limit")
}

/// What `piece` holds of the budget while it is read.
fn read_charge(piece: &Piece) -> usize {
    if piece.data {
        2 * piece.len as usize
    } else {
        0
    }
}

impl Run<'_> {
    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn winding_down(&self) -> bool {
        self.error.is_some() || self.stopping
    }

    /// Piece `index`, started and not yet below the watermark.
    fn piece(&self, index: usize) -> Piece {
        self.started_pieces[index - self.open].0
    }

    /// The next piece to start, asked of the feed if need be.
    fn upcoming(&mut self) -> Option<Piece> {
        if self.upcoming.is_none() && !self.feed_ended {
            self.feed_later = false;
            match self.feed.next(&self.tx) {
                Next::Piece(piece) => self.upcoming = Some(piece),
                Next::Later => self.feed_later = true,
                Next::End => self.feed_ended = true,
                Next::Failed(e) => {
                    self.feed_ended = true;
                    self.fail(e);
                }
            }
        }
        self.upcoming
    }

    /// Takes the upcoming piece as the next one started: its index.
    fn take_upcoming(&mut self) -> usize {
        let piece = self.upcoming.take().expect("an upcoming piece");
        debug_assert!(piece.offset >= self.end, "the feed's pieces go up");
        self.end = piece.offset + piece.len;
        self.started_pieces.push_back((piece, false));
        self.open + self.started_pieces.len() - 1
    }

    /// Every piece of the feed has been started.
    fn all_started(&self) -> bool {
        self.feed_ended && self.upcoming.is_none()
    }

    fn note_peaks(&mut self) {
        self.counters.peak_requests = self.counters.peak_requests.max(self.in_flight);
        self.counters.peak_held = self.counters.peak_held.max(self.charged + self.spare_bytes);
    }

    /// Whether piece `index` may start now. With nothing in flight there is always room in
    /// the engine's own window, so that a piece larger than the budget still moves. Then the
    /// rate limits must have let its bytes through, and the shared budget must have room for
    /// its memory: a refusal there queues the engine, which the budget wakes.
    fn reserve(&mut self, index: usize, piece: Piece) -> bool {
        let busy = self.slots.len() - self.idle.len();
        let room = busy == 0
            || (self.in_flight < self.window.max_requests
                && self.charged + read_charge(&piece) <= self.window.budget);
        if !room {
            return false;
        }
        if piece.data && !self.rates.is_empty() {
            let ready = match self.rate_ready {
                Some((i, ready)) if i == index => ready,
                _ => {
                    let ready = rate_ready(self.rates, piece.len);
                    self.rate_ready = Some((index, ready));
                    ready
                }
            };
            if Instant::now() < ready {
                return false;
            }
        }
        let Some(budget) = self.budget else {
            return true;
        };
        for attempt in 0..2 {
            let need = (self.charged + self.spare_bytes + read_charge(&piece))
                .saturating_sub(self.granted);
            if need == 0 || budget.take_bytes(&mut self.byte_ticket, need, &self.tx) {
                self.granted += need;
                return true;
            }
            if attempt == 0 && self.spare_bytes > 0 {
                // Spare buffers are of no use while waiting: let the others have them, and
                // ask for what this piece needs without them.
                self.spare.clear();
                self.spare_bytes = 0;
                self.give_back();
            } else {
                break;
            }
        }
        self.blocked = true;
        false
    }

    /// Gives the shared budget back the bytes this engine no longer holds.
    fn give_back(&mut self) {
        let held = self.charged + self.spare_bytes;
        if let Some(budget) = self.budget {
            if self.granted > held {
                budget.give(self.granted - held, 0);
                self.granted = held;
            }
        }
    }

    /// Draws a request from the shared budget, if there is one; a refusal queues the engine.
    fn take_request(&mut self) -> bool {
        match self.budget {
            None => true,
            Some(budget) => {
                let ok = budget.take_request(&mut self.request_ticket, &self.tx);
                self.blocked |= !ok;
                ok
            }
        }
    }

    /// Submits `req` if the shared budget gives it a request, or queues it.
    fn submit_or_queue(&mut self, req: Request) {
        if self.queued.is_empty() && self.take_request() {
            self.submit(req);
        } else {
            self.queued.push_back(req);
        }
    }

    fn new_slot(&mut self, index: usize, buf: Vec<u8>) -> usize {
        let piece = self.piece(index);
        let slot = Slot {
            buf,
            piece,
            index,
            charge: read_charge(&piece),
            pending: 0,
            failed: false,
            skipped: 0,
        };
        self.charged += slot.charge;
        match self.idle.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// Puts slot `i` back: its charge is returned and its buffer kept as a spare if the
    /// budget has room for it, freed otherwise.
    fn retire(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        self.charged -= slot.charge;
        slot.charge = 0;
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

    /// A buffer with room for `len` bytes: a spare one of about that size, or a new one. Either
    /// way, spares that will not be used are freed until the piece's charge fits beside them.
    /// A spare more than twice too large is not used, so that the budget, which counts piece
    /// lengths, also bounds the memory.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let reused = self.spare_fit(len).map(|k| {
            let buf = self.spare.swap_remove(k);
            self.spare_bytes -= buf.capacity();
            buf
        });
        while self.charged + 2 * len + self.spare_bytes > self.window.budget {
            let Some(buf) = self.spare.pop() else { break };
            self.spare_bytes -= buf.capacity();
        }
        reused.unwrap_or_else(|| Vec::with_capacity(len))
    }

    fn submit(&mut self, req: Request) {
        let token = match self.free_tokens.pop() {
            Some(t) => {
                self.started[t] = Some(req);
                t
            }
            None => {
                self.started.push(Some(req));
                self.started.len() - 1
            }
        };
        let done = Completion::new(self.tx.clone(), token as u64);
        let result = match req.op {
            Op::Read => {
                let buf = self.slots[req.slot].buf.as_mut_ptr();
                // SAFETY: the slot's buffer is neither touched nor freed until this read's
                // completion has been received: the slot keeps a pending request until then,
                // and `Drop` drains before `slots` goes. The source writes into its spare
                // capacity, which is never read before then.
                unsafe { self.source.start_read(req.off, req.len as usize, buf, done) }
            }
            Op::Write => {
                // SAFETY: as above: the buffer stays untouched until the write's completion
                // has been received.
                unsafe {
                    let ptr = self.slots[req.slot].buf.as_ptr().add(req.start);
                    self.sink.start_write(req.off, req.len as usize, ptr, done)
                }
            }
            Op::Zero => self.sink.start_zero(req.off, req.len, done),
        };
        match result {
            Ok(()) => {
                self.in_flight += 1;
                self.note_peaks();
            }
            Err(e) => {
                self.started[token] = None;
                self.free_tokens.push(token);
                if let Some(budget) = self.budget {
                    budget.give(0, 1);
                }
                self.fail(e);
                self.settle(req.slot, false);
            }
        }
    }

    /// One request of slot `i` is over; `ok` says whether it succeeded. Returns the bytes of
    /// the piece when that finishes it successfully.
    fn settle(&mut self, i: usize, ok: bool) -> u64 {
        let slot = &mut self.slots[i];
        if !ok {
            slot.failed = true;
        }
        slot.pending -= 1;
        if slot.pending > 0 {
            return 0;
        }
        let (failed, piece, skipped, index) = (slot.failed, slot.piece, slot.skipped, slot.index);
        self.retire(i);
        if failed {
            return 0;
        }
        self.counters.skipped += skipped;
        self.piece_done(index);
        piece.len
    }

    /// Piece `index` has been written: moves the watermark (the offset below which every
    /// piece is done) past it and the pieces done before it, and reports it.
    fn piece_done(&mut self, index: usize) {
        self.started_pieces[index - self.open].1 = true;
        let before = self.open;
        while self.started_pieces.front().is_some_and(|&(_, done)| done) {
            self.started_pieces.pop_front();
            self.open += 1;
        }
        if self.open == before {
            return;
        }
        let mark = match (self.started_pieces.front().map(|p| p.0), self.upcoming) {
            (Some(next), _) | (None, Some(next)) => next.offset,
            (None, None) => self.end,
        };
        if let Some(marks) = self.marks {
            marks(mark);
        }
    }

    /// Starts `piece`, or settles it at once when it needs no request. Returns the bytes
    /// settled at once.
    fn start(&mut self, index: usize) -> u64 {
        let piece = self.piece(index);
        if piece.data {
            let buf = self.buffer(piece.len as usize);
            let i = self.new_slot(index, buf);
            self.slots[i].pending = 1;
            self.submit_or_queue(Request {
                slot: i,
                op: Op::Read,
                off: piece.offset,
                len: piece.len,
                start: 0,
            });
            0
        } else if self.known_zero.covers(piece.offset, piece.len) {
            self.counters.skipped += piece.len;
            self.piece_done(index);
            piece.len
        } else {
            let i = self.new_slot(index, Vec::new());
            self.slots[i].pending = 1;
            self.submit_or_queue(Request {
                slot: i,
                op: Op::Zero,
                off: piece.offset,
                len: piece.len,
                start: 0,
            });
            0
        }
    }

    /// Handles one completion; returns the bytes of a piece that finished with it.
    fn complete(&mut self, done: Done) -> u64 {
        self.in_flight -= 1;
        if let Some(budget) = self.budget {
            budget.give(0, 1);
        }
        let token = done.token as usize;
        let req = self.started[token]
            .take()
            .expect("a completion arrives once for a started request");
        self.free_tokens.push(token);
        if done.ret < 0 {
            let e = match req.op {
                Op::Read => self.source.read_error(req.off, req.len, done.ret),
                op => self.sink.write_error(op.name(), req.off, req.len, done.ret),
            };
            self.fail(e);
            return self.settle(req.slot, false);
        }
        match req.op {
            Op::Read => {
                if done.ret as u64 != req.len {
                    let e = self
                        .source
                        .read_error(req.off, req.len, -(libc::EIO as i64));
                    self.fail(e);
                    return self.settle(req.slot, false);
                }
                self.counters.read += req.len;
                // SAFETY: the source reported all `req.len` bytes read into the buffer, whose
                // capacity is at least that.
                unsafe { self.slots[req.slot].buf.set_len(req.len as usize) };
                self.read_done(req.slot);
                self.settle(req.slot, true)
            }
            Op::Write => {
                self.counters.written += req.len;
                self.settle(req.slot, true)
            }
            Op::Zero => {
                self.counters.zeroed += req.len;
                self.settle(req.slot, true)
            }
        }
    }

    /// Queues the data runs of a read piece to be written, and its zero runs to be zeroed
    /// unless the destination reads zeros there already. After an error or a stop nothing is
    /// queued and the piece does not count as done.
    fn read_done(&mut self, i: usize) {
        let piece = self.slots[i].piece;
        let runs = if self.winding_down() {
            self.slots[i].failed = true;
            Vec::new()
        } else {
            zero_runs(&self.slots[i].buf, piece.offset)
        };
        // librados has freed its receive buffer; librbd copies the data it is given to write
        // (zero-copy writes are off): our buffer and that copy of its data runs are held now.
        let copied: usize = runs.iter().filter(|r| !r.zero).map(|r| r.len).sum();
        let slot = &mut self.slots[i];
        let charge = piece.len as usize + copied;
        self.charged -= slot.charge - charge;
        slot.charge = charge;
        for run in runs {
            let off = piece.offset + run.start as u64;
            let len = run.len as u64;
            let op = if !run.zero {
                Op::Write
            } else if self.known_zero.covers(off, len) {
                self.slots[i].skipped += len;
                continue;
            } else {
                Op::Zero
            };
            self.slots[i].pending += 1;
            self.queued.push_back(Request {
                slot: i,
                op,
                off,
                len,
                start: run.start,
            });
        }
    }

    /// Drops the queued requests after an error or a stop.
    fn drop_queued(&mut self) {
        while let Some(req) = self.queued.pop_front() {
            self.settle(req.slot, false);
        }
    }
}

/// What the engine is to do.
pub(crate) struct Job<'a> {
    pub pieces: &'a mut (dyn Feed + 'a),
    pub known_zero: &'a KnownZero,
    pub window: Window,
    /// Receives the watermark each time it moves: the offset below which every piece is
    /// done (written and acknowledged).
    pub marks: Option<&'a dyn Fn(u64)>,
    /// What it shares with other engines.
    pub shared: Limits<'a>,
}

/// Copies the job's pieces from `source` to `sink`, as many at a time as the window allows,
/// reporting finished pieces to `reporter`. Stops starting new work at the first error or when
/// the reporter says to stop (then the error names `dest`), waits for what is in flight, then
/// returns.
pub(crate) fn run(
    source: &dyn DiffSource,
    sink: &dyn DiffSink,
    job: Job<'_>,
    reporter: &mut Reporter,
    dest: &str,
) -> Result<Counters> {
    let mut run = Run::new(source, sink, job);
    loop {
        run.blocked = false;
        run.note_stop(reporter);
        if run.winding_down() {
            run.drop_queued();
            run.rate_ready = None;
        }
        run.submit_queued();
        run.start_pieces(reporter);
        reporter.set_total(run.feed.planned());
        run.give_back();
        let rate_wait = run.rate_wait();
        if run.in_flight == 0 && (run.queued.is_empty() || run.winding_down()) {
            run.drop_queued();
            if run.winding_down() || run.all_started() {
                break;
            }
            if !run.blocked && !run.feed_later && rate_wait.is_none() {
                continue;
            }
        }
        run.wait(rate_wait, reporter, dest);
    }
    run.outcome(reporter, dest)
}

impl<'a> Run<'a> {
    /// The engine's state for `job`, nothing started.
    fn new<'j: 'a>(source: &'a dyn DiffSource, sink: &'a dyn DiffSink, job: Job<'j>) -> Run<'a> {
        let Job {
            pieces,
            known_zero,
            window,
            marks,
            shared,
        } = job;
        let (tx, rx) = mpsc::channel();
        Run {
            source,
            sink,
            known_zero,
            tx,
            rx,
            slots: Vec::new(),
            idle: Vec::new(),
            started: Vec::new(),
            free_tokens: Vec::new(),
            queued: VecDeque::new(),
            window: Window {
                max_requests: window.max_requests.max(1),
                ..window
            },
            charged: 0,
            spare: Vec::new(),
            spare_bytes: 0,
            in_flight: 0,
            counters: Counters::default(),
            error: None,
            stopping: false,
            feed: pieces,
            upcoming: None,
            feed_later: false,
            feed_ended: false,
            started_pieces: VecDeque::new(),
            open: 0,
            end: 0,
            marks,
            budget: shared.budget,
            granted: 0,
            byte_ticket: None,
            request_ticket: None,
            blocked: false,
            rates: shared.rates,
            rate_ready: None,
        }
    }
}

impl Run<'_> {
    /// Notes a stop the reporter asks for.
    #[inline]
    fn note_stop(&mut self, reporter: &mut Reporter) {
        if !self.stopping && reporter.stop().is_some() {
            self.stopping = true;
        }
    }

    /// Submits the queued requests while the window and the shared budget allow. Writes of
    /// pieces already read come first: they free memory. A refused submission ends this too.
    #[inline]
    fn submit_queued(&mut self) {
        while !self.winding_down() && self.in_flight < self.window.max_requests {
            if self.queued.is_empty() || !self.take_request() {
                break;
            }
            let req = self.queued.pop_front().expect("not empty");
            self.submit(req);
        }
    }

    /// Starts the feed's pieces while nothing is queued and there is room for them,
    /// reporting to `reporter` those settled at once.
    #[inline]
    fn start_pieces(&mut self, reporter: &mut Reporter) {
        while !self.winding_down() && self.queued.is_empty() {
            let Some(piece) = self.upcoming() else {
                break;
            };
            let next = self.open + self.started_pieces.len();
            if !self.reserve(next, piece) {
                break;
            }
            let index = self.take_upcoming();
            let settled = self.start(index);
            if settled > 0 {
                reporter.advance(settled);
                // The callback may have said to stop: start nothing more.
                if reporter.stop().is_some() {
                    self.stopping = true;
                }
            }
        }
    }

    /// When the rate limits let the next piece go, if they hold it back still.
    #[inline]
    fn rate_wait(&self) -> Option<Instant> {
        let next = self.open + self.started_pieces.len();
        self.rate_ready
            .filter(|&(i, _)| i == next)
            .map(|(_, ready)| ready)
            .filter(|&ready| ready > Instant::now())
    }

    /// Waits for the next completion (until `rate_wait` at most, when the rate limits hold
    /// the next piece back) and handles it, reporting to `reporter` a piece it finishes. A
    /// wait that times out is reported as waiting for what the engine waits for.
    #[inline]
    fn wait(&mut self, rate_wait: Option<Instant>, reporter: &mut Reporter, dest: &str) {
        let done = match rate_wait {
            Some(ready) => completion_or_rate(&self.rx, ready, self.rates, reporter),
            None => {
                let what = || {
                    if self.in_flight == 0 && self.blocked {
                        format!("memory or requests shared with other transfers, for {dest}")
                    } else if self.in_flight == 0 && self.feed_later {
                        format!("the diff scan of the source, for {dest}")
                    } else {
                        format!("the cluster to complete the requests in flight to {dest}")
                    }
                };
                next_completion(&self.rx, reporter, what)
            }
        };
        if let Some(done) = done.filter(|d| d.token != WAKE) {
            let finished = self.complete(done);
            if finished > 0 {
                reporter.advance(finished);
            }
            self.give_back();
        }
    }

    /// What the run returns once it ended: its first error, a stop (naming `dest`), or its
    /// counters.
    fn outcome(&mut self, reporter: &mut Reporter, dest: &str) -> Result<Counters> {
        reporter.waiting_for(None);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.stopping {
            return Err(reporter.stopped_error(dest));
        }
        Ok(self.counters)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
