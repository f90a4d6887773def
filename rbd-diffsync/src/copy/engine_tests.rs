//! Tests of the copy engine against an in-memory device: worker threads take the submitted
//! requests in random order, sleep a random short time, perform them and complete them, so
//! that completions arrive out of order, as librbd's do.

use std::cell::Cell;
use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{run, Completion, Counters, DiffSink, DiffSource, Feed, Job, Limits, Listed, Window};
use crate::copy::budget::Budget;
use crate::copy::rate::RateLimit;
use crate::error::{Error, ErrorKind, Result};
use crate::locks::lock;
use crate::plan::pipeline::{Queue, Totals};
use crate::plan::{normalize, pieces, DiffExtent, KnownZero, Piece, ZERO_BLOCK};
use crate::progress::{CancelToken, Phase, Progress, Reporter};

/// What the destination holds where nothing was written or zeroed.
const MARKER: u8 = 0xA5;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SRC: &str = "test/src";
const DST: &str = "test/dst";
const WORKERS: u64 = 6;
/// A failure waiting for a full window is delivered anyway after this long, so that an engine
/// that never fills its window fails its checks rather than hanging the test; long enough
/// that an engine merely slowed down by a loaded machine fills it first.
const HOLD_LIMIT: Duration = Duration::from_secs(60);
/// A window whose byte budget does not limit anything.
const WIDE: usize = 1 << 30;
/// A block of zeros, to compare with (a slice comparison is a memcmp, even unoptimised).
static ZEROS: [u8; ZERO_BLOCK as usize] = [0; ZERO_BLOCK as usize];

fn all_zero(bytes: &[u8]) -> bool {
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// xorshift64*, with fixed seeds.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn range(off: u64, len: u64) -> Range<usize> {
    off as usize..(off + len) as usize
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Read,
    Write,
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    InFlight,
    Done,
    /// Completed with this negative errno.
    Failed(i64),
    /// Refused at submission: `start_*` returned `Err`.
    Refused,
}

/// One request the engine submitted, in submission order.
#[derive(Clone, Copy, Debug)]
struct Entry {
    kind: Kind,
    off: u64,
    len: u64,
    outcome: Outcome,
    /// Its place in the order of completions.
    completed: Option<usize>,
}

impl Entry {
    fn req(&self) -> Req {
        (self.kind, self.off, self.len)
    }

    fn inside(&self, off: u64, len: u64) -> bool {
        off <= self.off && self.off + self.len <= off + len
    }
}

/// Which request a failure or a refusal hits.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// The read submitted `n`-th, from 0.
    NthRead(usize),
    /// The write at this offset.
    WriteAt(u64),
}

