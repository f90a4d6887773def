//! `rbd-diffsync`: the command line.
//!
//! `rbd-diffsync sync [OPTIONS] SRC_IMAGE[@SNAP] DEST_IMAGE` does what
//! `rbd export-diff [--from-snap F] SRC@SNAP - | rbd import-diff - DEST` does, with the rbd
//! CLI's cluster options and its exit statuses (the error's code modulo 256).
//! `rbd-diffsync verify [OPTIONS] IMAGE[@SNAP] IMAGE[@SNAP]` compares two images.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rbd_diffsync::error::code_name;
use rbd_diffsync::{
    BatchProgress, CancelToken, ClusterSpec, DiffTransfer, Error, ErrorKind, ImageSpec, Phase,
    Plan, Progress, SyncMany, TransferStats, Verify, VerifyStats, VolumeState,
};
use serde_json::json;

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

/// The job file and the exit status of `sync-many`, for `--help`.
const SYNC_MANY_HELP: &str = "\
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
struct SyncManyArgs {
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
    output: OutputArgs,
    #[command(flatten)]
    clusters: ClusterArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Plain,
    Json,
}

#[derive(Args)]
struct SyncArgs {
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
    output: OutputArgs,
    #[command(flatten)]
    clusters: ClusterArgs,
}

#[derive(Args)]
struct VerifyArgs {
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
    output: OutputArgs,
    #[command(flatten)]
    clusters: ClusterArgs,
}

/// Output and progress options.
#[derive(Args)]
struct OutputArgs {
    /// Output format: the result on stdout, progress on stderr (JSON: one object per line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "plain")]
    format: Format,
    /// Shorthand for --format json.
    #[arg(long)]
    json: bool,
    /// Print no progress.
    #[arg(long)]
    no_progress: bool,
    /// Least time between two progress reports, in seconds.
    #[arg(long, value_name = "SECS", default_value = "0.2", value_parser = parse_interval)]
    progress_interval: Duration,
}

impl OutputArgs {
    fn json(&self) -> bool {
        self.json || self.format == Format::Json
    }

    /// How progress is shown, if at all.
    fn progress(&self) -> Option<ProgressMode> {
        if self.no_progress {
            None
        } else if self.json() {
            Some(ProgressMode::Json)
        } else if std::io::stderr().is_terminal() {
            Some(ProgressMode::Bar)
        } else {
            Some(ProgressMode::Lines)
        }
    }
}

/// The rbd CLI's cluster options, for the source (and the destination unless it is another
/// cluster), and their `--dest-*` forms.
#[derive(Args)]
struct ClusterArgs {
    /// ceph.conf of the source cluster (default as rbd: CEPH_ARGS, $CEPH_CONF,
    /// /etc/ceph/$cluster.conf, ~/.ceph/$cluster.conf, ./$cluster.conf).
    #[arg(
        short = 'c',
        long,
        value_name = "PATH",
        help_heading = "Cluster options"
    )]
    conf: Option<PathBuf>,
    /// Client id on the source cluster (default as rbd: CEPH_ARGS, then admin).
    #[arg(
        long,
        visible_alias = "user",
        value_name = "ID",
        conflicts_with = "name",
        help_heading = "Cluster options"
    )]
    id: Option<String>,
    /// Client name on the source cluster, `type.id` (client.backup).
    #[arg(
        short = 'n',
        long,
        value_name = "TYPE.ID",
        help_heading = "Cluster options"
    )]
    name: Option<String>,
    /// Cluster name, which selects /etc/ceph/NAME.conf when no ceph.conf is given (default
    /// ceph).
    #[arg(long, value_name = "NAME", help_heading = "Cluster options")]
    cluster: Option<String>,
    /// Monitor addresses, `host[:port][,host[:port]...]`, instead of ceph.conf's.
    #[arg(
        short = 'm',
        long,
        value_name = "ADDRS",
        help_heading = "Cluster options"
    )]
    mon_host: Option<String>,
    /// Keyring (default: as ceph.conf says).
    #[arg(
        short = 'k',
        long,
        value_name = "PATH",
        help_heading = "Cluster options"
    )]
    keyring: Option<PathBuf>,
    /// Give up connecting after this many seconds (default: 30, unless ceph.conf sets
    /// client_mount_timeout); applies to the destination too unless --dest-connect-timeout is
    /// given. A key the monitors refuse fails within seconds whatever this says.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout, help_heading = "Cluster options")]
    connect_timeout: Option<Duration>,
    /// Fail an operation the cluster has not answered after this many seconds (default: 60,
    /// unless ceph.conf sets rados_osd_op_timeout / rados_mon_op_timeout; 0: wait for ever);
    /// applies to the destination too unless --dest-op-timeout is given. A rerun of a
    /// transfer that timed out resumes it.
    #[arg(long, value_name = "SECS", value_parser = parse_op_timeout, help_heading = "Cluster options")]
    op_timeout: Option<Duration>,
    /// Any librados or librbd option, as `rbd --KEY VALUE` sets it (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE", value_parser = parse_option,
          help_heading = "Cluster options")]
    options: Vec<(String, String)>,

    /// ceph.conf of the destination cluster. --dest-conf, --dest-cluster or --dest-mon-host
    /// make the destination another cluster, which starts from its own settings (the source's
    /// keyring and options are not carried over; its client id is, unless --dest-id or
    /// --dest-name is given). Without them the destination uses the source's settings.
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "Destination cluster options"
    )]
    dest_conf: Option<PathBuf>,
    /// Client id on the destination cluster (default: the source's).
    #[arg(
        long,
        visible_alias = "dest-user",
        value_name = "ID",
        conflicts_with = "dest_name",
        help_heading = "Destination cluster options"
    )]
    dest_id: Option<String>,
    /// Client name on the destination cluster, `type.id` (default: the source's).
    #[arg(
        long,
        value_name = "TYPE.ID",
        help_heading = "Destination cluster options"
    )]
    dest_name: Option<String>,
    /// Cluster name of the destination (another cluster).
    #[arg(
        long,
        value_name = "NAME",
        help_heading = "Destination cluster options"
    )]
    dest_cluster: Option<String>,
    /// Monitor addresses of the destination (another cluster).
    #[arg(
        long,
        value_name = "ADDRS",
        help_heading = "Destination cluster options"
    )]
    dest_mon_host: Option<String>,
    /// Keyring for the destination cluster (default: the source's on the same cluster, as its
    /// ceph.conf says on another).
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "Destination cluster options"
    )]
    dest_keyring: Option<PathBuf>,
    /// Connect timeout for the destination cluster (default: --connect-timeout).
    #[arg(long, value_name = "SECS", value_parser = parse_timeout,
          help_heading = "Destination cluster options")]
    dest_connect_timeout: Option<Duration>,
    /// Operation timeout for the destination cluster (default: --op-timeout).
    #[arg(long, value_name = "SECS", value_parser = parse_op_timeout,
          help_heading = "Destination cluster options")]
    dest_op_timeout: Option<Duration>,
    /// A librados or librbd option for the destination only (repeatable).
    #[arg(long = "dest-option", value_name = "KEY=VALUE", value_parser = parse_option,
          help_heading = "Destination cluster options")]
    dest_options: Vec<(String, String)>,
}

