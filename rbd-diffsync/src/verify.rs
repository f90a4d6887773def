//! Verification: both images read with a window of requests in flight, and compared byte for
//! byte; ranges that neither image has allocated read as zeros on both, and are not read.

use std::panic::resume_unwind;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::RateLimit;
use crate::cluster::Cluster;
use crate::engine::{self, Completion, DiffSource, Done, Window};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::plan::{self, DiffExtent, Piece};
use crate::progress::{
    per_second, CancelToken, Phase, Progress, ProgressFlow, ProgressFn, Reporter,
};
use crate::spec::{ClusterSpec, ImageSpec};
use crate::transfer::{self, DEFAULT_CHUNK_SIZE, DEFAULT_WINDOW};

/// A comparison of two images, each at a snapshot (or HEAD), on the same cluster or on two:
/// what `rbd export A@S - | md5sum` and `rbd export B@S - | md5sum` tell, with many reads in
/// flight, without reading what neither image has allocated, and naming the first byte that
/// differs.
///
/// ```no_run
/// use rbd_diffsync::{ClusterSpec, ErrorKind, Verify};
///
/// let result = Verify::new("volumes/vol-1@snap2".parse()?, "backups/vol-1.backup@snap2".parse()?)
///     .cluster(ClusterSpec::new().conf("/etc/ceph/ceph.conf"))
///     .dest_cluster(ClusterSpec::new().conf("/etc/ceph/backup.conf"))
///     .run();
/// match result {
///     Ok(stats) => println!("equal: {} bytes compared", stats.bytes_compared),
///     Err(e) if e.kind() == ErrorKind::Mismatch => println!("differ at {:?}", e.offset()),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), rbd_diffsync::Error>(())
/// ```
pub struct Verify {
    a: ImageSpec,
    b: ImageSpec,
    cluster: ClusterSpec,
    dest_cluster: Option<ClusterSpec>,
    chunk_size: u64,
    window: usize,
    progress: Option<ProgressFn>,
    progress_interval: Duration,
    cancel: CancelToken,
}

impl std::fmt::Debug for Verify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verify")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("cluster", &self.cluster)
            .field("dest_cluster", &self.dest_cluster)
            .field("chunk_size", &self.chunk_size)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// What a verification that found both images equal did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct VerifyStats {
    /// The first image, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: String,
    /// The second image, likewise.
    pub dest: String,
    /// The size of both.
    pub image_size: u64,
    /// Bytes read from each image and compared.
    pub bytes_compared: u64,
    /// Bytes allocated on neither image, which read as zeros on both and were not read.
    pub bytes_skipped: u64,
    /// Wall time, connecting included.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::progress::seconds"))]
    pub elapsed: Duration,
}

impl VerifyStats {
    /// Image bytes verified per second of wall time.
    pub fn throughput(&self) -> f64 {
        per_second(self.image_size, self.elapsed)
    }
}

impl Verify {
    /// Compares image `a` with image `b` (`pool[/ns]/image[@snap]`; without `@snap`, HEAD).
    pub fn new(a: ImageSpec, b: ImageSpec) -> Self {
        Verify {
            a,
            b,
            cluster: ClusterSpec::default(),
            dest_cluster: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: DEFAULT_WINDOW,
            progress: None,
            progress_interval: Duration::from_millis(200),
            cancel: CancelToken::new(),
        }
    }

