//! `rbd-diffsync sync`: its options, and one transfer (or its dry run) to its result.

use clap::Args;
use rbd_diffsync::{DiffTransfer, Error, ImageSpec};

use crate::args::{parse_size, settings, ClusterArgs, OutputArgs};
use crate::output::{plan_text, print_out, stats_text};
use crate::progress::{progress_printer, OpenLine};
use crate::signals::{cancel_on_signals, TRANSFER_EFFECT};

#[derive(Args)]
pub(crate) struct SyncArgs {
    /// Source, `[pool[/namespace]/]image[@snap]` (without a pool: the cluster's
    /// rbd_default_pool; without `@snap`: HEAD, and no snapshot is created on the destination).
    #[arg(value_name = "SRC_IMAGE[@SNAP]")]
    source: String,
    /// Destination image, `[pool[/namespace]/]image`; a full sync creates it when missing.
    #[arg(value_name = "DEST_IMAGE")]
    dest: String,
    /// Transfer only the changes since this snapshot (present on both images).
    #[arg(long, value_name = "SNAP")]
    from_snap: Option<String>,
    /// Largest request, in bytes, with an optional K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
    chunk_size: u64,
    /// Window of I/O in flight, in chunks: memory is at most window × chunk size.
    #[arg(long, value_name = "N", default_value_t = rbd_diffsync::DEFAULT_WINDOW)]
    window: usize,
    /// Diff by whole objects, as `rbd export-diff --whole-object`.
    #[arg(long)]
    whole_object: bool,
    /// Write over what the destination holds: a full sync into an image with data or
    /// snapshots, or open by another client; an incremental into an image changed since
    /// --from-snap (the changed ranges are rewritten from the source).
    #[arg(long)]
    force: bool,
    /// Check everything and print what the sync would do, writing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Bytes per second read from the source at most: a number with an optional K, M or G
    /// suffix (powers of 1024: 100M is 100 MiB/s); 0 means no limit, as without this option.
    /// Only data counts, not ranges made to read as zeros; with --verify, the verification's
    /// reads of the source count too.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    max_rate: Option<u64>,
    /// After the writes, before the end snapshot, read back what the sync wrote or zeroed from
    /// both images and compare; a difference fails the sync (exit status 201) and creates no
    /// end snapshot.
    #[arg(long)]
    verify: bool,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) clusters: ClusterArgs,
}

/// Runs the transfer, or its dry run, and prints its result.
pub(crate) fn run(args: &SyncArgs, json: bool) -> Result<(), Error> {
    let mut transfer = transfer(args)?;
    let open = OpenLine::default();
    if let Some(mode) = args.output.progress() {
        transfer = transfer.on_progress(progress_printer(mode, open.clone()));
    }
    if args.dry_run {
        // Nothing is written: a signal may end a dry run at once, as it would by default.
        let plan = transfer.plan();
        open.end_on_stderr();
        print_out(&plan_text(&plan?, json));
        return Ok(());
    }
    let cancel = cancel_on_signals(&open, TRANSFER_EFFECT);
    let result = transfer.cancel_token(cancel).run();
    open.end_on_stderr();
    print_out(&stats_text(json, &result?));
    Ok(())
}

/// The transfer the options describe, without its progress callback and cancel token.
fn transfer(args: &SyncArgs) -> Result<DiffTransfer, Error> {
    let source = ImageSpec::parse(&args.source)?;
    let dest = ImageSpec::parse(&args.dest)?;
    let mut settings = settings(&args.clusters, &args.output, args.chunk_size, args.window);
    settings.whole_object = args.whole_object;
    settings.overwrite_existing = args.force;
    settings.verify = args.verify;
    settings.rate_limit = args.max_rate.filter(|&rate| rate > 0);
    let mut transfer = DiffTransfer::new(source, dest).settings(settings);
    if let Some(from) = &args.from_snap {
        transfer = transfer.from_snap(from.clone());
    }
    Ok(transfer)
}
