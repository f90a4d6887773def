//! The writes: the destination prepared (grown), the copy with its checkpoints, the range a
//! predecessor wrote compared again, and the destination shrunk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::copy::checkpoint::{self, Checkpointer};
use crate::copy::engine::{self, Window};
use crate::copy::rate::RateLimit;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::pipeline::{self, Planner, Queue, Totals};
use crate::plan::{self, KnownZero, Piece};
use crate::progress::{Phase, Reporter, TransferStats, Waited};
use crate::protocol::claim::{Claimed, Target};
use crate::protocol::world::{DestImage, SourceImage, Threads};
use crate::verify;

use crate::protocol::diff::{start_planning, ClosesOnDrop};
use crate::protocol::job::{Job, Plan, Prepared, Resume, Source};

impl Job {
    /// The copy, the verification and the commit, then the destination closed.
    pub(crate) fn execute(
        &self,
        prepared: Prepared,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let dest = prepared.dest.clone();
        let target = prepared.target.clone();
        let result = self
            .write(prepared, reporter, started)
            .map_err(|e| explain_full_pool(reporter, self.why_fenced(e), &target));
        if let Some(dest) = dest {
            // Closing releases the lock: in a full pool librbd waits out the operation timeout
            // for it, which the progress reports say.
            let what = format!("{} to close, its exclusive lock released", target.label);
            let _ = reporter.wait(what, false, move || drop(dest));
        }
        result
    }

    pub(crate) fn write(
        &self,
        prepared: Prepared,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let Prepared {
            plan,
            source,
            target,
            claimed,
            dest,
            planner,
            known_zero,
            resume,
            broke_lock_of,
        } = prepared;
        let label = plan.dest.clone();
        let (Some(dest), Some(claimed)) = (dest, claimed) else {
            unreachable!("a transfer that writes has its destination open and claimed")
        };
        if reporter.stop().is_some() {
            target.unclaim(&claimed, true);
            return Err(reporter.stopped_error(&label));
        }
        let (queue, planning) = self.plan_ahead(reporter, &planner, &source);
        let _closes = ClosesOnDrop(&queue, planning);
        let dest_size = plan.dest_size.unwrap_or(source.size);
        self.first_write(
            reporter,
            (&target, &claimed),
            &resume,
            &dest,
            source.size,
            dest_size,
        )?;
        let own_rate = self.settings.rate_limit.map(RateLimit::new);
        let batch = self.batch.as_deref();
        let rates: Vec<&RateLimit> = own_rate
            .iter()
            .chain(batch.and_then(|b| b.rate.as_ref()))
            .collect();
        let shared = engine::Limits {
            budget: batch.map(|b| &b.budget),
            rates: &rates,
        };
        let mut rechecked = 0;
        if !resume.trusted && resume.from > 0 {
            let images = (&*source.image, &dest);
            rechecked = self.recheck(images, &planner, resume.from, shared, reporter, &label)?;
            self.record(reporter, &target, &claimed, resume.from)?;
        }
        let (copied, totals) = self.copy(
            (&source, &dest),
            (&target, &claimed),
            (&queue, &known_zero, resume.from),
            shared,
            reporter,
        )?;
        if reporter.stop().is_some() {
            return Err(reporter.stopped_error(&label));
        }
        let bytes_verified = if self.settings.verify {
            self.verify_written(
                (&source, &dest),
                (&target, &claimed),
                &totals.ranges,
                &rates,
                reporter,
            )?
        } else {
            0
        };
        let snapshot_elapsed =
            self.commit(reporter, &source, &target, &claimed, &dest, dest_size)?;
        reporter.finish();
        Ok(TransferStats {
            bytes_verified,
            bytes_rechecked: rechecked,
            broke_lock_of,
            elapsed: started.elapsed(),
            snapshot_elapsed,
            ..stats(&plan, source.size, &copied, &totals)
        })
    }

    /// The first write: the record, from which on a rerun recognises what this transfer
    /// wrote (what the interrupted transfer did stays recorded as done until this one gets
    /// further, if it is known to read as the source); then the destination grown to the
    /// source's `size` from `dest_size`.
    fn first_write(
        &self,
        reporter: &mut Reporter,
        (target, claimed): (&Target, &Claimed),
        resume: &Resume,
        dest: &Arc<dyn DestImage>,
        size: u64,
        dest_size: u64,
    ) -> Result<()> {
        let recorded = if resume.trusted { resume.from } else { 0 };
        self.record(reporter, target, claimed, recorded)?;
        if size > dest_size {
            let image = dest.clone();
            let what = format!("{} to grow", dest.path());
            reporter.waited(what, move || image.resize(size))?;
        }
        Ok(())
    }