impl ClusterArgs {
    fn source(&self) -> ClusterSpec {
        let mut spec = ClusterSpec::new();
        if let Some(conf) = &self.conf {
            spec = spec.conf(conf);
        }
        if let Some(id) = &self.id {
            spec = spec.id(id.clone());
        }
        if let Some(name) = &self.name {
            spec = spec.name(name.clone());
        }
        if let Some(cluster) = &self.cluster {
            spec = spec.cluster_name(cluster.clone());
        }
        if let Some(mon_host) = &self.mon_host {
            spec = spec.mon_host(mon_host.clone());
        }
        if let Some(keyring) = &self.keyring {
            spec = spec.keyring(keyring);
        }
        if let Some(timeout) = self.connect_timeout {
            spec = spec.connect_timeout(timeout);
        }
        if let Some(timeout) = self.op_timeout {
            spec = spec.op_timeout(timeout);
        }
        for (key, value) in &self.options {
            spec = spec.option(key.clone(), value.clone());
        }
        spec
    }

    /// The source's settings, or, when a --dest-conf, --dest-cluster or --dest-mon-host names
    /// another cluster, that cluster's own with the source's client; then the --dest-* ones.
    fn dest(&self, source: &ClusterSpec) -> ClusterSpec {
        let other_cluster =
            self.dest_conf.is_some() || self.dest_cluster.is_some() || self.dest_mon_host.is_some();
        let mut spec = if other_cluster {
            let mut spec = ClusterSpec::new();
            if let Some(name) = source.client_name() {
                spec = spec.name(name);
            }
            if let Some(conf) = &self.dest_conf {
                spec = spec.conf(conf);
            }
            if let Some(cluster) = &self.dest_cluster {
                spec = spec.cluster_name(cluster.clone());
            }
            if let Some(mon_host) = &self.dest_mon_host {
                spec = spec.mon_host(mon_host.clone());
            }
            if let Some(timeout) = self.connect_timeout {
                spec = spec.connect_timeout(timeout);
            }
            if let Some(timeout) = self.op_timeout {
                spec = spec.op_timeout(timeout);
            }
            spec
        } else {
            source.clone()
        };
        if let Some(timeout) = self.dest_connect_timeout {
            spec = spec.connect_timeout(timeout);
        }
        if let Some(timeout) = self.dest_op_timeout {
            spec = spec.op_timeout(timeout);
        }
        if let Some(id) = &self.dest_id {
            spec = spec.id(id.clone());
        }
        if let Some(name) = &self.dest_name {
            spec = spec.name(name.clone());
        }
        if let Some(keyring) = &self.dest_keyring {
            spec = spec.keyring(keyring);
        }
        for (key, value) in &self.dest_options {
            spec = spec.option(key.clone(), value.clone());
        }
        spec
    }
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

fn parse_seconds(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) {
        return Err(format!(
            "{s:?} is not a number of seconds {}",
            if zero_ok { "of 0 or more" } else { "above 0" }
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too many seconds"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    parse_seconds(s, false)
}

/// 0 waits for ever.
fn parse_op_timeout(s: &str) -> Result<Duration, String> {
    parse_seconds(s, true)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    parse_seconds(s, true)
}

/// `KEY=VALUE`, the key spelt with `_` or `-` as ceph accepts it on its command line.
fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.replace('-', "_"), value.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The width of the terminal on stderr, if it is one that says.
fn terminal_width() -> Option<usize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the valid pointer it is given.
    let ret = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    (ret == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// How progress is shown on stderr.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    /// A bar redrawn in place (stderr is a terminal).
    Bar,
    /// A line at each change of phase, at the start of a wait and every 5 s.
    Lines,
    /// One JSON object per report.
    Json,
}

/// Whether the bar has a line open on the terminal, which anything else printed must end or
/// clear first.
#[derive(Clone, Default)]
struct OpenLine(Arc<AtomicBool>);

impl OpenLine {
    /// Ends the bar's line, if one is open, so that what follows starts on a line of its own.
    /// The bar is drawn and marked open under the lock of stderr, which `err` holds.
    fn end(&self, err: &mut std::io::StderrLock<'_>) {
        if self.0.swap(false, Ordering::SeqCst) {
            let _ = writeln!(err);
        }
    }
}

const LINE_EVERY: Duration = Duration::from_secs(5);

/// The progress callback: see [`ProgressMode`].
fn progress_printer(mode: ProgressMode, open: OpenLine) -> impl FnMut(&Progress) + Send + 'static {
    let width = terminal_width().unwrap_or(80).max(20);
    let mut last_line: Option<Instant> = None;
    let mut last_phase: Option<Phase> = None;
    let mut last_wait: Option<String> = None;
    let mut copy_started: Option<(Phase, Duration)> = None;
    move |p: &Progress| {
        let counting = matches!(p.phase, Phase::Copying | Phase::Verifying);
        if counting && copy_started.is_none_or(|(phase, _)| phase != p.phase) {
            copy_started = Some((p.phase, p.elapsed));
        }
        let mut err = std::io::stderr().lock();
        if mode == ProgressMode::Json {
            // By hand, to keep the order of the fields; the only string is escaped by serde.
            let waiting_for =
                serde_json::to_string(&p.waiting_for).unwrap_or_else(|_| "null".to_owned());
            let _ = writeln!(
                err,
                "{{\"phase\":\"{}\",\"bytes_done\":{},\"bytes_total\":{},\"elapsed\":{:.3},\
                 \"waiting_for\":{waiting_for},\"waited\":{:.3}}}",
                p.phase.name(),
                p.bytes_done,
                p.bytes_total,
                p.elapsed.as_secs_f64(),
                p.waited.as_secs_f64(),
            );
            return;
        }
        let rate = copy_started.map(|(_, start)| {
            let secs = p.elapsed.saturating_sub(start).as_secs_f64().max(1e-3);
            p.bytes_done as f64 / secs / (1u64 << 20) as f64
        });
        let pct = if p.bytes_total > 0 {
            p.bytes_done as f64 * 100.0 / p.bytes_total as f64
        } else {
            100.0
        };
        // The total is known once copying has started.
        let figures = (p.bytes_total > 0).then(|| {
            format!(
                "{pct:5.1}% {} of {}, {:.1} MiB/s",
                mib(p.bytes_done),
                mib(p.bytes_total),
                rate.unwrap_or(0.0)
            )
        });
        let waiting = p
            .waiting_for
            .as_ref()
            .map(|what| format!("waiting for {what} ({} s)", p.waited.as_secs()));
        if mode == ProgressMode::Bar {
            let mut line = format!("{:<10}", p.phase.name());
            if let Some(figures) = &figures {
                let bar = 24;
                let filled = ((pct / 100.0) * bar as f64) as usize;
                line.push_str(&format!(
                    " [{}{}] {figures}",
                    "#".repeat(filled.min(bar)),
                    "-".repeat(bar - filled.min(bar))
                ));
            }
            if let Some(waiting) = &waiting {
                line.push_str("  ");
                line.push_str(waiting);
            }
            let line: String = line.chars().take(width - 1).collect();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
            open.0.store(true, Ordering::SeqCst);
            return;
        }
        let new_wait = p.waiting_for.is_some() && p.waiting_for != last_wait;
        last_wait.clone_from(&p.waiting_for);
        let due = last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
        if last_phase != Some(p.phase) || new_wait || due {
            last_phase = Some(p.phase);
            last_line = Some(Instant::now());
            let mut line = format!("progress: {}", p.phase.name());
            if let Some(figures) = &figures {
                line.push(' ');
                line.push_str(figures.trim_start());
            }
            line.push_str(&format!(", {:.1} s", p.elapsed.as_secs_f64()));
            if let Some(waiting) = &waiting {
                line.push_str("; ");
                line.push_str(waiting);
            }
            let _ = writeln!(err, "{line}");
        }
    }
}

/// The first SIGINT, SIGTERM or SIGHUP cancels `token`; a second one kills the process at
/// once: its handler restores the default disposition and raises the signal again. The
/// handlers only set flags; the message is printed by a thread of signal-hook's iterator.
fn handle_signals(token: CancelToken, open: OpenLine, effect: &'static str) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];
    let received = Arc::new(AtomicBool::new(false));
    for signal in SIGNALS {
        // Registered first, so it runs before the flag is set: only a later signal finds it set.
        signal_hook::flag::register_conditional_default(signal, received.clone())?;
        signal_hook::flag::register(signal, received.clone())?;
    }
    let mut signals = signal_hook::iterator::Signals::new(SIGNALS)?;
    std::thread::Builder::new()
        .name("rbd-diffsync-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                token.cancel();
                let name = signal_hook::low_level::signal_name(signal).unwrap_or("a signal");
                let mut err = std::io::stderr().lock();
                open.end(&mut err);
                let _ = writeln!(
                    err,
                    "rbd-diffsync: {name} received: cancelling ({effect}); send it again to stop \
                     at once"
                );
            }
        })?;
    Ok(())
}

