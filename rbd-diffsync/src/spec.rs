//! Where an image is (`ImageSpec`) and how to reach its cluster (`ClusterSpec`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// `[pool[/namespace]/]image[@snap]`, checked as the rbd CLI checks it: no empty part, no `@`
/// or `/` inside a name, no NUL byte. A spec without a pool names an image in the pool the
/// cluster's `rbd_default_pool` option names (`rbd` unless configured otherwise), as for the
/// rbd CLI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pool: Option<String>,
    namespace: Option<String>,
    image: String,
    snap: Option<String>,
}

impl ImageSpec {
    /// Parses `[pool[/namespace]/]image[@snap]`.
    pub fn parse(spec: &str) -> Result<ImageSpec> {
        let invalid =
            |reason: &str| Error::invalid(format!("invalid image spec {spec:?}: {reason}"));
        if spec.contains('\0') {
            return Err(invalid("it contains a NUL byte"));
        }
        let (path, snap) = match spec.split_once('@') {
            Some((path, snap)) => {
                if snap.contains('@') {
                    return Err(invalid("it has more than one '@'"));
                }
                if snap.is_empty() {
                    return Err(invalid("the snapshot name after '@' is empty"));
                }
                if snap.contains('/') {
                    return Err(invalid("the snapshot name contains '/'"));
                }
                (path, Some(snap.to_owned()))
            }
            None => (spec, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(invalid(if path.is_empty() {
                "the image name is empty"
            } else {
                "a pool, namespace or image name is empty"
            }));
        }
        let (pool, namespace, image) = match parts.as_slice() {
            [image] => (None, None, *image),
            [pool, image] => (Some(*pool), None, *image),
            [pool, ns, image] => (Some(*pool), Some((*ns).to_owned()), *image),
            _ => return Err(invalid("expected [pool[/namespace]/]image[@snap]")),
        };
        Ok(ImageSpec {
            pool: pool.map(str::to_owned),
            namespace,
            image: image.to_owned(),
            snap,
        })
    }

    /// Builds a spec from its parts, checked like [`ImageSpec::parse`].
    pub fn new(
        pool: &str,
        namespace: Option<&str>,
        image: &str,
        snap: Option<&str>,
    ) -> Result<Self> {
        let mut text = pool.to_owned();
        if let Some(ns) = namespace {
            text.push('/');
            text.push_str(ns);
        }
        text.push('/');
        text.push_str(image);
        if let Some(snap) = snap {
            text.push('@');
            text.push_str(snap);
        }
        let parsed = ImageSpec::parse(&text)?;
        // A part holding a separator would parse as other parts: refuse instead of guessing.
        if parsed.pool.as_deref() != Some(pool)
            || parsed.namespace.as_deref() != namespace
            || parsed.image != image
            || parsed.snap.as_deref() != snap
        {
            return Err(Error::invalid(format!(
                "invalid image spec {text:?}: a name contains '/' or '@'"
            )));
        }
        Ok(parsed)
    }

    /// The pool, if the spec names one (otherwise the cluster's `rbd_default_pool`).
    pub fn pool(&self) -> Option<&str> {
        self.pool.as_deref()
    }

    /// The RADOS namespace inside the pool, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The image name.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The snapshot, if the spec names one.
    pub fn snap(&self) -> Option<&str> {
        self.snap.as_deref()
    }

    /// `[pool[/namespace]/]image`, without the snapshot.
    pub fn image_path(&self) -> String {
        let mut path = String::new();
        if let Some(pool) = &self.pool {
            path.push_str(pool);
            path.push('/');
        }
        if let Some(ns) = &self.namespace {
            path.push_str(ns);
            path.push('/');
        }
        path.push_str(&self.image);
        path
    }

    /// The same spec in `pool` if it names none.
    pub(crate) fn in_default_pool(&self, pool: &str) -> ImageSpec {
        ImageSpec {
            pool: Some(self.pool.clone().unwrap_or_else(|| pool.to_owned())),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.image_path())?;
        if let Some(snap) = &self.snap {
            write!(f, "@{snap}")?;
        }
        Ok(())
    }
}

/// How long a connection may take by default: see [`ClusterSpec::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an operation may go unanswered by default: see [`ClusterSpec::op_timeout`]. Long
/// enough for an OSD restart or a short peering, short enough that a stalled cluster or a full
/// pool gives an error within a minute.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(60);

impl FromStr for ImageSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ImageSpec::parse(s)
    }
}

impl TryFrom<&str> for ImageSpec {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        ImageSpec::parse(s)
    }
}

