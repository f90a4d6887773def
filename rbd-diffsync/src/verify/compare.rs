//! The comparison of two images range by range: both read with a window of requests in
//! flight, and compared byte for byte; the first difference is the one reported.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use crate::copy::engine::{self, Completion, DiffSource, Done, Window};
use crate::copy::rate::RateLimit;
use crate::error::{Error, Result};
use crate::plan::{self, DiffExtent, Piece};
use crate::progress::{Phase, Reporter};

/// What [`compare`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Compared {
    /// Bytes compared (of each side).
    pub bytes: u64,
    /// The lowest offset at which the sides differ, if they do.
    pub first_difference: Option<u64>,
    /// With [`Compare::All`], the chunks that differ, in order.
    pub differing: Vec<(u64, u64)>,
}

/// How far a comparison goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compare {
    /// To the first difference: then nothing more is started.
    First,
    /// Over every range, keeping every chunk that differs.
    All,
}

/// A chunk being compared: its two reads, then the comparison.
struct Pair {
    offset: u64,
    len: usize,
    bufs: [Vec<u8>; 2],
    /// Reads not yet completed.
    pending: u8,
    failed: bool,
}

/// What a chunk holds of the budget: both buffers, and librados's while they are read.
pub(crate) fn chunk_charge(len: usize) -> usize {
    4 * len
}

/// The comparison's state. Its `Drop` waits for every read still in flight, so that no buffer
/// is freed while librbd may still write into it, even when unwinding from a panic.
struct Comparison<'a> {
    sides: [&'a dyn DiffSource; 2],
    tx: Sender<Done>,
    rx: Receiver<Done>,
    /// Chunks in flight by slot; a read's token is `2 × slot + side`.
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    /// Buffers of compared chunks, for the next ones.
    spare: Vec<Vec<u8>>,
    spare_bytes: usize,
    window: Window,
    charged: usize,
    in_flight: usize,
    compared: u64,
    first_difference: Option<u64>,
    /// With [`Compare::All`], the chunks that differ (in the order their reads ended).
    differing: Option<Vec<(u64, u64)>>,
    /// The first failure, and the offset of its chunk.
    error: Option<(u64, Error)>,
}

impl Drop for Comparison<'_> {
    fn drop(&mut self) {
        engine::drain(&self.rx, &mut self.in_flight);
    }
}