impl Rule {
    fn matches(self, kind: Kind, off: u64, nth_read: Option<usize>) -> bool {
        match self {
            Rule::NthRead(n) => nth_read == Some(n),
            Rule::WriteAt(at) => kind == Kind::Write && off == at,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Failure {
    rule: Rule,
    ret: i64,
    full_at: usize,
}

/// A buffer of the engine's.
struct Buf(*mut u8);

// SAFETY: the engine keeps the buffer valid until the request's completion; only the one worker
// performing the request touches it, before completing it.
unsafe impl Send for Buf {}

struct Task {
    id: usize,
    kind: Kind,
    off: u64,
    len: u64,
    buf: Buf,
    done: Completion,
}

/// A request to fail, held until the window is full.
struct Held {
    task: Task,
    ret: i64,
    full_at: usize,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Submitted requests no worker has taken yet.
    queue: Vec<Task>,
    fail: Option<Failure>,
    held: Option<Held>,
    /// Reads submitted while a failure is held: released once it is delivered.
    held_reads: Vec<Task>,
    refuse: Option<(Rule, i64)>,
    reads: usize,
    in_flight: usize,
    peak_in_flight: usize,
    read_bytes: u64,
    peak_read_bytes: u64,
    log: Vec<Entry>,
    completions: usize,
    /// How many requests had been submitted when the failure was delivered.
    failure_delivered: Option<usize>,
    /// Offsets of image blocks (or parts of one at a write's edge) written as all zeros.
    zero_block_writes: Vec<u64>,
    shutdown: bool,
}

impl State {
    fn finish(&mut self, task: Task, ret: i64) {
        self.in_flight -= 1;
        if task.kind == Kind::Read {
            self.read_bytes -= task.len;
        }
        let entry = &mut self.log[task.id];
        entry.outcome = if ret < 0 {
            Outcome::Failed(ret)
        } else {
            Outcome::Done
        };
        entry.completed = Some(self.completions);
        self.completions += 1;
        // Under the state lock, so that in_flight and the completions sent agree.
        task.done.complete(ret);
    }

    /// Delivers the held failure once the window is full and holds a read submitted after it:
    /// the engine has then received every earlier completion and can start nothing before it
    /// receives this one.
    fn deliver_failure(&mut self) -> bool {
        let ready = self.held.as_ref().is_some_and(|h| {
            (self.in_flight >= h.full_at && !self.held_reads.is_empty())
                || h.since.elapsed() > HOLD_LIMIT
        });
        if !ready {
            return false;
        }
        let held = self.held.take().expect("checked above");
        self.failure_delivered = Some(self.log.len());
        self.finish(held.task, held.ret);
        self.queue.append(&mut self.held_reads);
        true
    }
}

struct Shared {
    src: Vec<u8>,
    dst: Mutex<Vec<u8>>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn error(&self, kind: Kind, off: u64, len: u64, ret: i64) -> Error {
        match kind {
            Kind::Read => Error::io("read", SRC, off, len, ret),
            Kind::Write => Error::io("write", DST, off, len, ret),
            Kind::Zero => Error::io("write_zeroes", DST, off, len, ret),
        }
    }

    fn submit(&self, kind: Kind, off: u64, len: u64, buf: *mut u8, done: Completion) -> Result<()> {
        assert!(
            len > 0 && off + len <= self.src.len() as u64,
            "{kind:?} of {len} bytes at {off}: outside the image"
        );
        let mut st = lock(&self.state);
        let nth_read = (kind == Kind::Read).then(|| {
            st.reads += 1;
            st.reads - 1
        });
        let id = st.log.len();
        let entry = Entry {
            kind,
            off,
            len,
            outcome: Outcome::InFlight,
            completed: None,
        };
        if let Some((rule, ret)) = st.refuse {
            if rule.matches(kind, off, nth_read) {
                st.log.push(Entry {
                    outcome: Outcome::Refused,
                    ..entry
                });
                drop(done);
                return Err(self.error(kind, off, len, ret));
            }
        }
        st.log.push(entry);
        st.in_flight += 1;
        st.peak_in_flight = st.peak_in_flight.max(st.in_flight);
        if kind == Kind::Read {
            st.read_bytes += len;
            st.peak_read_bytes = st.peak_read_bytes.max(st.read_bytes);
        }
        let task = Task {
            id,
            kind,
            off,
            len,
            buf: Buf(buf),
            done,
        };
        match st.fail {
            Some(f) if f.rule.matches(kind, off, nth_read) => {
                st.fail = None;
                st.held = Some(Held {
                    task,
                    ret: f.ret,
                    full_at: f.full_at,
                    since: Instant::now(),
                });
            }
            _ if kind == Kind::Read && st.held.is_some() => st.held_reads.push(task),
            _ => st.queue.push(task),
        }
        drop(st);
        self.wake.notify_all();
        Ok(())
    }

    /// Performs `task`; returns the bytes moved and the all-zero blocks a write held.
    fn perform(&self, task: &Task) -> (i64, Vec<u64>) {
        let r = range(task.off, task.len);
        let mut zero_blocks = Vec::new();
        match task.kind {
            Kind::Read => {
                // SAFETY: the engine keeps the buffer valid for writes of `len` bytes until the
                // completion, which comes after this.
                unsafe {
                    std::ptr::copy_nonoverlapping(self.src[r.clone()].as_ptr(), task.buf.0, r.len())
                };
            }
            Kind::Write => {
                // SAFETY: the engine keeps the buffer valid and unchanged for `len` bytes until
                // the completion, which comes after this; nothing writes to it meanwhile.
                let data = unsafe { std::slice::from_raw_parts(task.buf.0.cast_const(), r.len()) };
                let mut at = 0;
                while at < data.len() {
                    let abs = task.off + at as u64;
                    let end =
                        (((abs / ZERO_BLOCK + 1) * ZERO_BLOCK - task.off) as usize).min(data.len());
                    if all_zero(&data[at..end]) {
                        zero_blocks.push(abs);
                    }
                    at = end;
                }
                lock(&self.dst)[r.clone()].copy_from_slice(data);
            }
            Kind::Zero => lock(&self.dst)[r.clone()].fill(0),
        }
        (r.len() as i64, zero_blocks)
    }
}

fn work(shared: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut st = lock(&shared.state);
    loop {
        if st.deliver_failure() {
            shared.wake.notify_all();
            continue;
        }
        if st.shutdown {
            return;
        }
        if st.queue.is_empty() {
            st = shared
                .wake
                .wait_timeout(st, Duration::from_millis(1))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        let i = rng.below(st.queue.len() as u64) as usize;
        let task = st.queue.swap_remove(i);
        drop(st);
        thread::sleep(Duration::from_micros(rng.below(2000)));
        let (ret, zero_blocks) = shared.perform(&task);
        st = lock(&shared.state);
        // Before this completion, which would make the window not full any more.
        if st.deliver_failure() {
            shared.wake.notify_all();
        }
        st.zero_block_writes.extend(zero_blocks);
        st.finish(task, ret);
    }
}

/// A simulated image pair: reads come from a source image, writes and zeroings go to a
/// destination image filled with [`MARKER`].
struct Device {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// What the device saw.
#[derive(Debug)]
struct Stats {
    log: Vec<Entry>,
    peak_in_flight: usize,
    peak_read_bytes: u64,
    zero_block_writes: Vec<u64>,
    failure_delivered: Option<usize>,
}

impl Device {
    fn new(src: Vec<u8>, seed: u64) -> Device {
        let size = src.len();
        let shared = Arc::new(Shared {
            src,
            dst: Mutex::new(vec![MARKER; size]),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let workers = (0..WORKERS)
            .map(|w| {
                let shared = shared.clone();
                thread::spawn(move || work(&shared, seed * 1000 + w))
            })
            .collect();
        Device { shared, workers }
    }

    /// Fails the request `rule` hits with `-errno`, once `full_at` requests are in flight,
    /// one of them a read submitted after it.
    fn fail(&self, rule: Rule, errno: i32, full_at: usize) {
        lock(&self.shared.state).fail = Some(Failure {
            rule,
            ret: -i64::from(errno),
            full_at,
        });
    }

    /// Refuses the submission of the request `rule` hits, with `-errno`.
    fn refuse(&self, rule: Rule, errno: i32) {
        lock(&self.shared.state).refuse = Some((rule, -i64::from(errno)));
    }

    fn probe(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn in_flight(&self) -> usize {
        let st = lock(&self.shared.state);
        let unfinished = st.log.iter().filter(|e| e.outcome == Outcome::InFlight);
        assert_eq!(unfinished.count(), st.in_flight);
        st.in_flight
    }

    fn stats(&self) -> Stats {
        let st = lock(&self.shared.state);
        Stats {
            log: st.log.clone(),
            peak_in_flight: st.peak_in_flight,
            peak_read_bytes: st.peak_read_bytes,
            zero_block_writes: st.zero_block_writes.clone(),
            failure_delivered: st.failure_delivered,
        }
    }

    fn dst(&self) -> Vec<u8> {
        lock(&self.shared.dst).clone()
    }

    fn src(&self) -> &[u8] {
        &self.shared.src
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl DiffSource for Device {
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: Completion,
    ) -> Result<()> {
        self.shared.submit(Kind::Read, off, len as u64, buf, done)
    }

    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
        Error::io("read", SRC, off, len, ret)
    }
}

impl DiffSink for Device {
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: Completion,
    ) -> Result<()> {
        self.shared
            .submit(Kind::Write, off, len as u64, buf.cast_mut(), done)
    }

    fn start_zero(&self, off: u64, len: u64, done: Completion) -> Result<()> {
        self.shared
            .submit(Kind::Zero, off, len, std::ptr::null_mut(), done)
    }

    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error {
        Error::io(op, DST, off, len, ret)
    }
}

/// Requests the engine submitted so far.
fn submitted(shared: &Shared) -> usize {
    lock(&shared.state).log.len()
}

// ---- Images, plans and what they must give ----

type Req = (Kind, u64, u64);

fn ext(offset: u64, len: u64, exists: bool) -> DiffExtent {
    DiffExtent {
        offset,
        len,
        exists,
    }
}

/// Random bytes, none of them zero.
fn random_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len as usize);
    while out.len() < len as usize {
        out.extend_from_slice(&(rng.next() | 0x0101_0101_0101_0101).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

const MIXED_SIZE: u64 = 6 * MIB + 3000;

/// A source of data, aligned and unaligned zero blocks, whole zero chunks (of 128 KiB and
/// less), and its diff: data and zeroed extents with unaligned boundaries, given unsorted and
/// split, and ranges outside the diff.
fn mixed() -> (Vec<u8>, Vec<DiffExtent>) {
    let mut src = random_bytes(MIXED_SIZE, 1);
    for (from, to) in [
        (8 * KIB, 12 * KIB),
        (100 * KIB, 104 * KIB),
        (256 * KIB, 384 * KIB),
        (520 * KIB, 528 * KIB),
        (600 * KIB, 608 * KIB),
        (700 * KIB + 100, 712 * KIB + 50),
        (MIB - 4 * KIB, MIB + 1000),
        (5 * MIB, 5 * MIB + 128 * KIB),
        // Not a whole aligned block: written as data.
        (5 * MIB + 512 * KIB + 1, 5 * MIB + 512 * KIB + 4097),
    ] {
        src[from as usize..to as usize].fill(0);
    }
    // One byte set in the last byte of a block: that block is data, its neighbour zero.
    src[(604 * KIB + 4095) as usize] = 7;
    let last = 4 * MIB + 700 * KIB + 777;
    let extents = vec![
        ext(0, MIB + 1000, true),
        ext(MIB + 30_000, 40_000, false),
        ext(MIB + 1000, 29_000, false),
        ext(1536 * KIB + 5, 3, true),
        ext(
            1600 * KIB + 333,
            2 * MIB + 12_305 - (1600 * KIB + 333),
            true,
        ),
        ext(2 * MIB + 12_345, 2 * MIB + 600 * KIB, false),
        ext(last, MIXED_SIZE - last, true),
    ];
    (src, extents)
}

/// Random data whose 4 KiB blocks `n - 1`, `2n - 1`, `3n - 1`... (counting from 0) are zeros.
fn striped(size: u64, n: u64, seed: u64) -> Vec<u8> {
    let mut src = random_bytes(size, seed);
    let mut block = n - 1;
    while block * ZERO_BLOCK < size {
        let from = block * ZERO_BLOCK;
        src[from as usize..(from + ZERO_BLOCK).min(size) as usize].fill(0);
        block += n;
    }
    src
}

fn plan(extents: &[DiffExtent], chunk: u64) -> Vec<Piece> {
    pieces(&normalize(extents.to_vec()), chunk, 16 * chunk)
}

/// What the destination must read after the whole diff: the source in data extents, zeros in
/// the others, the marker elsewhere.
fn image_of(src: &[u8], extents: &[DiffExtent]) -> Vec<u8> {
    let mut out = vec![MARKER; src.len()];
    for e in extents {
        let r = range(e.offset, e.len);
        if e.exists {
            out[r.clone()].copy_from_slice(&src[r]);
        } else {
            out[r].fill(0);
        }
    }
    out
}

/// The data and zero runs of `src` in `[off, off + len)`, cut at 4 KiB blocks of the image,
/// with neighbours of the same kind merged: `(offset, len, zero)`.
fn runs(src: &[u8], off: u64, len: u64) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = off;
    while at < off + len {
        let end = ((at / ZERO_BLOCK + 1) * ZERO_BLOCK).min(off + len);
        let zero = all_zero(&src[range(at, end - at)]);
        match out.last_mut() {
            Some(last) if last.2 == zero => last.1 += end - at,
            _ => out.push((at, end - at, zero)),
        }
        at = end;
    }
    out
}

/// What the engine must do for a plan.
struct Model {
    /// The requests of each piece.
    requests: Vec<Vec<Req>>,
    dst: Vec<u8>,
    read: u64,
    written: u64,
    zeroed: u64,
    skipped: u64,
}

impl Model {
    fn new(src: &[u8], pieces: &[Piece], known_zero: &KnownZero) -> Model {
        let mut m = Model {
            requests: Vec::new(),
            dst: vec![MARKER; src.len()],
            read: 0,
            written: 0,
            zeroed: 0,
            skipped: 0,
        };
        for p in pieces {
            let mut reqs = Vec::new();
            let parts = if p.data {
                reqs.push((Kind::Read, p.offset, p.len));
                m.read += p.len;
                runs(src, p.offset, p.len)
            } else {
                vec![(p.offset, p.len, true)]
            };
            for (off, len, zero) in parts {
                let r = range(off, len);
                if !zero {
                    reqs.push((Kind::Write, off, len));
                    m.written += len;
                    m.dst[r.clone()].copy_from_slice(&src[r]);
                } else if known_zero.covers(off, len) {
                    m.skipped += len;
                } else {
                    reqs.push((Kind::Zero, off, len));
                    m.zeroed += len;
                    m.dst[r].fill(0);
                }
            }
            m.requests.push(reqs);
        }
        m
    }

    fn all_requests(&self) -> Vec<Req> {
        let mut all: Vec<Req> = self.requests.iter().flatten().copied().collect();
        all.sort();
        all
    }

    fn counters(&self) -> (u64, u64, u64, u64) {
        (self.read, self.written, self.zeroed, self.skipped)
    }

    /// Bytes of the pieces all of whose requests the log shows completed successfully (every
    /// piece of the plans this is used for needs at least one request).
    fn done_bytes(&self, pieces: &[Piece], log: &[Entry]) -> u64 {
        let ok: HashSet<Req> = log
            .iter()
            .filter(|e| e.outcome == Outcome::Done)
            .map(Entry::req)
            .collect();
        pieces
            .iter()
            .zip(&self.requests)
            .filter(|(_, reqs)| {
                assert!(!reqs.is_empty());
                reqs.iter().all(|r| ok.contains(r))
            })
            .map(|(p, _)| p.len)
            .sum()
    }
}

fn logged_requests(log: &[Entry]) -> Vec<Req> {
    let mut all: Vec<Req> = log.iter().map(Entry::req).collect();
    all.sort();
    all
}

/// The destination the successful requests of `log` give.
fn replay(src: &[u8], log: &[Entry]) -> Vec<u8> {
    let mut dst = vec![MARKER; src.len()];
    for e in log.iter().filter(|e| e.outcome == Outcome::Done) {
        let r = range(e.off, e.len);
        match e.kind {
            Kind::Read => {}
            Kind::Write => dst[r.clone()].copy_from_slice(&src[r]),
            Kind::Zero => dst[r].fill(0),
        }
    }
    dst
}

#[track_caller]
fn assert_same_image(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    if got == want {
        return;
    }
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        let end = (at + 16).min(got.len());
        panic!(
            "{what}: first difference at byte {at}: got {:?}, want {:?}",
            &got[at..end],
            &want[at..end]
        );
    }
}

// ---- Running the engine ----

/// A reporter calling `go_on` at every advance, after noting the bytes done in `done`.
fn reporter(
    done: &Arc<AtomicU64>,
    token: &CancelToken,
    mut go_on: impl FnMut(&Progress) -> bool + Send + 'static,
) -> Reporter {
    let done = done.clone();
    Reporter::new(
        Some(Box::new(move |p: &Progress| {
            done.store(p.bytes_done, Ordering::SeqCst);
            go_on(p)
        })),
        Duration::ZERO,
        token.clone(),
        Instant::now(),
    )
}

fn window(budget: usize, max_requests: usize) -> Window {
    Window {
        budget,
        max_requests,
    }
}

/// Runs the engine from `dev` to `dev`, and checks that nothing is in flight when it returns.
fn copy(
    dev: &Device,
    pieces: &[Piece],
    known_zero: &KnownZero,
    window: Window,
    reporter: &mut Reporter,
) -> Result<Counters> {
    copy_shared(dev, pieces, known_zero, window, Limits::default(), reporter)
}

/// [`copy`], the engine sharing `shared` with others.
fn copy_shared(
    dev: &Device,
    pieces: &[Piece],
    known_zero: &KnownZero,
    window: Window,
    shared: Limits<'_>,
    reporter: &mut Reporter,
) -> Result<Counters> {
    copy_fed(dev, pieces, known_zero, window, shared, reporter, false)
}

/// [`copy_shared`]; with `trickle`, the pieces come through a planning queue from a thread
/// that adds a few at a time, now and then after a pause, as the planning of a transfer does.
fn copy_fed(
    dev: &Device,
    pieces: &[Piece],
    known_zero: &KnownZero,
    window: Window,
    shared: Limits<'_>,
    reporter: &mut Reporter,
    trickle: bool,
) -> Result<Counters> {
    reporter.phase(Phase::Copying);
    reporter.set_total(pieces.iter().map(|p| p.len).sum());
    // Whenever the watermark moves, the destination below it is final already.
    let want = Model::new(dev.src(), pieces, known_zero).dst;
    let last = Cell::new(0);
    let marks = |mark: u64| {
        assert!(
            mark > last.get(),
            "the watermark went from {} to {mark}",
            last.get()
        );
        let got = dev.dst();
        assert_same_image(
            &got[range(last.get(), mark - last.get())],
            &want[range(last.get(), mark - last.get())],
            "below the watermark",
        );
        last.set(mark);
    };
    let queue = Queue::default();
    let result = thread::scope(|s| {
        let mut listed = Listed::new(pieces);
        let mut queued = &queue;
        let feed: &mut dyn Feed = if trickle {
            s.spawn(|| {
                let mut rng = Rng::new(pieces.len() as u64);
                for batch in pieces.chunks(3) {
                    if rng.below(4) == 0 {
                        thread::sleep(Duration::from_millis(rng.below(3)));
                    }
                    if queue.push(batch.to_vec()).is_err() {
                        return;
                    }
                }
                queue.finish(Ok(Totals::default()));
            });
            &mut queued
        } else {
            &mut listed
        };
        let job = Job {
            pieces: feed,
            known_zero,
            window,
            marks: Some(&marks),
            shared,
        };
        let result = run(dev, dev, job, reporter, DST);
        queue.close();
        result
    });
    assert_eq!(dev.in_flight(), 0, "run returned with requests in flight");
    if result.is_ok() {
        let end = pieces.last().map_or(0, |p| p.offset + p.len);
        assert_eq!(last.get(), end, "the watermark of a finished run");
    }
    result
}

/// Copies `pieces` with a reporter that only watches; returns the counters, the bytes done
/// and what the device saw.
fn copy_all(
    dev: &Device,
    pieces: &[Piece],
    known_zero: &KnownZero,
    window: Window,
) -> (Counters, u64, Stats) {
    let done = Arc::new(AtomicU64::new(0));
    let mut reporter = reporter(&done, &CancelToken::new(), |_| true);
    let counters = match copy(dev, pieces, known_zero, window, &mut reporter) {
        Ok(counters) => counters,
        Err(e) => panic!("copy failed: {e:?}"),
    };
    (counters, done.load(Ordering::SeqCst), dev.stats())
}

/// Checks a finished copy against its model: the requests, the counters, the destination,
/// no zero block written as data, every request successful.
#[track_caller]
fn check_copy(dev: &Device, pieces: &[Piece], m: &Model, c: &Counters, done: u64, st: &Stats) {
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    assert_eq!(logged_requests(&st.log), m.all_requests(), "requests");
    assert!(st.log.iter().all(|e| e.outcome == Outcome::Done));
    assert_eq!((c.read, c.written, c.zeroed, c.skipped), m.counters());
    assert_eq!(c.written + c.zeroed + c.skipped, total);
    let data: u64 = pieces.iter().filter(|p| p.data).map(|p| p.len).sum();
    assert_eq!(c.read, data);
    assert_eq!(done, total, "progress");
    assert_eq!(
        st.zero_block_writes,
        Vec::<u64>::new(),
        "zero blocks written as data"
    );
    assert_same_image(&dev.dst(), &m.dst, "destination");
}

// ---- The tests ----

#[test]
fn copies_the_diff_with_completions_out_of_order() {
    let (src, extents) = mixed();
    let expected = image_of(&src, &extents);
    let chunk = 128 * KIB;
    let pieces = plan(&extents, chunk);
    // The plan has data and zeroing pieces, some not 4 KiB-aligned, some crossing 2 MiB.
    assert!(pieces.iter().any(|p| !p.data && p.len > MIB));
    assert!(pieces.iter().any(|p| p.data && p.offset % ZERO_BLOCK != 0));
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&src, &pieces, &none);
    // The model agrees with the extents: the source in data, zeros in the rest.
    assert_same_image(&m.dst, &expected, "model");
    // Hand-checked requests: a whole zero chunk, a zero tail shorter than a block, the zero
    // runs around a block whose last byte is set, the zeroed extents merged.
    let all = m.all_requests();
    for req in [
        (Kind::Zero, 256 * KIB, 128 * KIB),
        (Kind::Zero, MIB, 1000),
        (Kind::Zero, MIB - 4 * KIB, 4 * KIB),
        (Kind::Zero, 704 * KIB, 8 * KIB),
        (Kind::Zero, 600 * KIB, 4 * KIB),
        (Kind::Zero, MIB + 1000, 69_000),
        (Kind::Zero, 2 * MIB + 12_345, 2 * MIB - 12_345),
        (Kind::Write, 1536 * KIB + 5, 3),
        (Kind::Write, 5 * MIB + 384 * KIB, 128 * KIB),
    ] {
        assert!(all.contains(&req), "{req:?}");
    }

    for (seed, w) in [
        (1, window(8 * chunk as usize, 16)),
        (2, window(3 * chunk as usize, 3)),
        (3, window(WIDE, 64)),
    ] {
        let dev = Device::new(src.clone(), seed);
        let (c, done, st) = copy_all(&dev, &pieces, &none, w);
        check_copy(&dev, &pieces, &m, &c, done, &st);
        assert_same_image(&dev.dst(), &expected, "destination");
        assert_eq!(
            (c.read, c.skipped),
            (pieces.iter().filter(|p| p.data).map(|p| p.len).sum(), 0)
        );
        // Completions came out of order: some request finished before one submitted earlier.
        let order: Vec<usize> = st.log.iter().map(|e| e.completed.unwrap()).collect();
        assert!(order.windows(2).any(|w| w[0] > w[1]), "{order:?}");
    }
}

#[test]
fn pieces_that_arrive_while_the_copy_runs_are_all_copied_in_order() {
    let (src, extents) = mixed();
    let expected = image_of(&src, &extents);
    let none = KnownZero::Ranges(Vec::new());
    for (seed, chunk, w) in [
        (4, 128 * KIB, window(8 * 128 * KIB as usize, 16)),
        (5, 64 * KIB, window(WIDE, 2)),
        (6, 16 * KIB, window(WIDE, 64)),
    ] {
        let pieces = plan(&extents, chunk);
        let m = Model::new(&src, &pieces, &none);
        let dev = Device::new(src.clone(), seed);
        let done = Arc::new(AtomicU64::new(0));
        let mut reporter = reporter(&done, &CancelToken::new(), |_| true);
        reporter.phase(Phase::Copying);
        let c = copy_fed(
            &dev,
            &pieces,
            &none,
            w,
            Limits::default(),
            &mut reporter,
            true,
        )
        .unwrap_or_else(|e| panic!("copy failed: {e:?}"));
        check_copy(
            &dev,
            &pieces,
            &m,
            &c,
            done.load(Ordering::SeqCst),
            &dev.stats(),
        );
        assert_same_image(&dev.dst(), &expected, "destination");
    }
}

#[test]
fn a_failed_planning_stops_the_copy_with_its_error() {
    let (src, extents) = mixed();
    let pieces = plan(&extents, 64 * KIB);
    let dev = Device::new(src, 7);
    let queue = Queue::default();
    queue.push(pieces[..4].to_vec()).unwrap();
    queue.finish(Err(Error::from_errno(libc::EIO, "the scan failed")));
    let done = Arc::new(AtomicU64::new(0));
    let mut reporter = reporter(&done, &CancelToken::new(), |_| true);
    let none = KnownZero::Ranges(Vec::new());
    let mut feed = &queue;
    let job = Job {
        pieces: &mut feed,
        known_zero: &none,
        window: window(WIDE, 8),
        marks: None,
        shared: Limits::default(),
    };
    let e = run(&dev, &dev, job, &mut reporter, DST).unwrap_err();
    assert_eq!((e.errno(), e.message()), (libc::EIO, "the scan failed"));
    assert_eq!(dev.in_flight(), 0);
    // What was planned before the failure was copied or is in flight no more.
    let started: u64 = pieces[..4].iter().map(|p| p.len).sum();
    assert!(done.load(Ordering::SeqCst) <= started);
}

#[test]
fn known_zero_ranges_need_no_request() {
    let (src, extents) = mixed();
    let pieces = plan(&extents, 128 * KIB);
    let total: u64 = pieces.iter().map(|p| p.len).sum();

    // A created destination: no zeroing at all; the zero runs keep the marker.
    let all = KnownZero::All;
    let m = Model::new(&src, &pieces, &all);
    let dev = Device::new(src.clone(), 4);
    let (c, done, st) = copy_all(&dev, &pieces, &all, window(MIB as usize, 16));
    check_copy(&dev, &pieces, &m, &c, done, &st);
    assert!(st.log.iter().all(|e| e.kind != Kind::Zero));
    assert_eq!(c.zeroed, 0);
    assert_eq!(c.written + c.skipped, total);
    let zero_bytes: u64 = pieces
        .iter()
        .map(|p| {
            if p.data {
                let runs = runs(&src, p.offset, p.len);
                runs.iter().filter(|r| r.2).map(|r| r.1).sum()
            } else {
                p.len
            }
        })
        .sum();
    assert_eq!(c.skipped, zero_bytes);
    let dst = dev.dst();
    assert!(dst[range(256 * KIB, 128 * KIB)]
        .iter()
        .all(|&b| b == MARKER));
    assert!(dst[range(MIB + 1000, 69_000)].iter().all(|&b| b == MARKER));

    // Only inside known ranges: a zero chunk, a zeroed extent and a zero run covered whole are
    // skipped; a zero block and a zeroed piece covered in part are zeroed.
    let known = KnownZero::Ranges(vec![
        (8 * KIB, 2 * KIB),
        (256 * KIB, 128 * KIB),
        (700 * KIB, 12 * KIB),
        (MIB + 1000, 69_000),
        (2 * MIB + 12_345, MIB),
    ]);
    let m = Model::new(&src, &pieces, &known);
    let dev = Device::new(src.clone(), 5);
    let (c, done, st) = copy_all(&dev, &pieces, &known, window(MIB as usize, 16));
    check_copy(&dev, &pieces, &m, &c, done, &st);
    assert_eq!(c.skipped, 128 * KIB + 8 * KIB + 69_000);
    let reqs = logged_requests(&st.log);
    assert!(reqs.contains(&(Kind::Zero, 8 * KIB, 4 * KIB)));
    assert!(reqs.contains(&(Kind::Zero, 2 * MIB + 12_345, 2 * MIB - 12_345)));
    for (off, len) in [
        (256 * KIB, 128 * KIB),
        (704 * KIB, 8 * KIB),
        (MIB + 1000, 69_000),
    ] {
        assert!(
            !reqs.iter().any(|r| r.0 == Kind::Zero && r.1 == off),
            "{off}"
        );
        assert!(dev.dst()[range(off, len)].iter().all(|&b| b == MARKER));
    }
}

#[test]
fn the_request_budget_is_never_exceeded() {
    // 4 KiB of data, 4 KiB of zeros: 256 requests for each 1 MiB piece read.
    let size = 4 * MIB;
    let src = striped(size, 2, 6);
    let extents = [ext(1000, size - 1500, true)];
    let pieces = plan(&extents, MIB);
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&src, &pieces, &none);
    assert!(m.requests[1].len() > 250);
    for (seed, max) in [(7, 4), (8, 16)] {
        let dev = Device::new(src.clone(), seed);
        let (c, done, st) = copy_all(&dev, &pieces, &none, window(WIDE, max));
        check_copy(&dev, &pieces, &m, &c, done, &st);
        assert_same_image(&dev.dst(), &image_of(&src, &extents), "destination");
        assert!(st.peak_in_flight <= max, "{} > {max}", st.peak_in_flight);
        assert_eq!(c.peak_requests, max);
    }

    // Many small data and zeroing pieces: reads and zeroings of pieces count too.
    let (src, extents) = mixed();
    let pieces = plan(&extents, 16 * KIB);
    let m = Model::new(&src, &pieces, &none);
    for (seed, max) in [(24, 1), (25, 4), (26, 16)] {
        let dev = Device::new(src.clone(), seed);
        let (c, done, st) = copy_all(&dev, &pieces, &none, window(WIDE, max));
        check_copy(&dev, &pieces, &m, &c, done, &st);
        assert!(st.peak_in_flight <= max, "{} > {max}", st.peak_in_flight);
        assert_eq!(c.peak_requests, max);
    }
}

#[test]
fn the_byte_budget_is_never_exceeded() {
    let (mixed_src, mixed_extents) = mixed();
    let striped_size = MIB + 5000;
    let striped_src = striped(striped_size, 2, 9);
    let striped_extents = vec![ext(3, striped_size - 3, true)];
    let chunk = 64 * KIB;
    let c64 = chunk as usize;
    let mut seed = 10;
    for (src, extents) in [
        (&mixed_src, &mixed_extents),
        (&striped_src, &striped_extents),
    ] {
        let pieces = plan(extents, chunk);
        let none = KnownZero::Ranges(Vec::new());
        let m = Model::new(src, &pieces, &none);
        for w in [
            window(2 * c64, 64),
            window(3 * c64 - 1, 64),
            window(4 * c64, 2),
            window(4 * c64, 3),
            window(5 * c64 + 4096, 8),
            window(16 * c64, 32),
        ] {
            seed += 1;
            let dev = Device::new(src.clone(), seed);
            let (c, done, st) = copy_all(&dev, &pieces, &none, w);
            check_copy(&dev, &pieces, &m, &c, done, &st);
            assert!(c.peak_held <= w.budget, "{w:?}: held {}", c.peak_held);
            assert!(c.peak_held >= 2 * c64, "{w:?}: held {}", c.peak_held);
            assert!(
                2 * st.peak_read_bytes as usize <= w.budget,
                "{w:?}: {} bytes read at once",
                st.peak_read_bytes
            );
            assert!(st.peak_in_flight <= w.max_requests);
        }
    }

    // Pieces larger than the budget still move, one at a time.
    let pieces = plan(&mixed_extents, MIB);
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&mixed_src, &pieces, &none);
    let dev = Device::new(mixed_src.clone(), 30);
    let (c, done, st) = copy_all(&dev, &pieces, &none, window(c64, 8));
    check_copy(&dev, &pieces, &m, &c, done, &st);
    assert_eq!(c.peak_held, 2 * MIB as usize);
    assert_eq!(st.peak_read_bytes, MIB);
    assert!(st.peak_in_flight <= 8);
}

/// Checks a run that ended with `err` after the device failed one request with `-errno`, in a
/// full window: `op_and_image` is how the error names that request (`"read of image x"`).
#[track_caller]
fn check_failed_run(
    dev: &Device,
    pieces: &[Piece],
    m: &Model,
    err: &Error,
    errno: i32,
    op_and_image: &str,
    done: u64,
) {
    let st = dev.stats();
    assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, errno), "{err:?}");
    let failed: Vec<&Entry> = st
        .log
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Failed(_)))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let failed = failed[0];
    assert_eq!(failed.outcome, Outcome::Failed(-i64::from(errno)));
    let at = format!(
        "{op_and_image} at offset {} (length {})",
        failed.off, failed.len
    );
    assert!(err.to_string().contains(&at), "{err} does not say {at}");
    // Nothing was submitted once the failure was delivered: with the window full then, the
    // engine could start nothing before it received the failure, and nothing after.
    assert_eq!(st.failure_delivered, Some(st.log.len()));
    // Reads that completed after the failure led to no write or zeroing.
    let seq = failed.completed.unwrap();
    let late: Vec<&Entry> = st
        .log
        .iter()
        .filter(|e| e.kind == Kind::Read && e.outcome == Outcome::Done)
        .filter(|e| e.completed.unwrap() > seq)
        .collect();
    assert!(!late.is_empty());
    for read in late {
        assert!(
            !st.log
                .iter()
                .any(|e| e.kind != Kind::Read && e.inside(read.off, read.len)),
            "a write after the late read {read:?}"
        );
    }
    // Progress counted exactly the pieces whose requests all succeeded, not the failed one.
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    assert_eq!(done, m.done_bytes(pieces, &st.log));
    assert!(done < total);
    let piece = pieces
        .iter()
        .position(|p| failed.inside(p.offset, p.len))
        .unwrap();
    let ok: HashSet<Req> = st
        .log
        .iter()
        .filter(|e| e.outcome == Outcome::Done)
        .map(Entry::req)
        .collect();
    assert!(!m.requests[piece].iter().all(|r| ok.contains(r)));
    assert_same_image(&dev.dst(), &replay(dev.src(), &st.log), "destination");
    assert_eq!(st.zero_block_writes, Vec::<u64>::new());
}

