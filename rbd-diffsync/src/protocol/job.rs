//! The transfer's run, step by step: the [`Job`], what it opened and found, and the order of
//! the steps (each in a file of its own: [`super::open`], [`super::diff`], [`super::write`],
//! [`super::commit`]).

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::plan::pipeline::Planner;
use crate::plan::KnownZero;
use crate::progress::{AbandonOnDrop, Reporter, TransferStats};
use crate::protocol::batch::BatchLink;
use crate::protocol::checks::Verdict;
use crate::protocol::claim::{self, Claimed, Target};
use crate::protocol::record::Record;
use crate::protocol::world::{DestImage, Header, Scan, SourceImage, World};
use crate::rbd::image::{Layout, Snapshot};
use crate::settings::Settings;
use crate::spec::ImageSpec;

/// What a transfer would do, found by [`DiffTransfer::plan`](crate::DiffTransfer::plan)
/// without writing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Plan {
    /// The source, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: String,
    /// The destination image, `pool[/namespace]/image`, its pool resolved.
    pub dest: String,
    /// The base of an incremental; `None` for a full transfer.
    pub from_snap: Option<String>,
    /// The snapshot the transfer creates on the destination; `None` for a source at HEAD.
    pub end_snap: Option<String>,
    /// The source size, which the destination will have.
    pub source_size: u64,
    /// The destination's size now; `None` when the transfer creates it.
    pub dest_size: Option<u64>,
    /// Whether the transfer creates the destination.
    pub create_destination: bool,
    /// Whether the destination holds the writes of an interrupted transfer of the same diff,
    /// which this one completes.
    pub continues_interrupted: bool,
    /// Where the transfer resumes: the checkpoint of the interrupted transfer of the very same
    /// diff (source image, base and end snapshot), below which it had written everything; 0
    /// when it starts from the beginning.
    pub resume_from: u64,
    /// Bytes of the diff below `resume_from`, done by the interrupted transfer and not again.
    pub bytes_resumed: u64,
    /// Whether the transfer writes over data or changes that `overwrite_existing` allowed.
    pub overwrites_destination: bool,
    /// Ranges of the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Bytes of those ranges.
    pub diff_bytes: u64,
    /// Bytes to read from the source: the diff's data ranges, and ranges of the destination
    /// to rewrite (from `resume_from` on).
    pub data_bytes: u64,
    /// Bytes to make read as zeros (some may need no request).
    pub zero_bytes: u64,
}

/// One transfer as the protocol carries it out: what [`DiffTransfer`](crate::DiffTransfer)
/// was given, without its progress callback and cancel token (which become the
/// [`Reporter`]) and without the cluster it runs on (the [`World`]).
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) source: ImageSpec,
    pub(crate) dest: ImageSpec,
    pub(crate) from_snap: Option<String>,
    pub(crate) settings: Settings,
    /// What it shares with the other transfers of a batch.
    pub(crate) batch: Option<Arc<BatchLink>>,
}

impl Job {
    /// Checks what it was given, before anything connects.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(snap) = self.dest.snap() {
            return Err(Error::invalid(format!(
                "invalid image spec {:?}: the destination must be an image; its snapshot is \
                 named after the source's, not {snap:?}",
                self.dest.to_string()
            )));
        }
        if let Some(from) = &self.from_snap {
            if from.is_empty() || from.contains(['@', '/', '\0']) {
                return Err(Error::invalid(format!("invalid from_snap name {from:?}")));
            }
            if Some(from.as_str()) == self.source.snap() {
                return Err(Error::invalid(format!(
                    "from_snap {from:?} is the end snapshot of {}: there is nothing to transfer",
                    self.source
                )));
            }
        }
        self.settings.check()?;
        if self.source.image_path() == self.dest.image_path()
            && self
                .settings
                .dest_cluster
                .as_ref()
                .is_none_or(|d| *d == self.settings.cluster)
        {
            return Err(Error::invalid(format!(
                "source and destination are the same image {}",
                self.dest.image_path()
            )));
        }
        Ok(())
    }
}

impl Job {
    pub(crate) fn transfer(
        &self,
        world: &Arc<dyn World>,
        reporter: &mut Reporter,
        started: Instant,
    ) -> Result<TransferStats> {
        let prepared = self
            .prepare(world, reporter, true)
            .map_err(|e| self.why_fenced(e))?;
        let target = prepared.target.clone();
        let claimed = prepared.claimed.as_ref().map(|c| c.header.clone());
        let result = self.execute(prepared, reporter, started);
        if let (Err(e), Some(header)) = (&result, claimed) {
            // The record stays for the rerun; the claim goes, this client is leaving (a
            // killed one's stays and names it). Not after a timeout or with a full pool: the
            // write would wait out the operation timeout again.
            if ![libc::ETIMEDOUT, libc::EDQUOT, libc::ENOSPC].contains(&e.errno()) {
                let _ = header.swap_claim(Some(&target.text), None);
            }
        }
        result
    }

