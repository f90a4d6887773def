//! The plan made while the copy runs.
//!
//! The image is planned cell by cell, in order: cells of [`UNIT_OBJECTS`] objects (at least
//! [`MIN_CELL`] bytes). The exact diff of a cell is scanned by calls over the ranges the
//! outline names there, a few cells ahead of the planning and on a few threads; each cell's
//! pieces go to the copy engine through a bounded [`Queue`] as soon as they are known. So the
//! copy starts with the first cell, and what is held at once does not grow with the image:
//! the extents of at most [`LOOKAHEAD`] scanned cells, and about [`QUEUED`] pieces.
//!
//! What does grow with the image is object-grained and merged into runs (16 bytes each): the
//! outline's ranges, and the ranges the destination must rewrite, zero, or reads as zeros.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, PoisonError};

use crate::error::{Error, ErrorKind, Result};
use crate::locks::{lock, wait};
use crate::plan::{self, DiffExtent, Piece};

/// Objects of a cell: the most one exact call lists at once.
pub(crate) const UNIT_OBJECTS: u64 = 64;
/// Bytes of a cell at least, so that an image of small objects is not planned in tiny cells.
pub(crate) const MIN_CELL: u64 = 256 << 20;
/// Exact calls running at once, each with librbd's own parallelism inside.
const THREADS: usize = 4;
/// Cells scanned, or being scanned, ahead of the planning at most.
pub(crate) const LOOKAHEAD: usize = 2 * THREADS;
/// Pieces queued for the engine before the planning waits for it.
pub(crate) const QUEUED: usize = 8192;

/// What the scan before the copy found of the diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outline {
    /// The diff itself, normalised: a whole-object diff, as the caller asked.
    Known(Vec<DiffExtent>),
    /// The ranges (sorted, disjoint) over which the exact diff is to be scanned: the whole
    /// image without a usable object map, or what the object map says changed.
    Scan(Vec<(u64, u64)>),
}

/// The bytes of a cell for objects of `1 << order` bytes.
pub(crate) fn cell_size(order: u8) -> u64 {
    (UNIT_OBJECTS << order).max(MIN_CELL)
}

/// Everything the planning of a transfer needs besides the source.
#[derive(Clone, Debug)]
pub(crate) struct Planner {
    pub outline: Outline,
    pub cell: u64,
    pub size: u64,
    /// Ranges to read from the source and write besides the diff (sorted, disjoint).
    pub rewrite: Vec<(u64, u64)>,
    /// Ranges to make read as zeros besides the diff (sorted, disjoint).
    pub stale: Vec<(u64, u64)>,
    /// Nothing below this offset is planned.
    pub resume_from: u64,
    pub chunk: u64,
    pub zero_chunk: u64,
    /// Whether to keep the ranges planned, for a check of what was written.
    pub keep_ranges: bool,
}

/// What the planning found, once it is over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Ranges of the diff, neighbours of the same kind merged.
    pub extents: u64,
    pub diff_bytes: u64,
    /// Bytes of the diff below `resume_from`.
    pub bytes_resumed: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// With `keep_ranges`, the ranges of the transfer's work, merged where they touch: those
    /// of every piece, and below `resume_from` those the pieces would have had.
    pub ranges: Vec<(u64, u64)>,
    /// The end and kind of the last extent counted, to merge it with the next.
    last: Option<(u64, bool)>,
}

impl Totals {
    fn count(&mut self, extents: &[DiffExtent], resume_from: u64) {
        for e in extents {
            if self.last != Some((e.offset, e.exists)) {
                self.extents += 1;
            }
            self.last = Some((e.offset + e.len, e.exists));
            self.diff_bytes += e.len;
            self.bytes_resumed += resume_from.clamp(e.offset, e.offset + e.len) - e.offset;
        }
    }

    fn add(&mut self, pieces: &[Piece]) {
        for p in pieces {
            if p.data {
                self.data_bytes += p.len;
            } else {
                self.zero_bytes += p.len;
            }
        }
    }

    /// Keeps the ranges of `work` (sorted, after those kept before).
    fn keep(&mut self, work: &[DiffExtent]) {
        for e in work.iter().filter(|e| e.len > 0) {
            match self.ranges.last_mut() {
                Some(last) if last.0 + last.1 >= e.offset => {
                    last.1 = last.1.max(e.offset + e.len - last.0);
                }
                _ => self.ranges.push((e.offset, e.len)),
            }
        }
    }
}

/// A cursor over sorted, disjoint ranges, for cells that go up.
struct Clipper<'a> {
    ranges: &'a [(u64, u64)],
    at: usize,
}

