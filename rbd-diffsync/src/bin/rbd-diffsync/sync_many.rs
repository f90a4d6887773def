//! `rbd-diffsync sync-many`: its options and `--help`, and a batch of transfers, one per
//! volume of the job file, to its result and exit status.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rbd_diffsync::{DiffTransfer, Error, ImageSpec, SyncMany};

use crate::args::{parse_size, settings, ClusterArgs, OutputArgs};
use crate::failure::exit_status;
use crate::jobs::{self, JobLine};
use crate::output::{many_text, print_out};
use crate::progress::{batch_printer, OpenLine};
use crate::signals::{cancel_on_signals, TRANSFER_EFFECT};

/// The job file and the exit status of `sync-many`, for `--help`.
pub(crate) const SYNC_MANY_HELP: &str = "\
Job file: one volume per line, blank lines and lines starting with # ignored. Either
    SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP]
(whitespace-separated; FROM_SNAP makes it an incremental), or a JSON object
    {\"source\": \"rbd/vol1@s2\", \"dest\": \"backups/vol1\", \"from_snap\": \"s1\", \"verify\": true}
(from_snap, and force and verify, true or false, optional). The same destination twice is
refused, also when named once with its pool and once without (rbd/vol and vol, rbd being the
cluster's rbd_default_pool).

Exit status: 0 when every volume was synced; otherwise that of the first volume that failed,
in the order of the job file, as `sync` would have exited for it (125 when cancelled). The
result names every volume that failed, with its error's kind, errno, message, image and
snapshot (--format json: the \"volumes\" array).";

#[derive(Args)]
pub(crate) struct SyncManyArgs {
    /// The job file, or - for stdin.
    #[arg(value_name = "JOB_FILE")]
    job: PathBuf,
    /// Volumes synced at once.
    #[arg(long, value_name = "N", default_value_t = rbd_diffsync::DEFAULT_PARALLEL)]
    parallel: usize,
    /// Largest request, in bytes, with an optional K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
    chunk_size: u64,
    /// Memory of all the volumes together, in chunks: data held at once (librados's receive
    /// buffers included) is at most N × chunk size, whatever the number of volumes.
    #[arg(long, value_name = "N", default_value_t = 32)]
    window: usize,
    /// Bytes per second read from the sources, all volumes together, at most: a number with
    /// an optional K, M or G suffix (powers of 1024: 100M is 100 MiB/s); 0 means no limit, as
    /// without this option. Only data counts, not ranges made to read as zeros; with
    /// --verify, the verifications' reads of the sources count too.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// Diff by whole objects, as `rbd export-diff --whole-object`.
    #[arg(long)]
    whole_object: bool,
    /// As `sync --force`, for every volume (a job line may also say "force": true).
    #[arg(long)]
    force: bool,
    /// As `sync --verify`, for every volume (a job line may also say "verify": true): a
    /// volume whose copy differs fails (exit status 201) with no end snapshot. The reads of
    /// the verification are drawn from the memory budget too.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    clusters: ClusterArgs,
}

/// Runs the batch and prints its result; the exit status is that of the first volume that
/// failed (0 when none did), or of a job file that could not be read.
pub(crate) fn run(args: &SyncManyArgs, json: bool) -> Result<u8, Error> {
    let mut jobs = match jobs::load(&args.job, json) {
        Ok(jobs) => jobs,
        Err(status) => return Ok(status),
    };
    for job in &mut jobs {
        job.force |= args.force;
        job.verify |= args.verify;
    }
    let transfers = transfers(args, &jobs)?;
    let open = OpenLine::default();
    let cancel = cancel_on_signals(&open, TRANSFER_EFFECT);
    let mut batch = SyncMany::new(transfers)
        .parallel(args.parallel)
        .memory_budget(memory_budget(args))
        .rate_limit(args.max_rate.unwrap_or(0))
        .progress_interval(args.output.progress_interval)
        .cancel_token(cancel);
    if let Some(mode) = args.output.progress() {
        batch = batch.on_progress(batch_printer(mode, open.clone()));
    }
    let started = Instant::now();
    let results = batch.run();
    open.end_on_stderr();
    let elapsed = started.elapsed();
    print_out(&many_text(json, &jobs, &results, elapsed));
    let code = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .map_or(0, |e| exit_status(e.errno()));
    Ok(code)
}

/// A transfer for each volume of the job file, in its order.
fn transfers(args: &SyncManyArgs, jobs: &[JobLine]) -> Result<Vec<DiffTransfer>, Error> {
    let mut shared = settings(&args.clusters, &args.output, args.chunk_size, args.window);
    shared.whole_object = args.whole_object;
    let mut transfers = Vec::new();
    for job in jobs {
        let mut settings = shared.clone();
        settings.overwrite_existing = job.force;
        settings.verify = job.verify;
        let mut t = DiffTransfer::new(ImageSpec::parse(&job.source)?, ImageSpec::parse(&job.dest)?)
            .settings(settings);
        if let Some(from) = &job.from_snap {
            t = t.from_snap(from.clone());
        }
        transfers.push(t);
    }
    Ok(transfers)
}

/// The memory budget of the batch: --window × --chunk-size, in bytes.
fn memory_budget(args: &SyncManyArgs) -> usize {
    // The window and chunk size are checked by each transfer (at most 1024 × 1 GiB).
    usize::try_from((args.window as u64).saturating_mul(args.chunk_size)).unwrap_or(usize::MAX)
}