    /// Starts planning the copy: cell by cell on a thread of its own, a bounded queue ahead
    /// of the copy. It only reads the source, so it starts before the destination is prepared
    /// for the first write, which its first cell's scan overlaps. A return before the copy
    /// closes the queue ([`ClosesOnDrop`]), which stops it; it is waited for before the
    /// transfer returns.
    fn plan_ahead(
        &self,
        reporter: &Reporter,
        planner: &Planner,
        source: &Source,
    ) -> (Arc<Queue>, Option<std::thread::JoinHandle<()>>) {
        let queue = Arc::new(match reporter.threads() {
            Threads::Spawn => Queue::default(),
            Threads::Inline => Queue::unbounded(),
        });
        let planning = start_planning(
            planner.clone(),
            source.image.clone(),
            self.from_snap.clone(),
            queue.clone(),
            reporter.stop_check(),
            reporter.threads(),
        );
        (queue, planning)
    }

    /// Writes the transfer's record with checkpoint `done`, under its claim.
    pub(crate) fn record(
        &self,
        reporter: &mut Reporter,
        target: &Target,
        claimed: &Claimed,
        done: u64,
    ) -> Result<()> {
        let (t, header) = (target.clone(), claimed.header.clone());
        let what = format!("the in-progress record on {}", target.label);
        reporter.waited(what, move || t.write_record(&*header, Some(done)))
    }

    /// The copy of the queue's pieces, with checkpoints; what it did and what the planning
    /// found.
    pub(crate) fn copy(
        &self,
        (source, dest): (&Source, &Arc<dyn DestImage>),
        (target, claimed): (&Target, &Claimed),
        (queue, known_zero, from): (&Arc<Queue>, &KnownZero, u64),
        shared: engine::Limits<'_>,
        reporter: &mut Reporter,
    ) -> Result<(engine::Counters, pipeline::Totals)> {
        let label = target.label.clone();
        // Checkpoints are of use only to a rerun of the same diff, which a source read at
        // HEAD never has.
        let checkpoints = source.spec.snap().map(|_| {
            let (t, header, image) = (target.clone(), claimed.header.clone(), dest.clone());
            let write: Arc<checkpoint::Write> = Arc::new(move |mark| {
                if image.flush().is_err() {
                    return Ok(false);
                }
                match t.write_record(&*header, Some(mark)) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::Fenced => Err(e),
                    Err(_) => Ok(false),
                }
            });
            Checkpointer::start(write, from, checkpoint::INTERVAL, reporter.threads())
        });
        let marks = |mark: u64| {
            if let Some(checkpoints) = &checkpoints {
                checkpoints.mark(mark);
            }
        };
        // The copy starts with the first pieces planned (for most images, all of them).
        while !queue.wait_ready(reporter.poll_interval()) && reporter.stop().is_none() {
            reporter.waiting_for(Some(format!("the diff scan of {}", source.spec)));
            reporter.tick();
        }
        reporter.set_total(queue.planned());
        reporter.phase(Phase::Copying);
        let mut feed = &**queue;
        let job = engine::Job {
            pieces: &mut feed,
            known_zero,
            window: Window::of(self.settings.chunk_size, self.settings.window),
            marks: Some(&marks),
            shared,
        };
        // A scan stopped by a cancel fails the planning with ECANCELED: say why it stopped.
        let copied = engine::run(&*source.image, &**dest, job, reporter, &label).map_err(|e| {
            if e.kind() == ErrorKind::Cancelled {
                self.stopped_or(reporter, e)
            } else {
                e
            }
        });
        // Nothing more is taken from the queue: a planning still running stops.
        queue.close();
        if let Some(checkpoints) = checkpoints {
            // A transfer that did not finish keeps what it did for its rerun, unless its
            // writes failed for a full pool or a timeout: a last checkpoint would wait out
            // the operation timeout again.
            let keep = copied.as_ref().err().is_some_and(|e| {
                ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno())
            });
            if let Some(fenced) = checkpoints.finish(keep) {
                return Err(fenced);
            }
        }
        let counters = copied?;
        let totals = queue.totals().ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                libc::EIO,
                format!("the planning of the transfer into {label} ended without its totals"),
            )
        })?;
        Ok((counters, totals))
    }

    /// Compares what lies below `below` of the transfer's work with the source, chunk by
    /// chunk, and rewrites the chunks that differ: what a rerun does with the checkpoint of a
    /// predecessor that let go of the destination before it (another client could have
    /// written there since). Returns the bytes compared.
    pub(crate) fn recheck(
        &self,
        (source, dest): (&dyn SourceImage, &Arc<dyn DestImage>),
        planner: &Planner,
        below: u64,
        shared: engine::Limits<'_>,
        reporter: &mut Reporter,
        label: &str,
    ) -> Result<u64> {
        let below_plan = Planner {
            size: below.min(planner.size),
            resume_from: 0,
            keep_ranges: true,
            ..planner.clone()
        };
        let stop = reporter.stop_check();
        let from = self.from_snap.clone();
        let scan = |offset, len| source.exact(from.as_deref(), offset, len, &stop);
        let totals = below_plan
            .run(&scan, &mut |_| Ok(()))
            .map_err(|e| self.stopped_or(reporter, e))?;
        let total: u64 = totals.ranges.iter().map(|r| r.1).sum();
        reporter.restart(Phase::Verifying, total);
        let reads = verify::Reads {
            chunk: self.settings.chunk_size,
            window: Window::of(self.settings.chunk_size, self.settings.window),
            rates: shared.rates,
        };
        let compared = verify::compare(
            [source as &dyn engine::DiffSource, &**dest],
            &totals.ranges,
            reads,
            verify::Compare::All,
            reporter,
            label,
        )?;
        if !compared.differing.is_empty() {
            let extents: Vec<plan::DiffExtent> = compared
                .differing
                .iter()
                .map(|&(offset, len)| plan::DiffExtent {
                    offset,
                    len,
                    exists: true,
                })
                .collect();
            let pieces: Vec<Piece> =
                plan::pieces(&extents, self.settings.chunk_size, self.settings.chunk_size);
            reporter.restart(Phase::Copying, pieces.iter().map(|p| p.len).sum());
            let mut feed = engine::Listed::new(&pieces);
            let job = engine::Job {
                pieces: &mut feed,
                known_zero: &KnownZero::Ranges(Vec::new()),
                window: Window::of(self.settings.chunk_size, self.settings.window),
                marks: None,
                shared,
            };
            engine::run(source, &**dest, job, reporter, label)?;
        }
        Ok(compared.bytes)
    }
}