impl Clipper<'_> {
    /// The parts of the ranges inside `[start, end)`; cells must be asked in order.
    fn clip(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        while self
            .ranges
            .get(self.at)
            .is_some_and(|&(o, l)| o + l <= start)
        {
            self.at += 1;
        }
        let mut out = Vec::new();
        for &(o, l) in &self.ranges[self.at..] {
            if o >= end {
                break;
            }
            let (s, e) = (o.max(start), (o + l).min(end));
            out.push((s, e - s));
        }
        out
    }
}

/// The exact diff of one range (normalised by the caller): what a cell's scan calls.
pub(crate) type ScanFn<'a> = dyn Fn(u64, u64) -> Result<Vec<DiffExtent>> + Sync + 'a;

impl Planner {
    /// Plans cell by cell, in order, giving each cell's pieces (if any) to `emit`; `scan`
    /// gives the exact diff of a range. Stops at the first error of either.
    pub(crate) fn run(
        &self,
        scan: &ScanFn<'_>,
        emit: &mut dyn FnMut(Vec<Piece>) -> Result<()>,
    ) -> Result<Totals> {
        let mut totals = Totals::default();
        let mut rewrite = Clipper {
            ranges: &self.rewrite,
            at: 0,
        };
        let mut stale = Clipper {
            ranges: &self.stale,
            at: 0,
        };
        let mut cell_work = |start: u64, end: u64, extents: Vec<DiffExtent>| {
            let pieces = self.cell(start, end, extents, &mut rewrite, &mut stale, &mut totals);
            if pieces.is_empty() {
                return Ok(());
            }
            totals.add(&pieces);
            emit(pieces)
        };
        match &self.outline {
            Outline::Known(extents) => {
                let mut at = 0;
                for start in (0..self.size).step_by(self.cell as usize) {
                    let end = (start + self.cell).min(self.size);
                    let mut mine = Vec::new();
                    while let Some(e) = extents.get(at).filter(|e| e.offset < end) {
                        mine.push(clip_extent(e, start, end));
                        if e.offset + e.len > end {
                            break;
                        }
                        at += 1;
                    }
                    mine.retain(|e| e.len > 0);
                    cell_work(start, end, mine)?;
                }
            }
            Outline::Scan(ranges) => {
                let units = Units::new(ranges, self.cell, self.size);
                ordered(units, scan, |cell_start, found| {
                    let end = (cell_start + self.cell).min(self.size);
                    cell_work(cell_start, end, found)
                })?;
            }
        }
        totals.last = None;
        Ok(totals)
    }

    /// The pieces of the cell `[start, end)`, whose diff is `extents`.
    fn cell(
        &self,
        start: u64,
        end: u64,
        extents: Vec<DiffExtent>,
        rewrite: &mut Clipper<'_>,
        stale: &mut Clipper<'_>,
        totals: &mut Totals,
    ) -> Vec<Piece> {
        let extents = plan::normalize(extents);
        totals.count(&extents, self.resume_from);
        let (rewrite, stale) = (rewrite.clip(start, end), stale.clip(start, end));
        if extents.is_empty() && rewrite.is_empty() && stale.is_empty() {
            return Vec::new();
        }
        if end <= self.resume_from && !self.keep_ranges {
            return Vec::new();
        }
        let covered: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len)).collect();
        let extra = |ranges: Vec<(u64, u64)>, exists| {
            ranges.into_iter().map(move |(offset, len)| DiffExtent {
                offset,
                len,
                exists,
            })
        };
        let mut work = extents;
        work.extend(extra(plan::subtract(&rewrite, &covered), true));
        work.extend(extra(plan::subtract(&stale, &covered), false));
        let work = plan::normalize(work);
        if self.keep_ranges {
            totals.keep(&work);
        }
        let (work, _) = plan::from_offset(work, self.resume_from);
        plan::pieces(&work, self.chunk, self.zero_chunk)
    }
}

/// `e` cut to `[start, end)` (empty if it lies outside).
fn clip_extent(e: &DiffExtent, start: u64, end: u64) -> DiffExtent {
    let (s, t) = (e.offset.max(start), (e.offset + e.len).min(end));
    DiffExtent {
        offset: s,
        len: t.saturating_sub(s),
        exists: e.exists,
    }
}

/// The cells of an image, each with the ranges of it to scan: every cell, in order, those
/// with nothing to scan included.
struct Units<'a> {
    ranges: &'a [(u64, u64)],
    at: usize,
    cell: u64,
    size: u64,
    next_cell: u64,
}

impl<'a> Units<'a> {
    fn new(ranges: &'a [(u64, u64)], cell: u64, size: u64) -> Units<'a> {
        Units {
            ranges,
            at: 0,
            cell,
            size,
            next_cell: 0,
        }
    }
}

impl Iterator for Units<'_> {
    /// A cell's start, and the ranges of it to scan.
    type Item = (u64, Vec<(u64, u64)>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_cell >= self.size {
            return None;
        }
        let start = self.next_cell;
        let end = (start + self.cell).min(self.size);
        self.next_cell = end;
        let mut clipper = Clipper {
            ranges: self.ranges,
            at: self.at,
        };
        let mine = clipper.clip(start, end);
        self.at = clipper.at;
        Some((start, mine))
    }
}