/// The result: the "synced" block, or one JSON object.
fn stats_text(json: bool, stats: &TransferStats) -> String {
    if json {
        let mut value = serde_json::to_value(stats).expect("stats serialise");
        value["throughput_bytes_per_sec"] = stats.throughput().into();
        return format!("{value}\n");
    }
    let (source, dest) = (&stats.source, &stats.dest);
    let kind = match &stats.from_snap {
        Some(from) => format!("incremental from {from}"),
        None => "full".to_owned(),
    };
    let mut lines = vec![format!("synced {source} -> {dest} ({kind})")];
    if stats.continued_interrupted {
        lines.push("  continued an interrupted transfer of this diff, now complete".to_owned());
    }
    if let Some(client) = &stats.broke_lock_of {
        lines.push(format!(
            "  fenced    the killed client {client} of the interrupted transfer (blocklisted, \
             its lock broken)"
        ));
    }
    if stats.bytes_resumed > 0 {
        lines.push(format!(
            "  resumed   {} done by the interrupted transfer, not done again",
            mib(stats.bytes_resumed)
        ));
    }
    if stats.bytes_rechecked > 0 {
        lines.push(format!(
            "  rechecked {} below its checkpoint compared with the source, not trusted: the \
             interrupted transfer had let go of the destination",
            mib(stats.bytes_rechecked)
        ));
    }
    lines.extend([
        format!(
            "  diff      {} in {} extents",
            mib(stats.diff_bytes),
            stats.extents
        ),
        format!("  read      {}", mib(stats.bytes_read)),
        format!("  written   {}", mib(stats.bytes_written)),
        format!("  zeroed    {}", mib(stats.bytes_zeroed)),
        format!(
            "  skipped   {} (destination reads zeros there already)",
            mib(stats.bytes_skipped)
        ),
    ]);
    if stats.bytes_verified > 0 {
        lines.push(format!(
            "  verified  {} read back from both images, equal",
            mib(stats.bytes_verified)
        ));
    }
    lines.push(format!(
        "  elapsed   {:.2} s ({:.1} MiB/s)",
        stats.elapsed.as_secs_f64(),
        stats.throughput() / (1u64 << 20) as f64
    ));
    if stats.created_destination {
        lines.push(format!("  created   {dest} ({})", mib(stats.image_size)));
    }
    lines.push(match &stats.end_snap {
        Some(snap) => format!(
            "  snapshot  {dest}@{snap} ({:.2} s)",
            stats.snapshot_elapsed.as_secs_f64()
        ),
        None => "  snapshot  none (the source was read at HEAD)".to_owned(),
    });
    lines.join("\n") + "\n"
}