/// How to connect to a cluster, with what the rbd CLI's global options say: `-c/--conf`,
/// `--id`/`-n/--name`, `--cluster`, `-m/--mon-host`, `-k/--keyring` and any `--<option>`.
///
/// What the spec leaves unset is taken as the rbd CLI takes it: from `CEPH_ARGS` (its `--id`,
/// `--user`, `-n/--name`, `-c/--conf` and `--cluster`, then every other option it holds), then
/// from librados' defaults: `client.admin`, cluster `ceph`, and the conf search `$CEPH_CONF`,
/// `/etc/ceph/$cluster.conf`, `~/.ceph/$cluster.conf`, `./$cluster.conf`. Settings given here
/// win over `CEPH_ARGS`, which wins over ceph.conf.
///
/// The library sets options of its own before `CEPH_ARGS` and the spec's are applied, so
/// that either can override them: `rbd_cache = false` (a transfer reads and writes each byte
/// once; the cache would copy it again and hold memory per image), and, where ceph.conf
/// leaves librados' defaults, timeouts that end a wait for a cluster that does not answer:
/// [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_OP_TIMEOUT`] (librados waits 300 s to connect,
/// and for ever for an operation), and `rbd_concurrent_management_ops = 128` where it leaves
/// librbd's 10 (a diff scan lists each object of the image with one request: more of them at
/// once keep its time from growing with the round trip to the OSDs). It leaves librbd's
/// `rbd_disable_zero_copy_writes = true`: with zero-copy writes, librbd 16.2 never completes
/// a write whose exclusive-lock acquisition is refused (`EROFS`), which would hang the
/// transfer if its lock were taken from it.
///
/// Its `Debug` names the options without their values (one may be a key, `-o key=...`).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ClusterSpec {
    conf: Option<PathBuf>,
    name: Option<String>,
    cluster_name: Option<String>,
    keyring: Option<PathBuf>,
    mon_host: Option<String>,
    connect_timeout: Option<Duration>,
    op_timeout: Option<Duration>,
    options: Vec<(String, String)>,
}

impl ClusterSpec {
    /// The cluster and client the rbd CLI would use with no options: see the type's
    /// documentation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this ceph.conf instead of searching for one (`rbd -c`).
    pub fn conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.conf = Some(path.into());
        self
    }

    /// Connects as `client.<id>` (`rbd --id`); a leading `client.` is accepted.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.name = Some(match id.strip_prefix("client.") {
            Some(_) => id,
            None => format!("client.{id}"),
        });
        self
    }

    /// Connects as this entity, `type.id` such as `client.backup` (`rbd -n`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The cluster's name (`rbd --cluster`), which selects `/etc/ceph/<name>.conf` when no
    /// ceph.conf is given; `ceph` by default.
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = Some(name.into());
        self
    }

    /// Uses this keyring instead of the one ceph.conf names (`rbd -k`).
    pub fn keyring(mut self, path: impl Into<PathBuf>) -> Self {
        self.keyring = Some(path.into());
        self
    }

    /// Connects to these monitors (`rbd -m`), a comma-separated list of `host[:port]`, instead
    /// of those ceph.conf names.
    pub fn mon_host(mut self, addresses: impl Into<String>) -> Self {
        self.mon_host = Some(addresses.into());
        self
    }

    /// Gives up connecting after this long (librados' `client_mount_timeout`):
    /// [`DEFAULT_CONNECT_TIMEOUT`] unless ceph.conf sets another value than librados' own
    /// default (300 s). An unreachable monitor fails then; a key the monitors refuse fails
    /// within seconds.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Fails an operation that the cluster has not answered after this long, with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (`ETIMEDOUT`), instead of waiting for
    /// a stalled OSD or monitor for ever: librados' `rados_osd_op_timeout` and
    /// `rados_mon_op_timeout`. [`DEFAULT_OP_TIMEOUT`] unless ceph.conf sets them (librados'
    /// own default, 0, waits for ever); `Duration::ZERO` waits for ever. A transfer that
    /// times out leaves no end snapshot, and its rerun resumes from its checkpoint.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = Some(timeout);
        self
    }

    /// Sets a librados or librbd option (`rbd --<key> <value>`), such as
    /// `("rbd_default_pool", "volumes")`. Later settings of the same key win.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The ceph.conf path, if one was given.
    pub fn conf_path(&self) -> Option<&std::path::Path> {
        self.conf.as_deref()
    }

    /// The entity name (`client.<id>`), if one was given.
    pub fn client_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The cluster name, if one was given.
    pub fn cluster_name_value(&self) -> Option<&str> {
        self.cluster_name.as_deref()
    }

    /// The keyring path, if one was given.
    pub fn keyring_path(&self) -> Option<&std::path::Path> {
        self.keyring.as_deref()
    }

    /// The monitor addresses, if given.
    pub fn mon_host_value(&self) -> Option<&str> {
        self.mon_host.as_deref()
    }

    /// The connect timeout, if one was set.
    pub fn connect_timeout_value(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The operation timeout, if one was set.
    pub fn op_timeout_value(&self) -> Option<Duration> {
        self.op_timeout
    }

    /// The options set with [`option`](Self::option), in order.
    pub fn options(&self) -> &[(String, String)] {
        &self.options
    }

    /// What the spec leaves unset, filled in from `CEPH_ARGS` as the rbd CLI does.
    pub(crate) fn resolve(&self) -> ResolvedSpec {
        let env = std::env::var("CEPH_ARGS").unwrap_or_default();
        let early = EarlyArgs::parse(&env);
        ResolvedSpec {
            conf: self.conf.clone().or(early.conf),
            name: self
                .name
                .clone()
                .or(early.name)
                .unwrap_or_else(|| "client.admin".to_owned()),
            cluster_name: self
                .cluster_name
                .clone()
                .or(early.cluster_name)
                .unwrap_or_else(|| "ceph".to_owned()),
        }
    }
}