/// The exact diff over `ranges` (sorted, disjoint) of an image of `size` bytes, scanned cell
/// by cell as a transfer scans it, and normalised.
pub(crate) fn scan_all(
    ranges: &[(u64, u64)],
    cell: u64,
    size: u64,
    scan: &ScanFn<'_>,
) -> Result<Vec<DiffExtent>> {
    let mut found = Vec::new();
    ordered(Units::new(ranges, cell, size), scan, |_, extents| {
        found.extend(extents);
        Ok(())
    })?;
    Ok(plan::normalize(found))
}

/// The scans of a pool's cells: taken in order, their results held until their turn.
struct Pool<'a> {
    units: Units<'a>,
    taken: usize,
    consumed: usize,
    exhausted: bool,
    quit: bool,
    results: BTreeMap<usize, (u64, Scanned)>,
}

/// A cell's scan: its diff, its error, or its panic.
type Scanned = std::thread::Result<Result<Vec<DiffExtent>>>;

/// A cell taken to be scanned: its index, its start, and the ranges of it to scan.
type Cell = (usize, u64, Vec<(u64, u64)>);

/// A [`Pool`] shared by the scanning threads and the one that takes their results in order,
/// with what they wait on: notified whenever the pool changes.
struct Shared<'a> {
    pool: Mutex<Pool<'a>>,
    changed: Condvar,
}

impl<'a> Shared<'a> {
    fn new(units: Units<'a>) -> Shared<'a> {
        Shared {
            pool: Mutex::new(Pool {
                units,
                taken: 0,
                consumed: 0,
                exhausted: false,
                quit: false,
                results: BTreeMap::new(),
            }),
            changed: Condvar::new(),
        }
    }

    /// A scanning thread's next cell to scan, at most [`LOOKAHEAD`] ahead of the consumer;
    /// `None` once every cell is taken or on a quit.
    fn take(&self) -> Option<Cell> {
        let mut p = lock(&self.pool);
        loop {
            if p.quit || p.exhausted {
                return None;
            }
            if p.taken - p.consumed >= LOOKAHEAD {
                p = wait(&self.changed, p);
                continue;
            }
            let i = p.taken;
            match p.units.next() {
                None => {
                    p.exhausted = true;
                    self.changed.notify_all();
                    return None;
                }
                // A cell with nothing to scan is settled at once, in order.
                Some((start, ranges)) if ranges.is_empty() => {
                    p.taken += 1;
                    p.results.insert(i, (start, Ok(Ok(Vec::new()))));
                    self.changed.notify_all();
                }
                Some((start, ranges)) => {
                    p.taken += 1;
                    return Some((i, start, ranges));
                }
            }
        }
    }

    /// Hands over the scan of cell `i`, which starts at `start`.
    fn put(&self, i: usize, start: u64, found: Scanned) {
        lock(&self.pool).results.insert(i, (start, found));
        self.changed.notify_all();
    }

    /// The next cell's start and scan, in order, waited for; `None` after the last one.
    fn next(&self) -> Option<(u64, Scanned)> {
        let mut p = lock(&self.pool);
        loop {
            let i = p.consumed;
            if let Some(result) = p.results.remove(&i) {
                p.consumed += 1;
                self.changed.notify_all();
                return Some(result);
            }
            if p.exhausted && p.taken == p.consumed {
                return None;
            }
            p = wait(&self.changed, p);
        }
    }

    /// Tells the scanning threads to take nothing more.
    fn quit(&self) {
        lock(&self.pool).quit = true;
        self.changed.notify_all();
    }
}

/// The diff of a cell's `ranges`, scanned one after the other.
fn scan_cell(scan: &ScanFn<'_>, ranges: &[(u64, u64)]) -> Result<Vec<DiffExtent>> {
    let mut found = Vec::new();
    for &(offset, len) in ranges {
        found.extend(scan(offset, len)?);
    }
    Ok(found)
}

/// Scans the cells of `units` on [`THREADS`] threads, at most [`LOOKAHEAD`] ahead of `each`,
/// which receives every cell's start and diff in order. A cell with nothing to scan costs no
/// call. Stops at the first error, of a scan or of `each`.
fn ordered(
    units: Units<'_>,
    scan: &ScanFn<'_>,
    mut each: impl FnMut(u64, Vec<DiffExtent>) -> Result<()>,
) -> Result<()> {
    let shared = Shared::new(units);
    let worker = || {
        while let Some((i, start, ranges)) = shared.take() {
            let found = catch_unwind(AssertUnwindSafe(|| scan_cell(scan, &ranges)));
            shared.put(i, start, found);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(worker);
        }
        loop {
            match shared.next() {
                None => return Ok(()),
                Some((_, Err(panic))) => {
                    shared.quit();
                    resume_unwind(panic)
                }
                Some((_, Ok(Err(e)))) => {
                    shared.quit();
                    return Err(e);
                }
                Some((start, Ok(Ok(found)))) => {
                    if let Err(e) = each(start, found) {
                        shared.quit();
                        return Err(e);
                    }
                }
            }
        }
    })
}

