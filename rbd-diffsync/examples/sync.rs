//! Transfers the diff of an RBD snapshot into another image with the library API, printing
//! progress on stderr and the resulting `TransferStats` on stdout.
//!
//! ```text
//! cargo run --example sync -p rbd-diffsync -- CONF SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP]
//! ```
//!
//! Without FROM_SNAP the transfer is full (DEST_IMAGE is created when missing); with it, only
//! what changed since FROM_SNAP, which must exist on both images, is transferred.

use std::process::ExitCode;

use rbd_diffsync::{ClusterSpec, DiffTransfer, Error, ImageSpec, Progress};

const USAGE: &str = "usage: sync CONF SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    match run(
        &args[0],
        &args[1],
        &args[2],
        args.get(3).map(String::as_str),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sync: {e} ({}, errno {})", e.kind(), e.errno());
            ExitCode::FAILURE
        }
    }
}

fn run(conf: &str, source: &str, dest: &str, from_snap: Option<&str>) -> Result<(), Error> {
    let source: ImageSpec = source.parse()?;
    let dest: ImageSpec = dest.parse()?;
    let mut transfer = DiffTransfer::new(source, dest)
        .cluster(ClusterSpec::new().conf(conf))
        .on_progress(|p: &Progress| {
            let pct = if p.bytes_total > 0 {
                p.bytes_done as f64 * 100.0 / p.bytes_total as f64
            } else {
                100.0
            };
            eprintln!(
                "{:<10} {pct:5.1}%  {} of {} bytes  {:.2} s",
                p.phase.name(),
                p.bytes_done,
                p.bytes_total,
                p.elapsed.as_secs_f64()
            );
            if let Some(what) = &p.waiting_for {
                eprintln!("  waiting for {what}");
            }
        });
    if let Some(from) = from_snap {
        transfer = transfer.from_snap(from);
    }
    let stats = transfer.run()?;
    println!("{stats:#?}");
    println!(
        "throughput: {:.1} MiB/s",
        stats.throughput() / (1u64 << 20) as f64
    );
    Ok(())
}