/// What a transfer of `plan` did, as far as its copy tells: `copied` by the engine, the
/// `totals` of the diff; what the steps after the copy add is zero.
fn stats(
    plan: &Plan,
    image_size: u64,
    copied: &engine::Counters,
    totals: &Totals,
) -> TransferStats {
    TransferStats {
        source: plan.source.clone(),
        dest: plan.dest.clone(),
        from_snap: plan.from_snap.clone(),
        bytes_read: copied.read,
        bytes_written: copied.written,
        bytes_zeroed: copied.zeroed,
        bytes_skipped: copied.skipped,
        bytes_verified: 0,
        bytes_rechecked: 0,
        extents: totals.extents,
        diff_bytes: totals.diff_bytes,
        image_size,
        created_destination: plan.create_destination,
        continued_interrupted: plan.continues_interrupted,
        bytes_resumed: totals.bytes_resumed,
        broke_lock_of: None,
        end_snap: plan.end_snap.clone(),
        elapsed: Duration::ZERO,
        snapshot_elapsed: Duration::ZERO,
    }
}

/// `ranges` cut to `[0, size)`.
pub(crate) fn clip(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .filter(|&&(offset, _)| offset < size)
        .map(|&(offset, len)| (offset, len.min(size - offset)))
        .collect()
}

/// A write that timed out or was refused for space: if the destination's pool is marked full,
/// an error that says so (the OSDs hold writes to a full pool until they time out).
fn explain_full_pool(reporter: &mut Reporter, e: Error, target: &Target) -> Error {
    if ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno()) {
        return e;
    }
    let (conn, name) = (
        target.conn.clone(),
        target.spec.pool().unwrap_or_default().to_owned(),
    );
    let what = format!("the monitors to tell whether pool {name} is full");
    let full = match reporter.wait(what, true, move || conn.pool_full(&name)) {
        Waited::Done(Some(full)) => full,
        _ => return e,
    };
    let errno = if full.contains("quota") {
        libc::EDQUOT
    } else {
        libc::ENOSPC
    };
    let image = e.image().map(str::to_owned);
    let error = Error::new(
        ErrorKind::NoSpace,
        errno,
        format!(
            "{full}; then run the transfer again: it resumes where this one stopped, and no end \
             snapshot was created ({})",
            e.message()
        ),
    );
    match image {
        Some(image) => error.with_image(image),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_ranges_at_the_size() {
        assert_eq!(
            clip(&[(0, 10), (8, 10), (20, 5)], 12),
            vec![(0, 10), (8, 4)]
        );
    }
}