#[test]
fn a_failure_in_a_full_window_stops_everything_and_is_returned() {
    // Every fifth block zero: a few writes and zeroings for each 64 KiB piece.
    let size = 3 * MIB;
    let src = striped(size, 5, 12);
    let extents = [ext(0, size, true)];
    let chunk = 64 * KIB;
    let pieces = plan(&extents, chunk);
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&src, &pieces, &none);
    let max = 8;

    // The 13th read fails with EIO.
    let dev = Device::new(src.clone(), 13);
    dev.fail(Rule::NthRead(12), libc::EIO, max);
    let done = Arc::new(AtomicU64::new(0));
    let mut r = reporter(&done, &CancelToken::new(), |_| true);
    let err = copy(&dev, &pieces, &none, window(WIDE, max), &mut r).unwrap_err();
    let done = done.load(Ordering::SeqCst);
    check_failed_run(
        &dev,
        &pieces,
        &m,
        &err,
        libc::EIO,
        "read of image test/src",
        done,
    );
    let st = dev.stats();
    let failed = st.log.iter().find(|e| e.outcome != Outcome::Done).unwrap();
    assert_eq!(
        (failed.kind, failed.off, failed.len),
        (Kind::Read, 12 * chunk, chunk)
    );

    // A write in the 16th piece fails with ENXIO.
    let at = m.requests[15]
        .iter()
        .find(|r| r.0 == Kind::Write)
        .unwrap()
        .1;
    let dev = Device::new(src.clone(), 14);
    dev.fail(Rule::WriteAt(at), libc::ENXIO, max);
    let done = Arc::new(AtomicU64::new(0));
    let mut r = reporter(&done, &CancelToken::new(), |_| true);
    let err = copy(&dev, &pieces, &none, window(WIDE, max), &mut r).unwrap_err();
    let done = done.load(Ordering::SeqCst);
    check_failed_run(
        &dev,
        &pieces,
        &m,
        &err,
        libc::ENXIO,
        "write of image test/dst",
        done,
    );
    assert!(err.to_string().contains(&format!("at offset {at} ")));
}

