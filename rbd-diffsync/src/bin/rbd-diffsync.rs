//! `rbd-diffsync`: the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use rbd_diffsync::{
    CancelToken, ClusterSpec, DiffTransfer, Error, ImageSpec, Progress, TransferStats,
};

#[derive(Parser)]
#[command(
    name = "rbd-diffsync",
    version,
    about = "Fast, checked transfers of RBD snapshot diffs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transfer SRC_IMAGE@SNAP (changes since --from-snap, or everything) into DEST_IMAGE, then
    /// create SNAP on DEST_IMAGE: `rbd export-diff | rbd import-diff` in one process.
    Sync(SyncArgs),
}

#[derive(Args)]
struct SyncArgs {
    /// Source image, `pool[/namespace]/image@snap` (without `@snap`: HEAD, and no snapshot is
    /// created on the destination).
    #[arg(value_name = "SRC_IMAGE@SNAP")]
    source: String,
    /// Destination image, `pool[/namespace]/image`; a full sync creates it when missing.
    #[arg(value_name = "DEST_IMAGE")]
    dest: String,
    /// Transfer only the changes since this snapshot (present on both images).
    #[arg(long, value_name = "SNAP")]
    from_snap: Option<String>,
    /// The source cluster's ceph.conf (default: librados' search, $CEPH_CONF first).
    #[arg(short = 'c', long, value_name = "PATH")]
    conf: Option<PathBuf>,
    /// Client id on the source cluster.
    #[arg(long, value_name = "ID", default_value = "admin")]
    id: String,
    /// Keyring for the source cluster (default: as ceph.conf says).
    #[arg(long, value_name = "PATH")]
    keyring: Option<PathBuf>,
    /// The destination cluster's ceph.conf (default: the source's).
    #[arg(long, value_name = "PATH")]
    dest_conf: Option<PathBuf>,
    /// Client id on the destination cluster (default: the source's).
    #[arg(long, value_name = "ID")]
    dest_id: Option<String>,
    /// Keyring for the destination cluster (default: the source's, unless --dest-conf is given).
    #[arg(long, value_name = "PATH")]
    dest_keyring: Option<PathBuf>,
    /// Give up connecting to a cluster after this many seconds (default: librados', 300 s).
    #[arg(long, value_name = "SECS")]
    connect_timeout: Option<f64>,
    /// Largest request, in bytes, with an optional K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
    chunk_size: u64,
    /// Window of I/O in flight, in chunks: memory is at most window × chunk size.
    #[arg(long, value_name = "N", default_value_t = rbd_diffsync::DEFAULT_WINDOW)]
    window: usize,
    /// Diff by whole objects, as `rbd export-diff --whole-object`.
    #[arg(long)]
    whole_object: bool,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print no progress.
    #[arg(long)]
    no_progress: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, factor) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{s:?} is not a size such as 4194304, 512K or 4M"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// A bar redrawn in place on a terminal; a plain line now and then otherwise.
fn progress_printer() -> impl FnMut(&Progress) + Send + 'static {
    let tty = std::io::stderr().is_terminal();
    let mut last_line: Option<Instant> = None;
    let mut last_done: Option<u64> = None;
    move |p: &Progress| {
        let pct = if p.bytes_total > 0 {
            p.bytes_done as f64 * 100.0 / p.bytes_total as f64
        } else {
            100.0
        };
        let rate = p.bytes_done as f64 / p.elapsed.as_secs_f64().max(1e-3) / (1u64 << 20) as f64;
        let mut err = std::io::stderr().lock();
        if tty {
            let width = 30;
            let filled = ((pct / 100.0) * width as f64) as usize;
            let _ = write!(
                err,
                "\r[{}{}] {pct:5.1}% {} / {} {rate:7.1} MiB/s ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                mib(p.bytes_done),
                mib(p.bytes_total)
            );
        } else if last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
            || (p.bytes_done >= p.bytes_total && last_done != Some(p.bytes_done))
        {
            last_done = Some(p.bytes_done);
            last_line = Some(Instant::now());
            let _ = writeln!(
                err,
                "progress: {pct:.1}% ({} of {}), {rate:.1} MiB/s",
                mib(p.bytes_done),
                mib(p.bytes_total)
            );
        }
    }
}