impl Comparison<'_> {
    fn fail(&mut self, offset: u64, e: Error) {
        if self.error.as_ref().is_none_or(|(at, _)| offset < *at) {
            self.error = Some((offset, e));
        }
    }

    /// Whether to start nothing more: a difference or an error is found, or a stop asked.
    fn halted(&self, stopping: bool) -> bool {
        stopping
            || self.error.is_some()
            || (self.differing.is_none() && self.first_difference.is_some())
    }

    /// Whether a chunk of `len` may start now; with nothing in flight there is always room.
    /// Spare buffers do not count: they are reused, or freed to make room (see `buffer`).
    fn has_room(&self, len: usize) -> bool {
        self.in_flight == 0
            || (self.in_flight + 2 <= self.window.max_requests
                && self.charged + chunk_charge(len) <= self.window.budget)
    }

    /// A buffer with room for `len` bytes: a spare one of about that size, or a new one.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self
            .spare
            .iter()
            .rposition(|b| b.capacity() >= len && b.capacity() / 2 <= len)
        {
            Some(k) => {
                let buf = self.spare.swap_remove(k);
                self.spare_bytes -= buf.capacity();
                buf
            }
            None => {
                // Room for the new one: spares that do not fit go.
                while !self.spare.is_empty()
                    && self.charged + self.spare_bytes + chunk_charge(len) > self.window.budget
                {
                    let buf = self.spare.pop().expect("not empty");
                    self.spare_bytes -= buf.capacity();
                }
                Vec::with_capacity(len)
            }
        }
    }

    fn start(&mut self, piece: Piece) {
        let len = piece.len as usize;
        let bufs = [self.buffer(len), self.buffer(len)];
        let slot = self.free.pop().unwrap_or_else(|| {
            self.pairs.push(None);
            self.pairs.len() - 1
        });
        self.charged += chunk_charge(len);
        let pair = self.pairs[slot].insert(Pair {
            offset: piece.offset,
            len,
            bufs,
            pending: 0,
            failed: false,
        });
        let mut refused = None;
        for side in 0..2 {
            let done = Completion::new(self.tx.clone(), (2 * slot + side) as u64);
            let buf = pair.bufs[side].as_mut_ptr();
            // SAFETY: the buffer is neither touched nor freed until this read's completion has
            // been received: the pair stays in `pairs` while a read is pending, and `Drop`
            // drains before `pairs` goes. The read fills its spare capacity of `len` bytes.
            match unsafe { self.sides[side].start_read(piece.offset, len, buf, done) } {
                Ok(()) => {
                    pair.pending += 1;
                    self.in_flight += 1;
                }
                Err(e) => {
                    pair.failed = true;
                    refused = Some(e);
                }
            }
        }
        if let Some(e) = refused {
            self.fail(piece.offset, e);
        }
        if self.pairs[slot].as_ref().is_some_and(|p| p.pending == 0) {
            self.finish(slot);
        }
    }

    /// Handles one completion; returns the bytes of a chunk compared with it.
    fn complete(&mut self, done: Done) -> u64 {
        self.in_flight -= 1;
        let (slot, side) = ((done.token / 2) as usize, (done.token % 2) as usize);
        let pair = self.pairs[slot]
            .as_mut()
            .expect("a completion arrives once for a started read");
        pair.pending -= 1;
        let (offset, len) = (pair.offset, pair.len);
        if done.ret == len as i64 {
            // SAFETY: the read reported all `len` bytes written into the buffer, whose
            // capacity is at least that.
            unsafe { pair.bufs[side].set_len(len) };
        } else {
            pair.failed = true;
            let ret = if done.ret < 0 {
                done.ret
            } else {
                -(libc::EIO as i64)
            };
            let e = self.sides[side].read_error(offset, len as u64, ret);
            self.fail(offset, e);
        }
        if self.pairs[slot].as_ref().is_some_and(|p| p.pending > 0) {
            return 0;
        }
        self.finish(slot)
    }

    /// Compares the chunk in `slot`, whose reads are over, and frees the slot; returns its
    /// bytes if both reads succeeded.
    fn finish(&mut self, slot: usize) -> u64 {
        let Pair {
            offset,
            len,
            bufs,
            failed,
            ..
        } = self.pairs[slot].take().expect("a chunk in flight");
        self.free.push(slot);
        self.charged -= chunk_charge(len);
        let [a, b] = bufs;
        let compared = if failed {
            0
        } else {
            if a != b {
                let at = offset + a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0) as u64;
                self.first_difference = Some(self.first_difference.map_or(at, |f| f.min(at)));
                if let Some(differing) = &mut self.differing {
                    differing.push((offset, len as u64));
                }
            }
            self.compared += len as u64;
            len as u64
        };
        for mut buf in [a, b] {
            let cap = buf.capacity();
            if self.charged + self.spare_bytes + cap <= self.window.budget {
                buf.clear();
                self.spare.push(buf);
                self.spare_bytes += cap;
            }
        }
        compared
    }
}

/// How a comparison reads: in chunks of at most `chunk` bytes, within `window`, the reads of
/// the first image held back by `rates`.
#[derive(Clone, Copy)]
pub(crate) struct Reads<'a> {
    pub chunk: u64,
    pub window: Window,
    pub rates: &'a [&'a RateLimit],
}