/// The result of a verification that found the images equal: a block of lines, or one JSON
/// object.
fn verify_text(json: bool, stats: &VerifyStats) -> String {
    if json {
        let mut value = serde_json::to_value(stats).expect("stats serialise");
        value["equal"] = true.into();
        value["throughput_bytes_per_sec"] = stats.throughput().into();
        return format!("{value}\n");
    }
    [
        format!("equal: {} and {}", stats.source, stats.dest),
        format!("  size      {}", mib(stats.image_size)),
        format!("  compared  {}", mib(stats.bytes_compared)),
        format!(
            "  skipped   {} (allocated on neither image)",
            mib(stats.bytes_skipped)
        ),
        format!(
            "  elapsed   {:.2} s ({:.1} MiB/s)",
            stats.elapsed.as_secs_f64(),
            stats.throughput() / (1u64 << 20) as f64
        ),
    ]
    .join("\n")
        + "\n"
}

/// What a dry run found the sync would do: a block of lines, or one JSON object.
fn plan_text(plan: &Plan, json: bool) -> String {
    if json {
        let mut value = serde_json::to_value(plan).expect("plan serialises");
        value["dry_run"] = true.into();
        return format!("{value}\n");
    }
    let kind = match &plan.from_snap {
        Some(from) => format!("incremental from {from}"),
        None => "full".to_owned(),
    };
    let dest = &plan.dest;
    let mut lines = vec![format!(
        "would sync {} -> {dest} ({kind}); dry run, nothing written",
        plan.source
    )];
    if plan.continues_interrupted {
        lines.push("  continues an interrupted transfer of this diff".to_owned());
    }
    if plan.bytes_resumed > 0 {
        lines.push(format!(
            "  resumes   at offset {}: {} done by the interrupted transfer",
            plan.resume_from,
            mib(plan.bytes_resumed)
        ));
    }
    if plan.overwrites_destination {
        lines.push("  overwrites what the destination holds (--force)".to_owned());
    }
    lines.push(match plan.dest_size {
        None => format!("  create    {dest} ({})", mib(plan.source_size)),
        Some(size) => format!("  create    no: {dest} exists ({})", mib(size)),
    });
    lines.push(match plan.dest_size {
        Some(size) if size != plan.source_size => {
            format!("  resize    {} -> {}", mib(size), mib(plan.source_size))
        }
        _ => "  resize    no".to_owned(),
    });
    lines.extend([
        format!(
            "  diff      {} in {} extents",
            mib(plan.diff_bytes),
            plan.extents
        ),
        format!("  data      {} to read and write", mib(plan.data_bytes)),
        format!("  zeros     {} to make read as zeros", mib(plan.zero_bytes)),
    ]);
    lines.push(match &plan.end_snap {
        Some(snap) => format!("  snapshot  {dest}@{snap}"),
        None => "  snapshot  none (the source is read at HEAD)".to_owned(),
    });
    lines.join("\n") + "\n"
}

