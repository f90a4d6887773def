//! Where an image is (`ImageSpec`) and how to reach its cluster (`ClusterSpec`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The pool the rbd CLI uses when a spec names none.
pub const DEFAULT_POOL: &str = "rbd";

/// `pool[/namespace]/image[@snap]`, checked as the rbd CLI checks it: no empty part, no `@` or
/// `/` inside a name, no NUL byte. A bare `image` is in pool [`DEFAULT_POOL`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageSpec {
    pool: String,
    namespace: Option<String>,
    image: String,
    snap: Option<String>,
}

impl ImageSpec {
    /// Parses `pool[/namespace]/image[@snap]`.
    pub fn parse(spec: &str) -> Result<ImageSpec> {
        let invalid = |reason: &str| Error::InvalidSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
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
            [image] => (DEFAULT_POOL, None, *image),
            [pool, image] => (*pool, None, *image),
            [pool, ns, image] => (*pool, Some((*ns).to_owned()), *image),
            _ => return Err(invalid("expected pool[/namespace]/image[@snap]")),
        };
        Ok(ImageSpec {
            pool: pool.to_owned(),
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
        if parsed.pool != pool
            || parsed.namespace.as_deref() != namespace
            || parsed.image != image
            || parsed.snap.as_deref() != snap
        {
            return Err(Error::InvalidSpec {
                spec: text,
                reason: "a name contains '/' or '@'".to_owned(),
            });
        }
        Ok(parsed)
    }

    /// The pool.
    pub fn pool(&self) -> &str {
        &self.pool
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

    /// The same image at another snapshot (or at HEAD with `None`).
    pub fn with_snap(&self, snap: Option<&str>) -> Result<ImageSpec> {
        ImageSpec::new(&self.pool, self.namespace(), &self.image, snap)
    }

    /// `pool[/namespace]/image`, without the snapshot.
    pub fn image_path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{}", self.pool, ns, self.image),
            None => format!("{}/{}", self.pool, self.image),
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

/// How to connect to a cluster: a ceph.conf (or librados' default search: `$CEPH_CONF`,
/// `/etc/ceph/ceph.conf`, `~/.ceph/config`, `./ceph.conf`), a client id and, optionally, a
/// keyring. `CEPH_ARGS` is honoured as by the rbd CLI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterSpec {
    conf: Option<PathBuf>,
    id: String,
    keyring: Option<PathBuf>,
    connect_timeout: Option<Duration>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            conf: None,
            id: "admin".to_owned(),
            keyring: None,
            connect_timeout: None,
        }
    }
}

impl ClusterSpec {
    /// The default cluster as `client.admin`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this ceph.conf instead of searching for one.
    pub fn conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.conf = Some(path.into());
        self
    }

    /// Connects as `client.<id>` (`admin` by default, as `rbd --id admin`); a leading
    /// `client.` is accepted.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        self.id = id.strip_prefix("client.").map(str::to_owned).unwrap_or(id);
        self
    }

    /// Uses this keyring instead of the one ceph.conf names.
    pub fn keyring(mut self, path: impl Into<PathBuf>) -> Self {
        self.keyring = Some(path.into());
        self
    }

    /// Gives up connecting after this long (librados' `client_mount_timeout`, 300 s unless
    /// ceph.conf says otherwise). A wrong key or an unreachable monitor fails only then.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The connect timeout, if one was set.
    pub fn connect_timeout_value(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// The ceph.conf path, if one was given.
    pub fn conf_path(&self) -> Option<&std::path::Path> {
        self.conf.as_deref()
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.id
    }

    /// The keyring path, if one was given.
    pub fn keyring_path(&self) -> Option<&std::path::Path> {
        self.keyring.as_deref()
    }
}

impl fmt::Display for ClusterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.conf {
            Some(conf) => write!(f, "cluster {} as client.{}", conf.display(), self.id),
            None => write!(f, "default cluster as client.{}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, Option<String>, String, Option<String>) {
        let spec = ImageSpec::parse(s).unwrap();
        (
            spec.pool().to_owned(),
            spec.namespace().map(str::to_owned),
            spec.image().to_owned(),
            spec.snap().map(str::to_owned),
        )
    }

    #[test]
    fn parses_every_form_the_cli_accepts() {
        assert_eq!(parts("img"), ("rbd".into(), None, "img".into(), None));
        assert_eq!(parts("p/img"), ("p".into(), None, "img".into(), None));
        assert_eq!(
            parts("p/ns/img@s1"),
            (
                "p".into(),
                Some("ns".into()),
                "img".into(),
                Some("s1".into())
            )
        );
        assert_eq!(
            parts("p/img@backup.1.snap.2"),
            (
                "p".into(),
                None,
                "img".into(),
                Some("backup.1.snap.2".into())
            )
        );
    }

    #[test]
    fn displays_as_it_was_written() {
        for s in ["p/img", "p/ns/img@s1", "volumes/volume-1.backup.base@x"] {
            assert_eq!(ImageSpec::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(ImageSpec::parse("img").unwrap().to_string(), "rbd/img");
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
            ("a/b/c/d", "expected pool"),
            ("p/im\0g", "NUL"),
        ] {
            let err = ImageSpec::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains(reason), "{bad:?}: {err}");
            assert_eq!(err.errno(), libc::EINVAL);
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
        assert_eq!(ClusterSpec::new().id("client.backup").client_id(), "backup");
        assert_eq!(ClusterSpec::new().client_id(), "admin");
    }
}
