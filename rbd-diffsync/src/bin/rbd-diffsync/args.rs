//! The options the subcommands share: output and progress, the clusters (the rbd CLI's
//! options and their `--dest-*` forms), and the parsers of sizes, seconds and `KEY=VALUE`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rbd_diffsync::ClusterSpec;
use rbd_diffsync::Settings;

use crate::progress::ProgressMode;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Plain,
    Json,
}

/// Output and progress options.
/// The core's settings from the options every job has: its clusters, chunk size, window and
/// progress interval (each command sets the others it has).
pub(crate) fn settings(
    clusters: &ClusterArgs,
    output: &OutputArgs,
    chunk_size: u64,
    window: usize,
) -> Settings {
    let (cluster, dest_cluster) = clusters.specs();
    let mut settings = Settings::default();
    settings.cluster = cluster;
    settings.dest_cluster = Some(dest_cluster);
    settings.chunk_size = chunk_size;
    settings.window = window;
    settings.progress_interval = output.progress_interval;
    settings
}

#[derive(Args)]
pub(crate) struct OutputArgs {
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
    #[arg(long, value_name = "SECS", default_value = "0.2", value_parser = parse_seconds)]
    pub(crate) progress_interval: Duration,
}

impl OutputArgs {
    pub(crate) fn json(&self) -> bool {
        self.json || self.format == Format::Json
    }

    /// How progress is shown, if at all.
    pub(crate) fn progress(&self) -> Option<ProgressMode> {
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
pub(crate) struct ClusterArgs {
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
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, help_heading = "Cluster options")]
    connect_timeout: Option<Duration>,
    /// Fail an operation the cluster has not answered after this many seconds (default: 60,
    /// unless ceph.conf sets rados_osd_op_timeout / rados_mon_op_timeout; 0: wait for ever);
    /// applies to the destination too unless --dest-op-timeout is given. A rerun of a
    /// transfer that timed out resumes it.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, help_heading = "Cluster options")]
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
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          help_heading = "Destination cluster options")]
    dest_connect_timeout: Option<Duration>,
    /// Operation timeout for the destination cluster (default: --op-timeout).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds,
          help_heading = "Destination cluster options")]
    dest_op_timeout: Option<Duration>,
    /// A librados or librbd option for the destination only (repeatable).
    #[arg(long = "dest-option", value_name = "KEY=VALUE", value_parser = parse_option,
          help_heading = "Destination cluster options")]
    dest_options: Vec<(String, String)>,
}

impl ClusterArgs {
    /// The source's settings and the destination's (see [`ClusterArgs::dest`]).
    pub(crate) fn specs(&self) -> (ClusterSpec, ClusterSpec) {
        let source = self.source();
        let dest = self.dest(&source);
        (source, dest)
    }

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

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
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

/// A number of seconds, 0 or more: what each setting allows of it is the core's check (a
/// connect timeout of 0 is refused there; an operation timeout of 0 waits for ever).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a number of seconds of 0 or more"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is too many seconds"))
}

/// `KEY=VALUE`, the key spelt with `_` or `-` as ceph accepts it on its command line.
fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.replace('-', "_"), value.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::{Cli, Command};
    use clap::Parser;

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
    fn sizes_take_a_k_m_or_g_suffix() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
    }
}
