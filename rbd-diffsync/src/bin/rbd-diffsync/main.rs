//! `rbd-diffsync`: the command line.
//!
//! `rbd-diffsync sync [OPTIONS] SRC_IMAGE[@SNAP] DEST_IMAGE` does what
//! `rbd export-diff [--from-snap F] SRC@SNAP - | rbd import-diff - DEST` does, with the rbd
//! CLI's cluster options and its exit statuses (the error's code modulo 256).
//! `rbd-diffsync verify [OPTIONS] IMAGE[@SNAP] IMAGE[@SNAP]` compares two images.
//!
//! This file is the entry: the subcommands, their parsing and dispatch, and the exit. The
//! options shared by the subcommands are in `args`, each subcommand in a file of its own
//! (`sync`, `verify`, `sync_many`, with `jobs` for its job file), the results in `output`,
//! the progress reports in `progress`, the signals in `signals`, and the errors and exit
//! statuses in `failure`.

mod args;
mod failure;
mod jobs;
mod output;
mod progress;
mod signals;
mod sync;
mod sync_many;
mod verify;

use std::io::Write;

use clap::{Parser, Subcommand};

use crate::failure::{status, usage_error};
use crate::sync::SyncArgs;
use crate::sync_many::{SyncManyArgs, SYNC_MANY_HELP};
use crate::verify::VerifyArgs;

/// The exit statuses, for `--help` (README.md's "Command line" section has the same table).
const EXIT_STATUS: &str = "\
Exit status (as rbd's: the error's code modulo 256):
    0  success; also --help, --version and a --dry-run that found nothing wrong
    1  EPERM      the cluster refused the client
    2  ENOENT     a pool, image, snapshot, ceph.conf or keyring does not exist
    5  EIO        a read, write or zeroing of image data failed
   13  EACCES     the client lacks a capability
   16  EBUSY      the destination is locked or open by another client
   17  EEXIST     the end snapshot is on the destination already, or a full transfer would
                  write into an image that holds data or snapshots (--force allows it)
   22  EINVAL     a usage error, a malformed image spec, a setting out of range
   28  ENOSPC     the pool or the cluster is full (122 EDQUOT: a quota is reached)
   95  EOPNOTSUPP the cluster or the image does not support an operation (38 ENOSYS)
  108  ESHUTDOWN  this client was fenced off (blocklisted) while it ran: a rerun of the same
                  transfer found it unresponsive and took the destination over; nothing of
                  this run was committed
  110  ETIMEDOUT  a cluster did not answer in time (see --connect-timeout, --op-timeout)
  125  ECANCELED  cancelled by a first SIGINT (Ctrl-C), SIGTERM or SIGHUP: no end snapshot was
                  created; running the same command again completes the transfer
  200  EDESTCHANGED (library code 4296) the destination changed since --from-snap
  201  EMISMATCH  (library code 4297) the images differ: verify, or sync --verify (then no end
                  snapshot was created; running the sync again rewrites what it wrote)
  any other: the errno of the failure, modulo 256

A second SIGINT, SIGTERM or SIGHUP ends the process at once, killed by that signal (a shell
shows 130, 143 or 129); nothing is lost: the end snapshot does not exist, and a rerun
completes the transfer.";

#[derive(Parser)]
#[command(
    name = "rbd-diffsync",
    version,
    about = "Fast, checked transfers of RBD snapshot diffs",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Transfer SRC_IMAGE@SNAP (changes since --from-snap, or everything) into DEST_IMAGE, then
    /// create SNAP on DEST_IMAGE: `rbd export-diff | rbd import-diff` in one process.
    #[command(after_help = EXIT_STATUS)]
    Sync(Box<SyncArgs>),
    /// Compare two images, each at a snapshot (or HEAD), on one cluster or two: what
    /// `rbd export IMAGE@SNAP - | md5sum` on both tells, with parallel reads, skipping what
    /// neither has allocated, and naming the first byte that differs.
    #[command(after_help = EXIT_STATUS)]
    Verify(Box<VerifyArgs>),
    /// Sync many volumes at once, as listed in JOB_FILE: over one connection per cluster,
    /// within one memory budget and one rate limit, at most --parallel at a time. Each volume
    /// is a `sync` of its own (checks, lock, end snapshot, resume); one that fails does not
    /// stop the others.
    #[command(after_help = SYNC_MANY_HELP)]
    SyncMany(Box<SyncManyArgs>),
}

/// glibc gives each thread that allocates a heap of its own (up to 8 per core), and keeps
/// what is freed there: with the buffers of several transfers and of librados's threads
/// spread over many heaps, a `sync-many` of 8 volumes peaked at 227 MiB. One heap, where a
/// buffer freed by one thread is the next one another thread allocates, brought it to
/// 113-128 MiB (two heaps: 151-179 MiB), with the same time and CPU for it and for a single
/// `sync` (BENCHMARKS.md); the allocations that would contend for it are few and large, the
/// small ones are served from each thread's cache. Set before any thread starts.
fn fewer_malloc_heaps() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's settings; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() {
    fewer_malloc_heaps();
    // A panic has printed its message already (the panic hook): it exits 101, as it would
    // have through Rust's runtime.
    let status = std::panic::catch_unwind(run).unwrap_or(101);
    exit_now(status)
}

/// The command line, to its exit status.
fn run() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Sync(args) => {
            let json = args.output.json();
            status(sync::run(&args, json).map(|()| 0), json)
        }
        Command::Verify(args) => {
            let json = args.output.json();
            status(verify::run(&args, json).map(|()| 0), json)
        }
        Command::SyncMany(args) => {
            let json = args.output.json();
            status(sync_many::run(&args, json), json)
        }
    }
}

/// Ends the process with `status` once what it printed is written, without running the exit
/// handlers and static destructors of librados and librbd (`_exit`): a connection attempt
/// given up on after a Ctrl-C may still be inside librados, and `exit()` with a thread
/// inside librbd or librados crashed the process (SIGSEGV, SIGABRT) after its result was
/// printed. A second signal still ends the process by that signal (see
/// [`handle_signals`]).
fn exit_now(status: u8) -> ! {
    let _ = std::io::stdout().lock().flush();
    let _ = std::io::stderr().lock().flush();
    // SAFETY: _exit ends the process at once; what it printed was flushed above, and it
    // writes no files of its own that would need closing.
    unsafe { libc::_exit(i32::from(status)) }
}