    /// The cluster of `a`, and of `b` unless [`dest_cluster`](Self::dest_cluster) says
    /// otherwise.
    pub fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.cluster = spec;
        self
    }

    /// The cluster of `b`, when it is not that of `a`.
    pub fn dest_cluster(mut self, spec: ClusterSpec) -> Self {
        self.dest_cluster = Some(spec);
        self
    }

    /// The largest read, in bytes: a multiple of 4 KiB (default 2 MiB).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// The window of reads in flight, as a number of chunks (default 16): at most
    /// `window × chunk_size` bytes are held at once, librados's receive buffers included, so
    /// `window / 4` chunks of each image are compared at a time (smaller ranges share that).
    pub fn window(mut self, chunks: usize) -> Self {
        self.window = chunks;
        self
    }

    /// Called on the thread running the verification, as
    /// [`DiffTransfer::on_progress`](crate::DiffTransfer::on_progress) is: in every phase,
    /// at most every [`progress_interval`](Self::progress_interval); `Break` or a panic stops
    /// it.
    pub fn on_progress<R: ProgressFlow>(
        mut self,
        mut f: impl FnMut(&Progress) -> R + Send + 'static,
    ) -> Self {
        self.progress = Some(Box::new(move |p| f(p).keep_going()));
        self
    }

    /// The least time between two progress calls (default 200 ms).
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// A token another thread may use to cancel the verification.
    pub fn cancel_token(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// Compares the images. An image read at HEAD while another client writes it may of
    /// course differ. `Ok` when they are equal; an error of kind
    /// [`Mismatch`](crate::ErrorKind::Mismatch) naming the first byte that differs
    /// ([`Error::offset`]), or saying that their sizes differ, when they are not.
    pub fn run(mut self) -> Result<VerifyStats> {
        let started = Instant::now();
        transfer::check_io_settings(self.chunk_size, self.window)?;
        let mut reporter = Reporter::new(
            self.progress.take(),
            self.progress_interval,
            self.cancel.clone(),
            started,
        );
        reporter.verification();
        let result = self.verify(&mut reporter, started);
        if let Some(panic) = reporter.take_panic() {
            resume_unwind(panic);
        }
        result
    }

    fn verify(&self, reporter: &mut Reporter, started: Instant) -> Result<VerifyStats> {
        let label = self.b.to_string();
        reporter.phase(Phase::Connecting);
        let cluster_a = transfer::connect_cluster(reporter, &label, &self.cluster)?;
        let cluster_b = match &self.dest_cluster {
            Some(spec) if *spec != self.cluster => {
                transfer::connect_cluster(reporter, &label, spec)?
            }
            _ => cluster_a.clone(),
        };
        let (a, size_a) = open(reporter, &label, &cluster_a, &self.a)?;
        let (b, size_b) = open(reporter, &label, &cluster_b, &self.b)?;
        if size_a != size_b {
            return Err(Error::mismatch(
                b.path(),
                size_a.min(size_b),
                format!(
                    "{} and {} differ: their sizes differ ({size_a} and {size_b} bytes)",
                    a.label(),
                    b.label()
                ),
            ));
        }

        reporter.phase(Phase::Scanning);
        let stop = reporter.stop_check();
        let (scan_a, scan_b) = (a.clone(), b.clone());
        let what = format!("the allocated ranges of {} and {}", a.label(), b.label());
        let ranges = transfer::detached(reporter, &label, what, move || {
            // Both at once: they may be on two clusters.
            std::thread::scope(|s| {
                let other = s
                    .spawn(|| crate::protocol::rbd::allocated_ranges(&scan_a, size_a, true, &stop));
                let mine = crate::protocol::rbd::allocated_ranges(&scan_b, size_b, true, &stop)?;
                let other = other.join().unwrap_or_else(|panic| resume_unwind(panic))?;
                Ok(plan::union(&other, &mine))
            })
        });
        let ranges = match ranges {
            Err(_) if reporter.stop().is_some() => return Err(reporter.stopped_error(&label)),
            r => r?,
        };
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        reporter.set_total(total);
        reporter.phase(Phase::Verifying);
        let window = transfer::io_window(self.chunk_size, self.window);
        let compared = compare(
            [&*a, &*b],
            &ranges,
            Reads {
                chunk: self.chunk_size,
                window,
                rates: &[],
            },
            Compare::First,
            reporter,
            &label,
        )?;
        if let Some(offset) = compared.first_difference {
            return Err(Error::mismatch(
                b.path(),
                offset,
                format!("{} and {} differ at offset {offset}", a.label(), b.label()),
            ));
        }
        reporter.finish();
        Ok(VerifyStats {
            source: a.label().to_owned(),
            dest: b.label().to_owned(),
            image_size: size_a,
            bytes_compared: compared.bytes,
            bytes_skipped: size_a - total,
            elapsed: started.elapsed(),
        })
    }
}

/// Opens `spec` read-only on a helper thread; its size at that snapshot.
fn open(
    reporter: &mut Reporter,
    label: &str,
    cluster: &Cluster,
    spec: &ImageSpec,
) -> Result<(Arc<Image>, u64)> {
    let (conn, spec) = (cluster.clone(), spec.clone());
    let what = format!("{spec} to open");
    transfer::detached(reporter, label, what, move || {
        let (spec, pool) = transfer::open_pool(&conn, &spec)?;
        let image = Image::open_read_only(&pool, spec.image(), spec.snap())?;
        let size = image.size()?;
        Ok((Arc::new(image), size))
    })
}

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

