//! The source's diff: scanned before the copy (its outline), then planned a cell at a time
//! ahead of it.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::plan::pipeline::{self, Planner, Queue};
use crate::plan::{self, KnownZero};
use crate::progress::{Reporter, StopCheck, Waited};
use crate::protocol::world::{Scan, SourceImage, Threads};

use crate::protocol::job::{Found, Job, Plan, Resume, ScanJob, ScanState, Source};
use crate::protocol::write::clip;

impl Job {
    /// Starts the source's scan (see [`SourceImage::scan`]) on a thread of its own, to run
    /// while the destination is claimed, locked and checked; inline, it is done at once. The
    /// scan stops, and is waited for, when the returned job is dropped unwaited.
    pub(crate) fn start_scan(&self, reporter: &Reporter, source: &Source) -> ScanJob {
        let (image, from, whole_object) = (
            source.image.clone(),
            source.from.clone(),
            self.settings.whole_object,
        );
        let size = source.size;
        let what = match &self.from_snap {
            Some(from) => format!("the diff of {} since {from}", source.spec),
            None => format!("the allocated ranges of {}", source.spec),
        };
        let (stop, abandon) = reporter.stop_check().abandonable();
        let scan = move || image.scan(from.as_ref(), size, whole_object, &stop);
        if reporter.threads() == Threads::Inline {
            return ScanJob(Some(ScanState::Done(scan())));
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let scan = Arc::new(std::sync::Mutex::new(Some(scan)));
        let shared = scan.clone();
        let spawned = std::thread::Builder::new()
            .name("rbd-diffsync-scan".to_owned())
            .spawn(move || {
                let scan = shared.lock().ok().and_then(|mut s| s.take());
                if let Some(scan) = scan {
                    // Nobody waits any more when the job was dropped.
                    let _ = tx.send(catch_unwind(AssertUnwindSafe(scan)));
                }
            });
        match spawned {
            Ok(thread) => ScanJob(Some(ScanState::Running {
                rx,
                thread,
                what,
                abandon,
            })),
            // No thread to spare: scanned now, on this one.
            Err(_) => {
                let scan = scan.lock().ok().and_then(|mut s| s.take());
                ScanJob(Some(ScanState::Done(scan
                    .expect("a scan that no thread took")(
                ))))
            }
        }
    }

    /// Waits for the scan started by [`start_scan`](Self::start_scan), the reporter ticking.
    pub(crate) fn finish_scan(
        &self,
        reporter: &mut Reporter,
        mut job: ScanJob,
        label: &str,
    ) -> Result<Scan> {
        let scanned = match job.0.take().expect("a scan job is waited for once") {
            ScanState::Done(result) => result,
            ScanState::Running {
                rx,
                thread,
                what,
                abandon,
            } => {
                let waited = reporter.wait(what, true, move || match rx.recv() {
                    Ok(Ok(scanned)) => scanned,
                    Ok(Err(panic)) => resume_unwind(panic),
                    Err(_) => unreachable!("the scan thread sends its result before it ends"),
                });
                // Stopped or done: the scan thread ends now; no thread is left in librbd.
                drop(abandon);
                let _ = thread.join();
                match waited {
                    Waited::Done(result) => result,
                    Waited::Stopped => Err(reporter.stopped_error(label)),
                }
            }
        };
        scanned.map_err(|e| self.stopped_or(reporter, e))
    }

    /// What to do: the source's diff, plus the ranges the destination changed since
    /// `from_snap` that the diff does not cover (read from the source), plus, for a full
    /// transfer into an existing image, what it holds outside the diff (zeroed); and where
    /// the destination reads zeros already. The diff's exact extents are found cell by cell
    /// while the copy runs (see [`crate::plan::pipeline`]): the plan's counts of them are not known
    /// yet.
    pub(crate) fn work(
        &self,
        source: &Source,
        scan: Scan,
        found: Found,
        label: String,
        trusted: bool,
    ) -> (Planner, KnownZero, Plan, Resume) {
        let size = source.size;
        let (stale, known_zero) = match (found.allocated, found.size) {
            (Some(allocated), _) => {
                let allocated = clip(&allocated, size);
                let known_zero = KnownZero::Ranges(plan::complement(&allocated, size));
                (allocated, known_zero)
            }
            (None, Some(_)) => (
                Vec::new(),
                KnownZero::Ranges(plan::subtract(&scan.zero_at_from, &found.verdict.changed)),
            ),
            (None, None) => (Vec::new(), KnownZero::All),
        };
        let resume = Resume {
            from: found.verdict.resume_from,
            trusted,
        };
        let planner = Planner {
            outline: scan.outline,
            cell: pipeline::cell_size(source.layout.order),
            size,
            rewrite: clip(&found.verdict.changed, size),
            stale,
            resume_from: resume.from,
            chunk: self.settings.chunk_size,
            zero_chunk: self.settings.chunk_size * ZERO_CHUNK_FACTOR,
            keep_ranges: self.settings.verify,
        };
        let plan = Plan {
            source: source.spec.to_string(),
            dest: label,
            from_snap: self.from_snap.clone(),
            end_snap: source.spec.snap().map(str::to_owned),
            source_size: size,
            dest_size: found.size,
            create_destination: found.size.is_none(),
            continues_interrupted: found.verdict.continued,
            resume_from: resume.from,
            bytes_resumed: 0,
            overwrites_destination: found.verdict.overwrites,
            extents: 0,
            diff_bytes: 0,
            data_bytes: 0,
            zero_bytes: 0,
        };
        (planner, known_zero, plan, resume)
    }
}

/// Closes the queue when dropped, so that a planning still running stops, then waits for it.
pub(crate) struct ClosesOnDrop<'a>(
    pub(crate) &'a Queue,
    pub(crate) Option<std::thread::JoinHandle<()>>,
);