#[test]
fn a_refused_submission_ends_the_run_with_its_error() {
    let size = 2 * MIB;
    let src = striped(size, 2, 15);
    let extents = [ext(0, size, true)];
    let chunk = 64 * KIB;
    let pieces = plan(&extents, chunk);
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&src, &pieces, &none);
    let write_at = m.requests[10][3].1;
    assert_eq!(m.requests[10][3].0, Kind::Write);

    for (seed, rule, errno, what, off) in [
        (
            16,
            Rule::WriteAt(write_at),
            libc::EROFS,
            "write of image test/dst",
            write_at,
        ),
        (
            17,
            Rule::NthRead(5),
            libc::ENOMEM,
            "read of image test/src",
            5 * chunk,
        ),
    ] {
        let dev = Device::new(src.clone(), seed);
        dev.refuse(rule, errno);
        let done = Arc::new(AtomicU64::new(0));
        let mut r = reporter(&done, &CancelToken::new(), |_| true);
        let err = copy(&dev, &pieces, &none, window(WIDE, 4), &mut r).unwrap_err();
        assert_eq!((err.kind(), err.errno()), (ErrorKind::Io, errno), "{err:?}");
        assert!(
            err.to_string()
                .contains(&format!("{what} at offset {off} ")),
            "{err}"
        );
        let st = dev.stats();
        // Nothing was submitted after the refusal.
        let last = st.log.last().unwrap();
        assert_eq!(
            (last.off, last.outcome),
            (off, Outcome::Refused),
            "{:?}",
            st.log
        );
        assert_eq!(
            st.log
                .iter()
                .filter(|e| e.outcome == Outcome::Refused)
                .count(),
            1
        );
        assert!(st.log.iter().all(|e| e.outcome != Outcome::InFlight));
        let done = done.load(Ordering::SeqCst);
        assert_eq!(done, m.done_bytes(&pieces, &st.log));
        let refused_piece = (off / chunk) as usize;
        assert!(done <= size - pieces[refused_piece].len);
        assert_same_image(&dev.dst(), &replay(&src, &st.log), "destination");
    }
}

