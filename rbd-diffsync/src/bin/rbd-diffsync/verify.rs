//! `rbd-diffsync verify`: its options, and one comparison of two images to its result.

use clap::Args;
use rbd_diffsync::{Error, ImageSpec, Verify};

use crate::args::{parse_size, settings, ClusterArgs, OutputArgs};
use crate::output::{print_out, verify_text};
use crate::progress::{progress_printer, OpenLine};
use crate::signals::cancel_on_signals;

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// First image, `[pool[/namespace]/]image[@snap]` (without `@snap`: HEAD).
    #[arg(value_name = "SRC_IMAGE[@SNAP]")]
    source: String,
    /// Second image, on the --dest-* cluster when one is given.
    #[arg(value_name = "DEST_IMAGE[@SNAP]")]
    dest: String,
    /// Largest read, in bytes, with an optional K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
    chunk_size: u64,
    /// Window of reads in flight, in chunks: memory is at most window × chunk size.
    #[arg(long, value_name = "N", default_value_t = rbd_diffsync::DEFAULT_WINDOW)]
    window: usize,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
    #[command(flatten)]
    pub(crate) clusters: ClusterArgs,
}

/// Compares the two images and prints the result.
pub(crate) fn run(args: &VerifyArgs, json: bool) -> Result<(), Error> {
    let source = ImageSpec::parse(&args.source)?;
    let dest = ImageSpec::parse(&args.dest)?;
    let settings = settings(&args.clusters, &args.output, args.chunk_size, args.window);
    let mut verify = Verify::new(source, dest).settings(settings);
    let open = OpenLine::default();
    if let Some(mode) = args.output.progress() {
        verify = verify.on_progress(progress_printer(mode, open.clone()));
    }
    let cancel = cancel_on_signals(&open, "the reads in flight drain");
    let result = verify.cancel_token(cancel).run();
    open.end_on_stderr();
    print_out(&verify_text(json, &result?));
    Ok(())
}