impl Drop for ClosesOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
        if let Some(planning) = self.1.take() {
            // A panic of the planning failed the copy already.
            let _ = planning.join();
        }
    }
}

/// Starts planning the transfer's pieces into `queue`, the exact diff of `image` since
/// `from` scanned as it goes: on a thread of its own, or (inline, or with no thread to spare)
/// all at once now. The queue ends with what it found, or its error.
pub(crate) fn start_planning(
    planner: Planner,
    image: Arc<dyn SourceImage>,
    from: Option<String>,
    queue: Arc<Queue>,
    stop: StopCheck,
    threads: Threads,
) -> Option<std::thread::JoinHandle<()>> {
    let plan = move || {
        let scan = |offset, len| image.exact(from.as_deref(), offset, len, &stop);
        let planned = catch_unwind(AssertUnwindSafe(|| {
            planner.run(&scan, &mut |pieces| queue.push(pieces))
        }));
        match planned {
            Ok(result) => queue.finish(result),
            Err(_) => queue.finish(Err(Error::new(
                ErrorKind::Other,
                libc::EIO,
                "the planning of the transfer panicked",
            ))),
        }
    };
    if threads == Threads::Inline {
        plan();
        return None;
    }
    let plan = Arc::new(std::sync::Mutex::new(Some(plan)));
    let shared = plan.clone();
    let spawned = std::thread::Builder::new()
        .name("rbd-diffsync-plan".to_owned())
        .spawn(move || {
            if let Some(plan) = shared.lock().ok().and_then(|mut p| p.take()) {
                plan();
            }
        });
    match spawned {
        Ok(thread) => Some(thread),
        Err(_) => {
            if let Some(plan) = plan.lock().ok().and_then(|mut p| p.take()) {
                plan();
            }
            None
        }
    }
}

/// Zeroing requests need no buffer, so they are cut this many times larger than data chunks.
const ZERO_CHUNK_FACTOR: u64 = 16;