/// Checks a run stopped when `submitted_at_stop` requests had been submitted.
#[track_caller]
fn check_stopped_run(dev: &Device, err: &Error, why: &str, submitted_at_stop: usize) {
    assert_eq!(
        (err.kind(), err.errno()),
        (ErrorKind::Cancelled, libc::ECANCELED),
        "{err:?}"
    );
    assert!(err.to_string().contains(why), "{err}");
    assert_eq!(err.image(), Some(DST));
    let st = dev.stats();
    assert!(submitted_at_stop > 0);
    assert_eq!(
        st.log.len(),
        submitted_at_stop,
        "requests started after the stop"
    );
    assert!(st.log.iter().all(|e| e.outcome == Outcome::Done));
    assert_same_image(&dev.dst(), &replay(dev.src(), &st.log), "destination");
}

fn stop_source() -> (Vec<u8>, Vec<Piece>, Model) {
    let size = 3 * MIB;
    let src = striped(size, 3, 18);
    let pieces = plan(&[ext(0, size, true)], 64 * KIB);
    let m = Model::new(&src, &pieces, &KnownZero::Ranges(Vec::new()));
    (src, pieces, m)
}

#[test]
fn cancelling_the_token_stops_the_run() {
    let (src, pieces, m) = stop_source();
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let dev = Device::new(src, 19);
    let token = CancelToken::new();
    let at_stop = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut r = {
        let (token, at_stop, probe) = (token.clone(), at_stop.clone(), dev.probe());
        reporter(&done, &token.clone(), move |p| {
            if p.bytes_done >= total / 3 && !token.is_cancelled() {
                at_stop.store(submitted(&probe), Ordering::SeqCst);
                token.cancel();
            }
            true
        })
    };
    let none = KnownZero::Ranges(Vec::new());
    let err = copy(&dev, &pieces, &none, window(WIDE, 8), &mut r).unwrap_err();
    check_stopped_run(&dev, &err, "cancelled", at_stop.load(Ordering::SeqCst));
    let done = done.load(Ordering::SeqCst);
    assert!(done >= total / 3 && done < total, "{done}");
    assert_eq!(done, m.done_bytes(&pieces, &dev.stats().log));
}