impl fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs: an option's value may be a key (`key`), so only its
        // name is shown.
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(key, _)| format!("{key}=<redacted>"))
            .collect();
        f.debug_struct("ClusterSpec")
            .field("conf", &self.conf)
            .field("name", &self.name)
            .field("cluster_name", &self.cluster_name)
            .field("keyring", &self.keyring)
            .field("mon_host", &self.mon_host)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("options", &options)
            .finish()
    }
}

/// The identity of a connection once `CEPH_ARGS` and the defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedSpec {
    pub conf: Option<PathBuf>,
    pub name: String,
    pub cluster_name: String,
}

impl fmt::Display for ResolvedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.conf {
            Some(conf) => write!(f, "cluster {}", conf.display())?,
            None if self.cluster_name == "ceph" => f.write_str("the default cluster")?,
            None => write!(f, "cluster {:?}", self.cluster_name)?,
        }
        write!(f, " as {}", self.name)
    }
}

/// The options of `CEPH_ARGS` that librados does not apply itself: it leaves the client name,
/// the cluster name and the conf path to the program, as the rbd CLI's `global_init` does.
#[derive(Debug, Default, PartialEq, Eq)]
struct EarlyArgs {
    conf: Option<PathBuf>,
    name: Option<String>,
    cluster_name: Option<String>,
}

impl EarlyArgs {
    fn parse(args: &str) -> EarlyArgs {
        let mut out = EarlyArgs::default();
        let mut words = args.split_whitespace();
        while let Some(word) = words.next() {
            let (flag, inline) = match word.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
                _ => (word, None),
            };
            let slot = match flag {
                "--id" | "--user" | "-i" => 0,
                "--name" | "-n" => 1,
                "--conf" | "-c" => 2,
                "--cluster" => 3,
                _ => continue,
            };
            let Some(value) = inline.or_else(|| words.next().map(str::to_owned)) else {
                break;
            };
            match slot {
                0 => out.name = Some(format!("client.{}", value.trim_start_matches("client."))),
                1 => out.name = Some(value),
                2 => out.conf = Some(PathBuf::from(value)),
                _ => out.cluster_name = Some(value),
            }
        }
        out
    }
}