/// Writes the result on stdout; a closed stdout is no reason to fail a finished transfer.
fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The exit status of a failure with this code, as the rbd CLI's (`abs(errno)`, which the
/// system cuts to its low byte), never 0.
fn exit_status(code: i32) -> u8 {
    match (code.unsigned_abs() & 0xff) as u8 {
        0 => 1,
        status => status,
    }
}

/// The error object; `offset` only for a mismatch.
fn error_json(
    kind: ErrorKind,
    errno: i32,
    message: &str,
    image: Option<&str>,
    snap: Option<&str>,
    offset: Option<u64>,
) -> serde_json::Value {
    let mut value = json!({
        "error": {
            "kind": kind.name(),
            "errno": errno,
            "code": code_name(errno),
            "message": message,
            "image": image,
            "snap": snap,
        }
    });
    if let Some(offset) = offset {
        value["error"]["offset"] = offset.into();
    }
    value
}

/// A failure of the command itself, not of a transfer: as [`fail`].
fn fail_with(kind: ErrorKind, errno: i32, message: &str, json: bool) -> u8 {
    eprintln!("rbd-diffsync: error: {message}");
    if json {
        let value = error_json(kind, errno, message, None, None, None);
        print_out(&format!("{value}\n"));
    }
    exit_status(errno)
}

fn fail(e: &Error, json: bool) -> u8 {
    eprintln!("rbd-diffsync: error: {e}");
    if json {
        let value = error_json(
            e.kind(),
            e.errno(),
            e.message(),
            e.image(),
            e.snap(),
            e.offset(),
        );
        print_out(&format!("{value}\n"));
    }
    exit_status(e.errno())
}

fn sync(args: &SyncArgs, json: bool) -> Result<(), Error> {
    let source = ImageSpec::parse(&args.source)?;
    let dest = ImageSpec::parse(&args.dest)?;
    let source_cluster = args.clusters.source();
    let dest_cluster = args.clusters.dest(&source_cluster);
    let mut transfer = DiffTransfer::new(source, dest)
        .cluster(source_cluster)
        .dest_cluster(dest_cluster)
        .chunk_size(args.chunk_size)
        .window(args.window)
        .whole_object(args.whole_object)
        .overwrite_existing(args.force)
        .verify(args.verify)
        .rate_limit(args.max_rate.unwrap_or(0))
        .progress_interval(args.output.progress_interval);
    if let Some(from) = &args.from_snap {
        transfer = transfer.from_snap(from.clone());
    }
    let open = OpenLine::default();
    if let Some(mode) = args.output.progress() {
        transfer = transfer.on_progress(progress_printer(mode, open.clone()));
    }
    if args.dry_run {
        // Nothing is written: a signal may end a dry run at once, as it would by default.
        let plan = transfer.plan();
        open.end(&mut std::io::stderr().lock());
        print_out(&plan_text(&plan?, json));
        return Ok(());
    }
    let effect = "the requests in flight drain and no end snapshot is created, unless it is \
                  being created already";
    let cancel = cancel_on_signals(&open, effect);
    let result = transfer.cancel_token(cancel).run();
    open.end(&mut std::io::stderr().lock());
    print_out(&stats_text(json, &result?));
    Ok(())
}

/// A token that the first SIGINT, SIGTERM or SIGHUP cancels (see [`handle_signals`]).
fn cancel_on_signals(open: &OpenLine, effect: &'static str) -> CancelToken {
    let cancel = CancelToken::new();
    if let Err(e) = handle_signals(cancel.clone(), open.clone(), effect) {
        eprintln!(
            "rbd-diffsync: warning: cannot handle signals ({e}): a signal ends the process at once"
        );
    }
    cancel
}

fn verify(args: &VerifyArgs, json: bool) -> Result<(), Error> {
    let source = ImageSpec::parse(&args.source)?;
    let dest = ImageSpec::parse(&args.dest)?;
    let source_cluster = args.clusters.source();
    let dest_cluster = args.clusters.dest(&source_cluster);
    let mut verify = Verify::new(source, dest)
        .cluster(source_cluster)
        .dest_cluster(dest_cluster)
        .chunk_size(args.chunk_size)
        .window(args.window)
        .progress_interval(args.output.progress_interval);
    let open = OpenLine::default();
    if let Some(mode) = args.output.progress() {
        verify = verify.on_progress(progress_printer(mode, open.clone()));
    }
    let cancel = cancel_on_signals(&open, "the reads in flight drain");
    let result = verify.cancel_token(cancel).run();
    open.end(&mut std::io::stderr().lock());
    print_out(&verify_text(json, &result?));
    Ok(())
}

/// Whether a command line that clap refused asked for JSON output.
fn json_requested(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut previous = OsString::new();
    for arg in args.into_iter().skip(1) {
        if arg == "--" {
            break;
        }
        if arg == "--json" || arg == "--format=json" || (previous == "--format" && arg == "json") {
            return true;
        }
        previous = arg;
    }
    false
}