/// Reads `ranges` (sorted, disjoint) from both sides, in chunks of at most `chunk` bytes and as
/// many at a time as `window` allows, and compares them, reporting compared bytes to
/// `reporter`. At the first difference nothing more is started, but every chunk in flight is
/// still compared: chunks start in order, so the lowest difference found is the first. A read
/// that fails before that offset is the error; a stop is one too (naming `label`).
/// How a comparison reads: in chunks of at most `chunk` bytes, within `window`, the reads of
/// the first image held back by `rates`.
#[derive(Clone, Copy)]
pub(crate) struct Reads<'a> {
    pub chunk: u64,
    pub window: Window,
    pub rates: &'a [&'a RateLimit],
}

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
    let extents: Vec<DiffExtent> = ranges
        .iter()
        .map(|&(offset, len)| DiffExtent {
            offset,
            len,
            exists: true,
        })
        .collect();
    let pieces = plan::pieces(&extents, chunk, chunk);
    let (tx, rx) = mpsc::channel();
    let mut c = Comparison {
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
    };
    let mut stopping = false;
    let mut next = 0;
    // The chunk whose bytes the rate limits have reserved, and from when it may be read.
    let mut reserved: Option<(usize, Instant)> = None;
    loop {
        if !stopping && reporter.stop().is_some() {
            stopping = true;
        }
        let mut rate_wait = None;
        while !c.halted(stopping) && next < pieces.len() && c.has_room(pieces[next].len as usize) {
            if !rates.is_empty() {
                let ready = match reserved {
                    Some((i, ready)) if i == next => ready,
                    _ => engine::rate_ready(rates, pieces[next].len),
                };
                reserved = Some((next, ready));
                if Instant::now() < ready {
                    rate_wait = Some(ready);
                    break;
                }
            }
            c.start(pieces[next]);
            next += 1;
        }
        if c.in_flight == 0 && rate_wait.is_none() {
            break;
        }
        let what = || format!("the cluster to complete the reads in flight of {label}");
        let done = match rate_wait {
            Some(ready) => engine::completion_or_rate(&c.rx, ready, rates, reporter),
            None => engine::next_completion(&c.rx, reporter, what),
        };
        if let Some(done) = done {
            let bytes = c.complete(done);
            if bytes > 0 {
                reporter.advance(bytes);
            }
        }
    }
    reporter.waiting_for(None);
    let first_difference = c.first_difference;
    let mut differing = c.differing.take().unwrap_or_default();
    differing.sort_unstable();
    let compared = Compared {
        bytes: c.compared,
        first_difference,
        differing,
    };
    match c.error.take() {
        Some((at, e)) if how == Compare::All || first_difference.is_none_or(|d| at < d) => Err(e),
        _ if first_difference.is_some() && how == Compare::First => Ok(compared),
        _ if stopping => Err(reporter.stopped_error(label)),
        _ => Ok(compared),
    }
}

/// A transfer's check of what it wrote: `ranges`, read from `source` (at its end snapshot) and
/// from `dest` (at HEAD, after the writes) as `reads` says, compared. Returns the bytes
/// compared; a difference is an error naming `dest` (`label`) and the first offset that
/// differs.
pub(crate) fn written(
    source: &dyn crate::protocol::world::SourceImage,
    dest: &dyn crate::protocol::world::DestImage,
    ranges: &[(u64, u64)],
    reads: Reads<'_>,
    reporter: &mut Reporter,
    label: &str,
) -> Result<u64> {
    let ranges = plan::union(ranges, &[]);
    reporter.restart(Phase::Verifying, ranges.iter().map(|r| r.1).sum());
    let compared = compare(
        [source, dest],
        &ranges,
        reads,
        Compare::First,
        reporter,
        label,
    )?;
    match compared.first_difference {
        None => Ok(compared.bytes),
        Some(offset) => Err(Error::mismatch(
            dest.path(),
            offset,
            format!(
                "verification of the transfer into {label} failed: {} and {label} differ at \
                 offset {offset}; no end snapshot was created, run the transfer again: it \
                 rewrites from there on",
                source.label()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