impl fmt::Display for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.resolve().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn parts(s: &str) -> (Option<String>, Option<String>, String, Option<String>) {
        let spec = ImageSpec::parse(s).unwrap();
        (
            spec.pool().map(str::to_owned),
            spec.namespace().map(str::to_owned),
            spec.image().to_owned(),
            spec.snap().map(str::to_owned),
        )
    }

    #[test]
    fn parses_every_form_the_cli_accepts() {
        assert_eq!(parts("img"), (None, None, "img".into(), None));
        assert_eq!(parts("p/img"), (Some("p".into()), None, "img".into(), None));
        assert_eq!(
            parts("p/ns/img@s1"),
            (
                Some("p".into()),
                Some("ns".into()),
                "img".into(),
                Some("s1".into())
            )
        );
        assert_eq!(
            parts("p/img@backup.1.snap.2"),
            (
                Some("p".into()),
                None,
                "img".into(),
                Some("backup.1.snap.2".into())
            )
        );
    }

    #[test]
    fn a_bare_image_takes_the_default_pool_when_resolved() {
        let spec = ImageSpec::parse("img@s").unwrap();
        assert_eq!(spec.to_string(), "img@s");
        assert_eq!(spec.in_default_pool("volumes").to_string(), "volumes/img@s");
        let spec = ImageSpec::parse("p/img").unwrap();
        assert_eq!(spec.in_default_pool("volumes").to_string(), "p/img");
    }

    #[test]
    fn displays_as_it_was_written() {
        for s in [
            "p/img",
            "p/ns/img@s1",
            "volumes/volume-1.backup.base@x",
            "img",
        ] {
            assert_eq!(ImageSpec::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_malformed_specs_with_a_reason() {
        for (bad, reason) in [
            ("", "empty"),
            ("p/", "empty"),
            ("/img", "empty"),
            ("p//img", "empty"),
            ("p/img@", "empty"),
            ("p/img@a@b", "more than one '@'"),
            ("p@s/img", "contains '/'"),
            ("a/b/c/d", "expected [pool"),
            ("p/im\0g", "NUL"),
        ] {
            let err = ImageSpec::parse(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
            assert_eq!(err.errno(), libc::EINVAL);
            assert!(err.to_string().contains(reason), "{bad:?}: {err}");
        }
    }

    #[test]
    fn new_refuses_separators_inside_names() {
        assert!(ImageSpec::new("p", None, "a/b", None).is_err());
        assert!(ImageSpec::new("p", None, "a", Some("s@t")).is_err());
        assert_eq!(
            ImageSpec::new("p", Some("n"), "a", Some("s"))
                .unwrap()
                .to_string(),
            "p/n/a@s"
        );
    }

    #[test]
    fn cluster_id_accepts_the_client_prefix() {
        assert_eq!(
            ClusterSpec::new().id("client.backup").client_name(),
            Some("client.backup")
        );
        assert_eq!(
            ClusterSpec::new().id("backup").client_name(),
            Some("client.backup")
        );
        assert_eq!(ClusterSpec::new().client_name(), None);
    }

    #[test]
    fn debug_and_display_name_options_without_their_values() {
        const KEY: &str = "AQBnpSxlAAAAABAAk1yQ8Z6ZpQ7B5xL5nF5Zxw==";
        let spec = ClusterSpec::new()
            .conf("/etc/ceph/ceph.conf")
            .id("backup")
            .keyring("/etc/ceph/backup.keyring")
            .option("key", KEY)
            .option("rbd_cache", "true");
        let debug = format!("{spec:?}");
        assert!(!debug.contains(KEY), "{debug}");
        assert!(!debug.contains("true"), "{debug}");
        assert!(
            debug.contains(r#"options: ["key=<redacted>", "rbd_cache=<redacted>"]"#),
            "{debug}"
        );
        assert!(debug.contains("/etc/ceph/backup.keyring"), "{debug}");
        assert!(debug.contains("client.backup"), "{debug}");
        let display = spec.to_string();
        assert!(!display.contains(KEY), "{display}");
        // Nor what holds a spec.
        let src = ImageSpec::parse("rbd/vol@s1").unwrap();
        let dest = ImageSpec::parse("backups/vol").unwrap();
        let transfer = crate::DiffTransfer::new(src, dest)
            .cluster(spec.clone())
            .dest_cluster(spec);
        let batch = crate::SyncMany::new(vec![transfer]);
        let debug = format!("{batch:?}");
        assert!(debug.contains("key=<redacted>"), "{debug}");
        assert!(!debug.contains(KEY), "{debug}");
    }

    #[test]
    fn early_args_of_ceph_args_are_read_as_the_rbd_cli_reads_them() {
        let e = EarlyArgs::parse("--id cinder --keyring /k -m 1.2.3.4 --cluster=backup");
        assert_eq!(e.name.as_deref(), Some("client.cinder"));
        assert_eq!(e.cluster_name.as_deref(), Some("backup"));
        assert_eq!(e.conf, None);
        let e = EarlyArgs::parse("-n client.x -c /etc/ceph/x.conf --user y");
        assert_eq!(e.name.as_deref(), Some("client.y"), "the last one wins");
        assert_eq!(e.conf, Some(PathBuf::from("/etc/ceph/x.conf")));
        assert_eq!(EarlyArgs::parse("--id"), EarlyArgs::default());
        assert_eq!(EarlyArgs::parse(""), EarlyArgs::default());
    }
}