/// clap's refusal of the command line: its usual message, exit status EINVAL (22), and the
/// JSON error object when JSON was asked for; `--help` and `--version` exit 0.
fn usage_error(e: clap::Error) -> u8 {
    let _ = e.print();
    if !e.use_stderr() {
        return 0;
    }
    if json_requested(std::env::args_os()) {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let value = error_json(
            ErrorKind::InvalidArgument,
            libc::EINVAL,
            message,
            None,
            None,
            None,
        );
        print_out(&format!("{value}\n"));
    }
    exit_status(libc::EINVAL)
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
            match sync(&args, json) {
                Ok(()) => 0,
                Err(e) => fail(&e, json),
            }
        }
        Command::Verify(args) => {
            let json = args.output.json();
            match verify(&args, json) {
                Ok(()) => 0,
                Err(e) => fail(&e, json),
            }
        }
        Command::SyncMany(args) => {
            let json = args.output.json();
            match sync_many(&args, json) {
                Ok(status) => status,
                Err(e) => fail(&e, json),
            }
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

/// One volume of a job file.
#[derive(Debug, PartialEq, Eq)]
struct JobLine {
    source: String,
    dest: String,
    from_snap: Option<String>,
    force: bool,
    verify: bool,
}

/// Reads a job file (see [`SYNC_MANY_HELP`]); what is wrong with it, if anything.
fn parse_job(text: &str) -> Result<Vec<JobLine>, String> {
    let mut jobs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| format!("job file, line {}: {why}", n + 1);
        let job = if line.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            let text = |key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
            if let Some(obj) = v.as_object() {
                if let Some(k) = obj.keys().find(|k| {
                    !["source", "dest", "from_snap", "force", "verify"].contains(&k.as_str())
                }) {
                    return Err(bad(format!("unknown key {k:?}")));
                }
            }
            let flag = |key: &str| match v.get(key) {
                None => Ok(false),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| bad(format!("{key:?} is not true or false"))),
            };
            JobLine {
                source: text("source").ok_or_else(|| bad("no \"source\" string".into()))?,
                dest: text("dest").ok_or_else(|| bad("no \"dest\" string".into()))?,
                from_snap: text("from_snap"),
                force: flag("force")?,
                verify: flag("verify")?,
            }
        } else {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                [source, dest] | [source, dest, _] => JobLine {
                    source: source.to_owned(),
                    dest: dest.to_owned(),
                    from_snap: words.get(2).map(|s| (*s).to_owned()),
                    force: false,
                    verify: false,
                },
                _ => {
                    return Err(bad(
                        "not SRC_IMAGE@SNAP DEST_IMAGE [FROM_SNAP] nor a JSON object".into(),
                    ))
                }
            }
        };
        jobs.push(job);
    }
    if jobs.is_empty() {
        return Err("the job file lists no volume".to_owned());
    }
    Ok(jobs)
}

fn sync_many(args: &SyncManyArgs, json: bool) -> Result<u8, Error> {
    let text = if args.job.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map(|_| text)
    } else {
        std::fs::read_to_string(&args.job)
    };
    let text = match text {
        Ok(text) => text,
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let message = format!("cannot read the job file {}: {e}", args.job.display());
            return Ok(fail_with(
                ErrorKind::from_errno(errno),
                errno,
                &message,
                json,
            ));
        }
    };
    let mut jobs = match parse_job(&text) {
        Ok(jobs) => jobs,
        Err(message) => {
            let kind = ErrorKind::InvalidArgument;
            return Ok(fail_with(kind, libc::EINVAL, &message, json));
        }
    };
    for job in &mut jobs {
        job.force |= args.force;
        job.verify |= args.verify;
    }
    let source_cluster = args.clusters.source();
    let dest_cluster = args.clusters.dest(&source_cluster);
    let mut transfers = Vec::new();
    for job in &jobs {
        let mut t = DiffTransfer::new(ImageSpec::parse(&job.source)?, ImageSpec::parse(&job.dest)?)
            .cluster(source_cluster.clone())
            .dest_cluster(dest_cluster.clone())
            .chunk_size(args.chunk_size)
            .window(args.window)
            .whole_object(args.whole_object)
            .overwrite_existing(job.force)
            .verify(job.verify)
            .progress_interval(args.output.progress_interval);
        if let Some(from) = &job.from_snap {
            t = t.from_snap(from.clone());
        }
        transfers.push(t);
    }
    // The window and chunk size are checked by each transfer (at most 1024 × 1 GiB).
    let budget =
        usize::try_from((args.window as u64).saturating_mul(args.chunk_size)).unwrap_or(usize::MAX);
    let open = OpenLine::default();
    let effect = "the requests in flight drain and no end snapshot is created, unless it is \
                  being created already";
    let cancel = cancel_on_signals(&open, effect);
    let mut batch = SyncMany::new(transfers)
        .parallel(args.parallel)
        .memory_budget(budget)
        .rate_limit(args.max_rate.unwrap_or(0))
        .progress_interval(args.output.progress_interval)
        .cancel_token(cancel);
    if let Some(mode) = args.output.progress() {
        batch = batch.on_progress(batch_printer(mode, open.clone()));
    }
    let started = Instant::now();
    let results = batch.run();
    open.end(&mut std::io::stderr().lock());
    let elapsed = started.elapsed();
    print_out(&many_text(json, &jobs, &results, elapsed));
    let code = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .map_or(0, |e| exit_status(e.errno()));
    Ok(code)
}