#[test]
fn a_panicking_callback_stops_the_run_and_its_panic_is_kept() {
    let (src, pieces, _) = stop_source();
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let dev = Device::new(src, 20);
    let at_stop = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut r = {
        let (at_stop, probe) = (at_stop.clone(), dev.probe());
        reporter(&done, &CancelToken::new(), move |p| {
            if p.bytes_done >= total / 4 {
                at_stop.store(submitted(&probe), Ordering::SeqCst);
                panic!("boom");
            }
            true
        })
    };
    let none = KnownZero::Ranges(Vec::new());
    let err = copy(&dev, &pieces, &none, window(WIDE, 8), &mut r).unwrap_err();
    check_stopped_run(
        &dev,
        &err,
        "stopped: the progress callback panicked",
        at_stop.load(Ordering::SeqCst),
    );
    let done = done.load(Ordering::SeqCst);
    assert!(done >= total / 4 && done < total, "{done}");
    let panic = r.take_panic().expect("the panic is kept");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"boom"));
}

#[test]
fn a_callback_returning_false_stops_the_run() {
    let (src, pieces, m) = stop_source();
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let dev = Device::new(src, 21);
    let at_stop = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut r = {
        let (at_stop, probe) = (at_stop.clone(), dev.probe());
        reporter(&done, &CancelToken::new(), move |p| {
            if p.bytes_done < total / 2 {
                return true;
            }
            if at_stop.load(Ordering::SeqCst) == 0 {
                at_stop.store(submitted(&probe), Ordering::SeqCst);
            }
            false
        })
    };
    let none = KnownZero::Ranges(Vec::new());
    let err = copy(&dev, &pieces, &none, window(WIDE, 8), &mut r).unwrap_err();
    check_stopped_run(
        &dev,
        &err,
        "stopped by the progress callback",
        at_stop.load(Ordering::SeqCst),
    );
    let done = done.load(Ordering::SeqCst);
    assert!(done >= total / 2 && done < total, "{done}");
    assert_eq!(done, m.done_bytes(&pieces, &dev.stats().log));
    assert!(r.take_panic().is_none());
}