    /// A client blocklisted while it runs fails every call with ESHUTDOWN: an error that says
    /// why.
    pub(crate) fn why_fenced(&self, e: Error) -> Error {
        if e.errno() == libc::ESHUTDOWN && e.kind() != ErrorKind::Fenced {
            claim::fenced(&self.dest_label(), e.message())
        } else {
            e
        }
    }

    /// The plan with its counts, the diff scanned to the end (nothing is kept of it).
    pub(crate) fn count(&self, prepared: Prepared, reporter: &mut Reporter) -> Result<Plan> {
        let Prepared {
            mut plan,
            source,
            planner,
            ..
        } = prepared;
        let (image, from, stop) = (
            source.image.clone(),
            self.from_snap.clone(),
            reporter.stop_check(),
        );
        let what = format!("the diff of {}", source.spec);
        let totals = reporter
            .detached(&plan.dest, what, move || {
                let scan = |offset, len| image.exact(from.as_deref(), offset, len, &stop);
                planner.run(&scan, &mut |_| Ok(()))
            })
            .map_err(|e| self.stopped_or(reporter, e))?;
        plan.extents = totals.extents;
        plan.diff_bytes = totals.diff_bytes;
        plan.bytes_resumed = totals.bytes_resumed;
        plan.data_bytes = totals.data_bytes;
        plan.zero_bytes = totals.zero_bytes;
        Ok(plan)
    }

    /// A scan stopped by the halt token reports ECANCELED: say why it stopped.
    pub(crate) fn stopped_or(&self, reporter: &mut Reporter, e: Error) -> Error {
        if reporter.stop().is_some() {
            reporter.stopped_error(&self.dest_label())
        } else {
            e
        }
    }

    pub(crate) fn dest_label(&self) -> String {
        self.dest.image_path()
    }
}

/// The source image, open at its end snapshot.
pub(crate) struct Source {
    /// Resolved.
    pub(crate) spec: ImageSpec,
    pub(crate) image: Arc<dyn SourceImage>,
    pub(crate) size: u64,
    pub(crate) layout: Layout,
    pub(crate) from: Option<Snapshot>,
    pub(crate) end: Option<Snapshot>,
    /// The transfer as its claim and record name it, without its client.
    pub(crate) identity: Record,
}

/// The source open, and the destination found (its header, if it exists).
pub(crate) struct Opened {
    pub(crate) source: Source,
    pub(crate) target: Target,
    pub(crate) header: Option<Arc<dyn Header>>,
}

/// Where the copy starts, and whether what lies below was proven written.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Resume {
    /// The predecessor's checkpoint (0: from the start).
    pub(crate) from: u64,
    /// Whether this run took the destination's lock over from the predecessor that wrote
    /// below `from`: then nobody else can have written there since, and it is not done
    /// again. Otherwise it is compared with the source first, and what differs rewritten.
    pub(crate) trusted: bool,
}

/// Everything the copy needs once the checks have passed.
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    pub(crate) source: Source,
    pub(crate) target: Target,
    /// The claim, when the transfer writes.
    pub(crate) claimed: Option<Claimed>,
    /// Open for writing (for reading when planning); `None` for a destination a plan would
    /// create.
    pub(crate) dest: Option<Arc<dyn DestImage>>,
    pub(crate) planner: Planner,
    pub(crate) known_zero: KnownZero,
    pub(crate) resume: Resume,
    /// The killed predecessor whose lock was broken.
    pub(crate) broke_lock_of: Option<String>,
}

/// A scan of the source running on a thread of its own, or done already.
pub(crate) struct ScanJob(pub(crate) Option<ScanState>);

pub(crate) enum ScanState {
    Running {
        rx: mpsc::Receiver<std::thread::Result<Result<Scan>>>,
        thread: std::thread::JoinHandle<()>,
        /// What it is, for progress while it is waited for.
        what: String,
        /// Stops the scan when the job is dropped unwaited.
        abandon: AbandonOnDrop,
    },
    Done(Result<Scan>),
}

impl Drop for ScanJob {
    fn drop(&mut self) {
        if let Some(ScanState::Running {
            thread, abandon, ..
        }) = self.0.take()
        {
            // Stopped, then waited for: no thread is left inside librbd.
            drop(abandon);
            let _ = thread.join();
        }
    }
}
/// What the checks found about the destination; the default is one to be created.
#[derive(Default)]
pub(crate) struct Found {
    /// Its size, if it exists.
    pub(crate) size: Option<u64>,
    pub(crate) verdict: Verdict,
    /// For a full transfer into it, its allocated ranges.
    pub(crate) allocated: Option<Vec<(u64, u64)>>,
    /// The in-progress record found under the lock.
    pub(crate) previous: Option<Record>,
}