fn print_stats(args: &SyncArgs, source: &ImageSpec, dest: &ImageSpec, stats: &TransferStats) {
    if args.json {
        let mut value = serde_json::to_value(stats).expect("stats serialise");
        value["source"] = source.to_string().into();
        value["dest"] = dest.image_path().into();
        value["from_snap"] = args.from_snap.clone().into();
        value["throughput_bytes_per_sec"] = stats.throughput().into();
        println!("{value}");
        return;
    }
    let kind = match &args.from_snap {
        Some(from) => format!("incremental from {from}"),
        None => "full".to_owned(),
    };
    println!("synced {source} -> {} ({kind})", dest.image_path());
    println!(
        "  diff      {} in {} extents",
        mib(stats.diff_bytes),
        stats.extents
    );
    println!("  read      {}", mib(stats.bytes_read));
    println!("  written   {}", mib(stats.bytes_written));
    println!("  zeroed    {}", mib(stats.bytes_zeroed));
    println!(
        "  skipped   {} (destination reads zeros there already)",
        mib(stats.bytes_skipped)
    );
    println!(
        "  elapsed   {:.2} s ({:.1} MiB/s)",
        stats.elapsed.as_secs_f64(),
        stats.throughput() / (1u64 << 20) as f64
    );
    if stats.created_destination {
        println!(
            "  created   {} ({})",
            dest.image_path(),
            mib(stats.image_size)
        );
    }
    match &stats.end_snap {
        Some(snap) => println!(
            "  snapshot  {}@{snap} ({:.2} s)",
            dest.image_path(),
            stats.snapshot_elapsed.as_secs_f64()
        ),
        None => println!("  snapshot  none (the source was read at HEAD)"),
    }
}

fn sync(args: SyncArgs) -> Result<(), Error> {
    let source = ImageSpec::parse(&args.source)?;
    let dest = ImageSpec::parse(&args.dest)?;
    let mut src_cluster = ClusterSpec::new().id(args.id.clone());
    if let Some(conf) = &args.conf {
        src_cluster = src_cluster.conf(conf);
    }
    if let Some(keyring) = &args.keyring {
        src_cluster = src_cluster.keyring(keyring);
    }
    if let Some(secs) = args.connect_timeout {
        let timeout = Duration::try_from_secs_f64(secs).map_err(|_| {
            Error::from(ImageSpec::parse("").unwrap_err())
        })?;
        src_cluster = src_cluster.connect_timeout(timeout);
    }
    // Another cluster's ceph.conf names its own keyring: the source's keyring is kept only
    // when the destination is reached through the same ceph.conf.
    let mut dest_cluster = src_cluster.clone();
    if let Some(conf) = &args.dest_conf {
        dest_cluster = ClusterSpec::new().id(args.id.clone()).conf(conf);
        if let Some(timeout) = src_cluster.connect_timeout_value() {
            dest_cluster = dest_cluster.connect_timeout(timeout);
        }
    }
    if let Some(id) = &args.dest_id {
        dest_cluster = dest_cluster.id(id.clone());
    }
    if let Some(keyring) = &args.dest_keyring {
        dest_cluster = dest_cluster.keyring(keyring);
    }
    let cancel = CancelToken::new();
    let on_signal = cancel.clone();
    // Without a handler Ctrl-C would kill the process mid-write; with it, the transfer drains
    // its requests and returns a cancelled error, leaving no end snapshot.
    let _ = ctrlc::set_handler(move || on_signal.cancel());
    let mut transfer = DiffTransfer::new(source.clone(), dest.clone())
        .cluster(src_cluster)
        .dest_cluster(dest_cluster)
        .chunk_size(args.chunk_size)
        .window(args.window)
        .whole_object(args.whole_object)
        .cancel_token(cancel);
    if let Some(from) = &args.from_snap {
        transfer = transfer.from_snap(from.clone());
    }
    let show_progress = !args.no_progress && !args.json;
    if show_progress {
        transfer = transfer.on_progress(progress_printer());
    }
    let result = transfer.run();
    if show_progress && std::io::stderr().is_terminal() {
        // The bar is redrawn in place: end its line before anything else is printed.
        eprintln!();
    }
    let stats = result?;
    print_stats(&args, &source, &dest, &stats);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sync(args) => sync(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rbd-diffsync: error: {e}");
            if e.kind() == rbd_diffsync::ErrorKind::Cancelled {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