#[test]
fn a_stop_while_starting_pieces_starts_nothing_more() {
    // A known-zero piece is settled while pieces are being started; the callback it calls
    // says stop: the data pieces after it are not started.
    let chunk = 64 * KIB;
    let src = random_bytes(4 * chunk, 22);
    let pieces = plan(
        &[
            ext(0, chunk, true),
            ext(chunk, chunk, false),
            ext(2 * chunk, 2 * chunk, true),
        ],
        chunk,
    );
    assert_eq!(pieces.len(), 4);
    let known = KnownZero::Ranges(vec![(chunk, chunk)]);
    let dev = Device::new(src, 23);
    let done = Arc::new(AtomicU64::new(0));
    let mut r = reporter(&done, &CancelToken::new(), |p| p.bytes_done == 0);
    let err = copy(&dev, &pieces, &known, window(WIDE, 8), &mut r).unwrap_err();
    check_stopped_run(&dev, &err, "stopped by the progress callback", 1);
    let st = dev.stats();
    assert_eq!(st.log[0].req(), (Kind::Read, 0, chunk));
    // The read that completed after the stop wrote nothing.
    assert!(dev.dst().iter().all(|&b| b == MARKER));
    assert_eq!(done.load(Ordering::SeqCst), chunk);
}

#[test]
fn engines_sharing_a_budget_stay_within_it_together_and_all_finish() {
    let (src, extents) = mixed();
    let chunk = 64 * KIB;
    let c64 = chunk as usize;
    let pieces = plan(&extents, chunk);
    let none = KnownZero::Ranges(Vec::new());
    let m = Model::new(&src, &pieces, &none);
    // Each engine's own window is the whole budget: only the sharing holds them back.
    let (bytes, requests) = (5 * c64, 10);
    let budget = Budget::new(bytes, requests);
    thread::scope(|s| {
        let engines: Vec<_> = (0..4u64)
            .map(|k| {
                let (budget, src, pieces, none, m) = (&budget, &src, &pieces, &none, &m);
                s.spawn(move || {
                    let dev = Device::new(src.clone(), 40 + k);
                    let done = Arc::new(AtomicU64::new(0));
                    let mut r = reporter(&done, &CancelToken::new(), |_| true);
                    let shared = Limits {
                        budget: Some(budget),
                        rates: &[],
                    };
                    let w = window(bytes, requests);
                    let c = match copy_shared(&dev, pieces, none, w, shared, &mut r) {
                        Ok(c) => c,
                        Err(e) => panic!("engine {k}: {e:?}"),
                    };
                    let st = dev.stats();
                    check_copy(&dev, pieces, m, &c, done.load(Ordering::SeqCst), &st);
                    assert!(2 * st.peak_read_bytes as usize <= bytes);
                })
            })
            .collect();
        for e in engines {
            e.join().expect("an engine finished");
        }
    });
    let (peak_bytes, peak_requests) = budget.peaks();
    assert!(peak_bytes <= bytes, "{peak_bytes} held at once");
    assert!(peak_bytes >= 2 * c64, "{peak_bytes}");
    assert!(
        peak_requests <= requests,
        "{peak_requests} requests at once"
    );
    assert_eq!(budget.used(), (0, 0), "everything given back");
}