/// The pieces between the planning and the engine: at most about [`QUEUED`] of them.
pub(crate) struct Queue {
    /// Pieces queued at most before the planning waits.
    limit: usize,
    state: Mutex<QueueState>,
    /// Notified when pieces are taken or added, and at the end.
    room: Condvar,
}

struct QueueState {
    pieces: VecDeque<Piece>,
    planned: u64,
    end: Option<Result<Totals>>,
    /// The consumer waits for pieces: wake it with this.
    waker: Option<Waker>,
    /// The engine is gone: planning further is of no use.
    closed: bool,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            limit: QUEUED,
            state: Mutex::new(QueueState {
                pieces: VecDeque::new(),
                planned: 0,
                end: None,
                waker: None,
                closed: false,
            }),
            room: Condvar::new(),
        }
    }
}

impl Queue {
    /// A queue without a bound: for a planning that runs to its end before the copy starts.
    pub(crate) fn unbounded() -> Queue {
        Queue {
            limit: usize::MAX,
            ..Queue::default()
        }
    }

    /// Adds a cell's pieces once the queue has room for more; an error once the engine is
    /// gone.
    pub(crate) fn push(&self, pieces: Vec<Piece>) -> Result<()> {
        let mut s = lock(&self.state);
        while s.pieces.len() >= self.limit && !s.closed {
            s = wait(&self.room, s);
        }
        if s.closed {
            return Err(Error::new(
                ErrorKind::Cancelled,
                libc::ECANCELED,
                "the copy ended before its planning",
            ));
        }
        s.planned += pieces.iter().map(|p| p.len).sum::<u64>();
        s.pieces.extend(pieces);
        Self::wake(&mut s);
        self.room.notify_all();
        Ok(())
    }

    /// Ends the queue: the pieces pushed are all there are, or the planning failed.
    pub(crate) fn finish(&self, end: Result<Totals>) {
        let mut s = lock(&self.state);
        s.end = Some(end);
        Self::wake(&mut s);
        self.room.notify_all();
    }

    /// Waits up to `timeout` for the first pieces or the end: whether they are there.
    pub(crate) fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let s = lock(&self.state);
        let (s, _) = self
            .room
            .wait_timeout_while(s, timeout, |s| s.pieces.is_empty() && s.end.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        !s.pieces.is_empty() || s.end.is_some()
    }

    fn wake(s: &mut QueueState) {
        if let Some(waker) = s.waker.take() {
            waker();
        }
    }

    /// The engine is gone: a planning still running stops at its next push.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.room.notify_all();
    }

    /// Bytes of every piece pushed so far.
    pub(crate) fn planned(&self) -> u64 {
        lock(&self.state).planned
    }

    /// What the planning found, once the engine has taken every piece.
    pub(crate) fn totals(&self) -> Option<Totals> {
        match lock(&self.state).end.take() {
            Some(Ok(totals)) => Some(totals),
            _ => None,
        }
    }
}

impl Queue {
    /// Takes the next piece. When there is none yet, `waker` is asked for what to call once
    /// there is one (or the end).
    pub(crate) fn pop(&self, waker: impl FnOnce() -> Waker) -> Popped {
        let mut s = lock(&self.state);
        if let Some(piece) = s.pieces.pop_front() {
            if s.pieces.len() < QUEUED / 2 {
                self.room.notify_all();
            }
            return Popped::Piece(piece);
        }
        match s.end.take() {
            None => {
                s.waker = Some(waker());
                self.room.notify_all();
                Popped::Later
            }
            Some(Ok(totals)) => {
                s.end = Some(Ok(totals));
                Popped::End
            }
            // Nobody asks again once the planning has failed.
            Some(Err(e)) => Popped::Failed(e),
        }
    }
}

/// What a consumer waiting for pieces is woken with.
pub(crate) type Waker = Box<dyn FnOnce() + Send>;

/// What [`Queue::pop`] gives.
#[derive(Debug)]
pub(crate) enum Popped {
    /// The next piece, in order.
    Piece(Piece),
    /// None yet: the waker will be called.
    Later,
    /// The planning ended and every piece was taken.
    End,
    /// The planning failed.
    Failed(Error),
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