/// Reads `ranges` (sorted, disjoint) from both sides, in chunks of at most `chunk` bytes and as
/// many at a time as `window` allows, and compares them, reporting compared bytes to
/// `reporter`. At the first difference nothing more is started, but every chunk in flight is
/// still compared: chunks start in order, so the lowest difference found is the first. A read
/// that fails before that offset is the error; a stop is one too (naming `label`).
pub(crate) fn compare(
    sides: [&dyn DiffSource; 2],
    ranges: &[(u64, u64)],
    reads: Reads<'_>,
    how: Compare,
    reporter: &mut Reporter,
    label: &str,
) -> Result<Compared> {
    let Reads {
        chunk,
        window,
        rates,
    } = reads;
    let pieces = chunks(ranges, chunk);
    let mut c = Comparison::new(sides, window, how);
    let mut stopping = false;
    let mut next = 0;
    // The chunk whose bytes the rate limits have reserved, and from when it may be read.
    let mut reserved: Option<(usize, Instant)> = None;
    loop {
        if !stopping && reporter.stop().is_some() {
            stopping = true;
        }
        let rate_wait = c.start_chunks(&pieces, &mut next, rates, &mut reserved, stopping);
        if c.in_flight == 0 && rate_wait.is_none() {
            break;
        }
        c.wait(rate_wait, rates, reporter, label);
    }
    reporter.waiting_for(None);
    c.outcome(how, stopping, reporter, label)
}

/// `ranges` (sorted, disjoint) cut into chunks of at most `chunk` bytes.
fn chunks(ranges: &[(u64, u64)], chunk: u64) -> Vec<Piece> {
    let extents: Vec<DiffExtent> = ranges
        .iter()
        .map(|&(offset, len)| DiffExtent {
            offset,
            len,
            exists: true,
        })
        .collect();
    plan::pieces(&extents, chunk, chunk)
}