#[test]
fn a_rate_limited_engine_waits_for_its_bytes_and_still_stops() {
    let size = 4 * MIB;
    let src = random_bytes(size, 50);
    let pieces = plan(&[ext(0, size, true)], 256 * KIB);
    let none = KnownZero::Ranges(Vec::new());
    // 16 MiB/s, a burst of 0.8 MiB: the last of the 16 pieces of 256 KiB may be read 0.2 s
    // after the first.
    let rate = RateLimit::new(16 * MIB);
    let rates = [&rate];
    let dev = Device::new(src.clone(), 51);
    let done = Arc::new(AtomicU64::new(0));
    let mut r = reporter(&done, &CancelToken::new(), |_| true);
    let shared = Limits {
        budget: None,
        rates: &rates,
    };
    let started = Instant::now();
    copy_shared(&dev, &pieces, &none, window(WIDE, 64), shared, &mut r).expect("copied");
    assert!(
        started.elapsed() >= Duration::from_millis(180),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(dev.dst(), src);

    // Stopped while it waits for the rate: at 1 MiB/s its 4 MiB would take 4 s, the stop
    // comes after 0.3 s; it returns Cancelled without reading the rest.
    let rate = RateLimit::new(MIB);
    let rates = [&rate];
    let dev = Device::new(src.clone(), 52);
    let token = CancelToken::new();
    let mut r = reporter(&done, &token, |_| true);
    let shared = Limits {
        budget: None,
        rates: &rates,
    };
    let stopper = {
        let token = token.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            token.cancel();
        })
    };
    let err = copy_shared(&dev, &pieces, &none, window(WIDE, 64), shared, &mut r).unwrap_err();
    stopper.join().unwrap();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let read: u64 = dev
        .stats()
        .log
        .iter()
        .filter(|e| e.kind == Kind::Read)
        .map(|e| e.len)
        .sum();
    assert!(
        read < size,
        "stopped in its wait for the rate: {read} of {size} read"
    );
}