/// The result of a batch: a line per volume and a summary, or one JSON object.
fn many_text(
    json: bool,
    jobs: &[JobLine],
    results: &[Result<TransferStats, Error>],
    elapsed: Duration,
) -> String {
    let ok: Vec<&TransferStats> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let failed = results.len() - ok.len();
    let sum = |f: fn(&TransferStats) -> u64| ok.iter().map(|s| f(s)).sum::<u64>();
    let (read, written, zeroed, diff, verified) = (
        sum(|s| s.bytes_read),
        sum(|s| s.bytes_written),
        sum(|s| s.bytes_zeroed),
        sum(|s| s.diff_bytes),
        sum(|s| s.bytes_verified),
    );
    let secs = elapsed.as_secs_f64();
    let per_sec = if secs > 0.0 { diff as f64 / secs } else { 0.0 };
    if json {
        let volumes: Vec<serde_json::Value> = jobs
            .iter()
            .zip(results)
            .map(|(job, r)| {
                let mut v = json!({
                    "source": job.source,
                    "dest": job.dest,
                    "from_snap": job.from_snap,
                    "ok": r.is_ok(),
                });
                match r {
                    Ok(stats) => {
                        let mut s = serde_json::to_value(stats).expect("stats serialise");
                        s["throughput_bytes_per_sec"] = stats.throughput().into();
                        v["stats"] = s;
                    }
                    Err(e) => {
                        let e = error_json(
                            e.kind(),
                            e.errno(),
                            e.message(),
                            e.image(),
                            e.snap(),
                            e.offset(),
                        );
                        v["error"] = e["error"].clone();
                    }
                }
                v
            })
            .collect();
        let value = json!({
            "volumes": volumes,
            "succeeded": ok.len(),
            "failed": failed,
            "bytes_read": read,
            "bytes_written": written,
            "bytes_zeroed": zeroed,
            "diff_bytes": diff,
            "bytes_verified": verified,
            "elapsed": secs,
            "throughput_bytes_per_sec": per_sec,
        });
        return format!("{value}\n");
    }
    let mut lines = Vec::new();
    for (job, r) in jobs.iter().zip(results) {
        let kind = match &job.from_snap {
            Some(from) => format!("incremental from {from}"),
            None => "full".to_owned(),
        };
        lines.push(match r {
            Ok(s) => format!(
                "ok      {} -> {} ({kind}): {} written, {} zeroed{} in {:.2} s",
                s.source,
                s.dest,
                mib(s.bytes_written),
                mib(s.bytes_zeroed),
                if job.verify {
                    format!(", {} verified", mib(s.bytes_verified))
                } else {
                    String::new()
                },
                s.elapsed.as_secs_f64()
            ),
            Err(e) => format!(
                "FAILED  {} -> {} ({kind}): {e} ({})",
                job.source,
                job.dest,
                code_name(e.errno()).unwrap_or("error")
            ),
        });
    }
    lines.push(format!(
        "synced {} of {} volumes, {failed} failed: diff {}, read {}, written {}, zeroed {} in \
         {secs:.2} s ({:.1} MiB/s)",
        ok.len(),
        results.len(),
        mib(diff),
        mib(read),
        mib(written),
        mib(zeroed),
        per_sec / (1u64 << 20) as f64
    ));
    lines.join("\n") + "\n"
}