impl<'a> Comparison<'a> {
    /// The state of a comparison of `sides` within `window`, going as far as `how` says.
    fn new(sides: [&'a dyn DiffSource; 2], window: Window, how: Compare) -> Comparison<'a> {
        let (tx, rx) = mpsc::channel();
        Comparison {
            sides,
            tx,
            rx,
            pairs: Vec::new(),
            free: Vec::new(),
            spare: Vec::new(),
            spare_bytes: 0,
            window: Window {
                max_requests: window.max_requests.max(2),
                ..window
            },
            charged: 0,
            in_flight: 0,
            compared: 0,
            first_difference: None,
            differing: (how == Compare::All).then(Vec::new),
            error: None,
        }
    }
}

impl Comparison<'_> {
    /// Starts `pieces` from `next` on while there is room and nothing halts the comparison,
    /// moving `next` past those started. Returns when the rate limits let the next one go if
    /// they hold it back; `reserved` is the chunk whose bytes they have reserved, and from
    /// when it may be read.
    fn start_chunks(
        &mut self,
        pieces: &[Piece],
        next: &mut usize,
        rates: &[&RateLimit],
        reserved: &mut Option<(usize, Instant)>,
        stopping: bool,
    ) -> Option<Instant> {
        while !self.halted(stopping)
            && *next < pieces.len()
            && self.has_room(pieces[*next].len as usize)
        {
            if !rates.is_empty() {
                let ready = match *reserved {
                    Some((i, ready)) if i == *next => ready,
                    _ => engine::rate_ready(rates, pieces[*next].len),
                };
                *reserved = Some((*next, ready));
                if Instant::now() < ready {
                    return Some(ready);
                }
            }
            self.start(pieces[*next]);
            *next += 1;
        }
        None
    }

    /// Waits for the next read to complete (until `rate_wait` at most, when `rates` hold the
    /// next chunk back) and handles it, reporting to `reporter` the bytes of a chunk it ends.
    fn wait(
        &mut self,
        rate_wait: Option<Instant>,
        rates: &[&RateLimit],
        reporter: &mut Reporter,
        label: &str,
    ) {
        let what = || format!("the cluster to complete the reads in flight of {label}");
        let done = match rate_wait {
            Some(ready) => engine::completion_or_rate(&self.rx, ready, rates, reporter),
            None => engine::next_completion(&self.rx, reporter, what),
        };
        if let Some(done) = done {
            let bytes = self.complete(done);
            if bytes > 0 {
                reporter.advance(bytes);
            }
        }
    }

    /// What the comparison found, once nothing is in flight: the first difference, or a
    /// failed read before it (any failed read with [`Compare::All`]), or a stop (naming
    /// `label`).
    fn outcome(
        &mut self,
        how: Compare,
        stopping: bool,
        reporter: &mut Reporter,
        label: &str,
    ) -> Result<Compared> {
        let first_difference = self.first_difference;
        let mut differing = self.differing.take().unwrap_or_default();
        differing.sort_unstable();
        let compared = Compared {
            bytes: self.compared,
            first_difference,
            differing,
        };
        match self.error.take() {
            Some((at, e)) if how == Compare::All || first_difference.is_none_or(|d| at < d) => {
                Err(e)
            }
            _ if first_difference.is_some() && how == Compare::First => Ok(compared),
            _ if stopping => Err(reporter.stopped_error(label)),
            _ => Ok(compared),
        }
    }
}

/// A transfer's check of what it wrote: `ranges`, read from `source` (at its end snapshot) and
/// from `dest` (at HEAD, after the writes) as `reads` says, compared. Returns the bytes
/// compared; a difference is an error naming `dest` (`label`) and the first offset that
/// differs.
pub(crate) fn written(
    [source, dest]: [(&dyn DiffSource, &str); 2],
    ranges: &[(u64, u64)],
    reads: Reads<'_>,
    reporter: &mut Reporter,
    label: &str,
) -> Result<u64> {
    let ranges = plan::union(ranges, &[]);
    reporter.restart(Phase::Verifying, ranges.iter().map(|r| r.1).sum());
    let compared = compare(
        [source.0, dest.0],
        &ranges,
        reads,
        Compare::First,
        reporter,
        label,
    )?;
    match compared.first_difference {
        None => Ok(compared.bytes),
        Some(offset) => Err(Error::mismatch(
            dest.1,
            offset,
            format!(
                "verification of the transfer into {label} failed: {} and {label} differ at \
                 offset {offset}; no end snapshot was created, run the transfer again: it \
                 rewrites from there on",
                source.1
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::progress::CancelToken;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An image in memory whose reads complete on their own threads, later ones first.
    struct Memory {
        data: Vec<u8>,
        reads: AtomicUsize,
        fail_at: Option<u64>,
    }

    struct Ptr(*mut u8);
    // SAFETY: the pointer is only written through by the one thread the read runs on, while
    // the caller keeps the buffer alive (the `start_read` contract).
    unsafe impl Send for Ptr {}

    impl Memory {
        fn new(data: Vec<u8>) -> Memory {
            Memory {
                data,
                reads: AtomicUsize::new(0),
                fail_at: None,
            }
        }
    }

    impl DiffSource for Memory {
        unsafe fn start_read(
            &self,
            off: u64,
            len: usize,
            buf: *mut u8,
            done: Completion,
        ) -> Result<()> {
            let n = self.reads.fetch_add(1, Ordering::Relaxed);
            let data = self.data[off as usize..off as usize + len].to_vec();
            let fail = self
                .fail_at
                .is_some_and(|at| at >= off && at < off + len as u64);
            let buf = Ptr(buf);
            std::thread::spawn(move || {
                let buf = buf;
                std::thread::sleep(Duration::from_millis(20u64.saturating_sub(n as u64 % 20)));
                if fail {
                    return done.complete(-(libc::EIO as i64));
                }
                // SAFETY: the caller keeps `buf` valid for `len` bytes until `done` completes.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), buf.0, len) };
                done.complete(len as i64);
            });
            Ok(())
        }

        fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
            Error::io("read", "mem", off, len, ret)
        }
    }

    fn reporter() -> Reporter {
        Reporter::new(
            None,
            Duration::from_millis(10),
            CancelToken::new(),
            Instant::now(),
        )
    }

    /// Reads of 4 KiB in a window of 64 KiB.
    fn reads<'a>(rates: &'a [&'a RateLimit]) -> Reads<'a> {
        Reads {
            chunk: 4096,
            window: Window {
                budget: 64 << 10,
                max_requests: 8,
            },
            rates,
        }
    }

    fn run(a: &Memory, b: &Memory, ranges: &[(u64, u64)]) -> Result<Compared> {
        compare(
            [a, b],
            ranges,
            reads(&[]),
            Compare::First,
            &mut reporter(),
            "mem",
        )
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn equal_ranges_compare_equal_and_count_their_bytes() {
        let a = Memory::new(pattern(1 << 20));
        let b = Memory::new(pattern(1 << 20));
        let got = run(&a, &b, &[(0, 10_000), (65_536, 300_000)]).unwrap();
        assert_eq!(got.bytes, 310_000);
        assert_eq!(got.first_difference, None);
    }

    #[test]
    fn the_first_difference_is_found_whatever_order_reads_complete_in() {
        let a = Memory::new(pattern(1 << 20));
        let mut data = pattern(1 << 20);
        for at in [500_001, 200_003, 900_000] {
            data[at] ^= 1;
        }
        let b = Memory::new(data);
        let got = run(&a, &b, &[(0, 1 << 20)]).unwrap();
        assert_eq!(got.first_difference, Some(200_003));
        // Outside the ranges compared, differences are not seen.
        let got = run(&a, &b, &[(0, 200_000), (300_000, 100_000)]).unwrap();
        assert_eq!(got.first_difference, None);
    }

    #[test]
    fn a_failed_read_before_the_difference_is_the_error() {
        let a = Memory::new(pattern(1 << 20));
        let mut data = pattern(1 << 20);
        data[600_000] ^= 1;
        let mut b = Memory::new(data);
        b.fail_at = Some(100_000);
        let e = run(&a, &b, &[(0, 1 << 20)]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
        b.fail_at = Some(700_000);
        let got = run(&a, &b, &[(0, 1 << 20)]).unwrap();
        assert_eq!(got.first_difference, Some(600_000));
    }

    #[test]
    fn a_cancelled_comparison_stops() {
        let a = Memory::new(pattern(1 << 20));
        let b = Memory::new(pattern(1 << 20));
        let token = CancelToken::new();
        token.cancel();
        let mut reporter = Reporter::new(None, Duration::from_millis(10), token, Instant::now());
        reporter.verification();
        let e = compare(
            [&a, &b],
            &[(0, 1 << 20)],
            reads(&[]),
            Compare::First,
            &mut reporter,
            "x",
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert!(
            e.to_string().starts_with("verification of x cancelled"),
            "{e}"
        );
        assert_eq!(a.reads.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_rate_limit_holds_back_the_reads_of_the_source() {
        let a = Memory::new(pattern(1 << 20));
        let b = Memory::new(pattern(1 << 20));
        // 4 MiB/s with a burst of 204.8 KiB: 1 MiB of the source takes 0.2 s at least.
        let rate = RateLimit::new(4 << 20);
        let started = Instant::now();
        let got = compare(
            [&a, &b],
            &[(0, 1 << 20)],
            reads(&[&rate]),
            Compare::First,
            &mut reporter(),
            "mem",
        )
        .unwrap();
        assert_eq!((got.bytes, got.first_difference), (1 << 20, None));
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        // Stopped while it waits for the rate.
        let (a, b) = (Memory::new(pattern(1 << 20)), Memory::new(pattern(1 << 20)));
        let rate = RateLimit::new(64 << 10);
        let token = CancelToken::new();
        let stopper = {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                token.cancel();
            })
        };
        let mut reporter = Reporter::new(None, Duration::from_millis(10), token, Instant::now());
        let e = compare(
            [&a, &b],
            &[(0, 1 << 20)],
            reads(&[&rate]),
            Compare::First,
            &mut reporter,
            "x",
        )
        .unwrap_err();
        stopper.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::Cancelled);
        assert!(
            a.reads.load(Ordering::Relaxed) < 256,
            "not every chunk was read"
        );
    }
}