/// The progress of a batch on stderr: a line when a volume starts or ends and every 5 s (a
/// bar on a terminal), or one JSON object per report.
fn batch_printer(
    mode: ProgressMode,
    open: OpenLine,
) -> impl FnMut(&BatchProgress) + Send + 'static {
    let width = terminal_width().unwrap_or(80).max(20);
    let mut states: Vec<VolumeState> = Vec::new();
    let mut last_line: Option<Instant> = None;
    move |p: &BatchProgress| {
        let mut err = std::io::stderr().lock();
        if mode == ProgressMode::Json {
            let volumes: Vec<serde_json::Value> = p
                .volumes
                .iter()
                .map(|v| {
                    json!({
                        "dest": v.dest,
                        "state": v.state.name(),
                        "phase": v.phase.map(Phase::name),
                        "bytes_done": v.bytes_done,
                        "bytes_total": v.bytes_total,
                        "waiting_for": v.waiting_for,
                    })
                })
                .collect();
            let value = json!({
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "queued": p.queued,
                "running": p.running,
                "succeeded": p.succeeded,
                "failed": p.failed,
                "elapsed": (p.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "volumes": volumes,
            });
            let _ = writeln!(err, "{value}");
            return;
        }
        let rate = p.bytes_done as f64 / p.elapsed.as_secs_f64().max(1e-3) / (1u64 << 20) as f64;
        let total = format!(
            "{} running, {} done, {} failed, {} queued; {} of {}, {rate:.1} MiB/s",
            p.running,
            p.succeeded,
            p.failed,
            p.queued,
            mib(p.bytes_done),
            mib(p.bytes_total)
        );
        if mode == ProgressMode::Bar {
            let line: String = format!("volumes: {total}")
                .chars()
                .take(width - 1)
                .collect();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
            open.0.store(true, Ordering::SeqCst);
            return;
        }
        states.resize(p.volumes.len(), VolumeState::Queued);
        for (k, v) in p.volumes.iter().enumerate() {
            if v.state != states[k] {
                states[k] = v.state;
                let _ = writeln!(
                    err,
                    "progress: [{}/{}] {} {}",
                    k + 1,
                    p.volumes.len(),
                    v.dest,
                    v.state.name()
                );
            }
        }
        if last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
            last_line = Some(Instant::now());
            let _ = writeln!(err, "progress: {total}, {:.1} s", p.elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn clusters(args: &[&str]) -> (ClusterSpec, ClusterSpec) {
        let argv = ["rbd-diffsync", "sync"]
            .iter()
            .chain(args)
            .chain(&["rbd/a@s", "b"]);
        let Command::Sync(sync) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("a sync")
        };
        let source = sync.clusters.source();
        let dest = sync.clusters.dest(&source);
        (source, dest)
    }

    #[test]
    fn the_destination_shares_the_source_cluster_unless_told_otherwise() {
        let (source, dest) = clusters(&[
            "-c",
            "/a.conf",
            "--user",
            "x",
            "-k",
            "/x.keyring",
            "-o",
            "rbd-default-pool=v",
            "--connect-timeout",
            "7",
        ]);
        assert_eq!(source, dest);
        assert_eq!(source.client_name(), Some("client.x"));
        assert_eq!(source.options(), [("rbd_default_pool".into(), "v".into())]);

        let (_, dest) = clusters(&["-c", "/a.conf", "--id", "x", "--dest-id", "y"]);
        assert_eq!(dest.conf_path(), Some(Path::new("/a.conf")));
        assert_eq!(dest.client_name(), Some("client.y"));
    }

    #[test]
    fn another_cluster_starts_from_its_own_settings_with_the_source_client() {
        for other in [
            ["--dest-conf", "/b.conf"],
            ["--dest-cluster", "b"],
            ["--dest-mon-host", "h:3300"],
        ] {
            let mut args = vec!["-c", "/a.conf", "-n", "client.x", "-k", "/x.keyring"];
            args.extend(["-o", "k=v", "--connect-timeout", "7", "-m", "a:3300"]);
            args.extend(other);
            let (_, dest) = clusters(&args);
            assert_eq!(dest.client_name(), Some("client.x"), "{other:?}");
            assert_eq!(dest.keyring_path(), None, "{other:?}");
            assert!(dest.options().is_empty(), "{other:?}");
            assert_eq!(dest.connect_timeout_value(), Some(Duration::from_secs(7)));
            assert_eq!(
                dest.conf_path(),
                (other[0] == "--dest-conf").then(|| Path::new("/b.conf"))
            );
            assert_eq!(
                dest.mon_host_value(),
                (other[0] == "--dest-mon-host").then_some("h:3300")
            );
        }
        let (_, dest) = clusters(&[
            "--dest-conf",
            "/b.conf",
            "--dest-name",
            "client.y",
            "--dest-keyring",
            "/y.keyring",
            "--dest-option",
            "k=v",
            "--dest-connect-timeout",
            "3",
        ]);
        assert_eq!(dest.client_name(), Some("client.y"));
        assert_eq!(dest.keyring_path(), Some(Path::new("/y.keyring")));
        assert_eq!(dest.options(), [("k".into(), "v".into())]);
        assert_eq!(dest.connect_timeout_value(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn job_files_take_text_and_json_lines() {
        let jobs = parse_job(
            "# volumes\n\nrbd/a@s2 backups/a s1\n  rbd/b@s1\tbackups/b\n\
             {\"source\": \"rbd/c@s2\", \"dest\": \"backups/c\", \"from_snap\": \"s1\", \"force\": true}\n\
             {\"source\": \"rbd/d@s1\", \"dest\": \"backups/d\", \"verify\": true}\n",
        )
        .unwrap();
        let line = |s: &str, d: &str, f: Option<&str>, force, verify| JobLine {
            source: s.into(),
            dest: d.into(),
            from_snap: f.map(Into::into),
            force,
            verify,
        };
        assert_eq!(
            jobs,
            [
                line("rbd/a@s2", "backups/a", Some("s1"), false, false),
                line("rbd/b@s1", "backups/b", None, false, false),
                line("rbd/c@s2", "backups/c", Some("s1"), true, false),
                line("rbd/d@s1", "backups/d", None, false, true),
            ]
        );
        for bad in [
            "a",
            "a b c d",
            "{\"source\": \"a\"}",
            "{\"source\": \"a\", \"dest\": \"b\", \"x\": 1}",
            "{\"source\": \"a\", \"dest\": \"b\", \"verify\": \"yes\"}",
            "{\"source\": \"a\", \"dest\": \"b\", \"force\": 1}",
            "{",
            "# none",
        ] {
            assert!(parse_job(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_statuses_are_codes_modulo_256() {
        assert_eq!(exit_status(libc::ENOENT), 2);
        assert_eq!(exit_status(libc::ECANCELED), 125);
        assert_eq!(
            exit_status(rbd_diffsync::error::CODE_DESTINATION_CHANGED),
            200
        );
        assert_eq!(exit_status(rbd_diffsync::error::CODE_MISMATCH), 201);
        assert_eq!(exit_status(256), 1, "never 0 for a failure");
    }

    #[test]
    fn usage_errors_and_their_json_request_are_recognised() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(json_requested(args(&["x", "sync", "--format", "json"])));
        assert!(json_requested(args(&["x", "sync", "--json", "--bad"])));
        assert!(!json_requested(args(&["x", "sync", "--", "--json"])));
        assert!(!json_requested(args(&["x", "sync", "--format", "plain"])));
        for bad in [
            &["sync", "--id", "a", "--name", "client.b", "a", "b"][..],
            &["sync", "-o", "novalue", "a", "b"],
            &["sync", "--chunk-size", "4X", "a", "b"],
            &["sync", "--connect-timeout", "-1", "a", "b"],
            &["sync", "a"],
            &["verify", "a"],
            &["verify", "--window", "x", "a", "b"],
        ] {
            let argv = std::iter::once("rbd-diffsync").chain(bad.iter().copied());
            let e = Cli::try_parse_from(argv).err().expect("refused");
            assert!(e.use_stderr(), "{bad:?}");
        }
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
    }
}
