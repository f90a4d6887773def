//! The crate's one error type. Every variant names what it concerns (cluster, image, snapshot,
//! offset) and knows its errno, so that C and Python callers keep errno-style handling.

use std::fmt;

/// A positive system error number, printed by name (`ENOENT: No such file or directory`),
/// never as a bare number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// From a librbd/librados return value (negative on failure).
    pub(crate) fn from_ret(ret: i64) -> Errno {
        Errno(i32::try_from(ret.unsigned_abs()).unwrap_or(libc::EIO))
    }

    /// The symbolic name (`"ENOENT"`), or `None` for a number this crate does not name.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EIO => "EIO",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::EINVAL => "EINVAL",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::EROFS => "EROFS",
            libc::ERANGE => "ERANGE",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ENODATA => "ENODATA",
            libc::ENOTSUP => "EOPNOTSUPP",
            libc::ESHUTDOWN => "ESHUTDOWN",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::ECONNREFUSED => "ECONNREFUSED",
            libc::ECANCELED => "ECANCELED",
            libc::ESTALE => "ESTALE",
            _ => return None,
        })
    }

    fn description(self) -> String {
        // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local string.
        unsafe { std::ffi::CStr::from_ptr(libc::strerror(self.0)) }
            .to_string_lossy()
            .into_owned()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}: {}", self.description()),
            None => write!(f, "{} (errno {})", self.description(), self.0),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

/// What can go wrong. Variants carry the image, snapshot or offset concerned; `errno()` gives
/// the matching positive errno.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An image specification that the rbd CLI would refuse as well.
    #[error("invalid image spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The text as given.
        spec: String,
        /// Why it is refused.
        reason: String,
    },
    /// A setting or a combination of settings that cannot work.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster could not be reached or refused the client.
    #[error("cannot connect to {cluster}: {errno}")]
    Connect {
        /// The cluster, as `conf ... as client.<id>`.
        cluster: String,
        /// Why.
        errno: Errno,
    },
    /// The pool does not exist on that cluster.
    #[error("pool {pool:?} does not exist on {cluster}")]
    PoolNotFound {
        /// The pool name.
        pool: String,
        /// The cluster.
        cluster: String,
    },
    /// The image does not exist.
    #[error("image {image} does not exist")]
    ImageNotFound {
        /// `pool[/namespace]/image`.
        image: String,
    },
    /// The snapshot does not exist on that image.
    #[error("snapshot {snap:?} does not exist on image {image}")]
    SnapNotFound {
        /// `pool[/namespace]/image`.
        image: String,
        /// The snapshot name.
        snap: String,
    },
    /// The snapshot already exists on that image.
    #[error("snapshot {snap:?} already exists on image {image}")]
    SnapExists {
        /// `pool[/namespace]/image`.
        image: String,
        /// The snapshot name.
        snap: String,
    },
    /// The destination was written to after its snapshot `snap`, the base of an incremental:
    /// continuing the chain would mix those writes into the next snapshot.
    #[error("image {image} has changed since its snapshot {snap:?}: refusing an incremental on top of it")]
    DestinationChanged {
        /// `pool[/namespace]/image`.
        image: String,
        /// The `from_snap` of the incremental.
        snap: String,
    },
    /// The client lacks the capability for an operation.
    #[error("{op} on {target}: permission denied")]
    PermissionDenied {
        /// What was attempted.
        op: &'static str,
        /// What it was attempted on.
        target: String,
    },
    /// A read, write or zeroing of image data failed.
    #[error("{op} of image {image} at offset {offset} (length {len}): {errno}")]
    Io {
        /// `read`, `write`, `write_zeroes` or `discard`.
        op: &'static str,
        /// `pool[/namespace]/image[@snap]`.
        image: String,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Why.
        errno: Errno,
    },
    /// Any other librbd or librados call that failed.
    #[error("{op} on {target}: {errno}")]
    Rbd {
        /// The operation.
        op: &'static str,
        /// What it was called on.
        target: String,
        /// Why.
        errno: Errno,
    },
    /// The transfer was cancelled through its [`CancelToken`](crate::CancelToken); every
    /// request in flight was drained and no end snapshot was created.
    #[error("transfer into {image} cancelled")]
    Cancelled {
        /// The destination image.
        image: String,
    },
}

impl Error {
    /// The positive errno that C and Python callers see.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidSpec { .. } | Error::InvalidArgument(_) => libc::EINVAL,
            Error::Connect { errno, .. } | Error::Io { errno, .. } | Error::Rbd { errno, .. } => {
                errno.0
            }
            Error::PoolNotFound { .. }
            | Error::ImageNotFound { .. }
            | Error::SnapNotFound { .. } => libc::ENOENT,
            Error::SnapExists { .. } => libc::EEXIST,
            Error::DestinationChanged { .. } => libc::ESTALE,
            Error::PermissionDenied { .. } => libc::EACCES,
            Error::Cancelled { .. } => libc::ECANCELED,
        }
    }

    /// Maps the negative return of a librbd/librados call on `target` to a named variant.
    pub(crate) fn rbd(op: &'static str, target: impl Into<String>, ret: i64) -> Error {
        let errno = Errno::from_ret(ret);
        let target = target.into();
        match errno.0 {
            libc::EACCES | libc::EPERM => Error::PermissionDenied { op, target },
            _ => Error::Rbd { op, target, errno },
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_prints_by_name() {
        let e = Error::rbd("open", "rbd/img", -(libc::ENOENT as i64));
        assert_eq!(e.errno(), libc::ENOENT);
        let text = e.to_string();
        assert!(text.starts_with("open on rbd/img: ENOENT: "), "{text}");
    }

    #[test]
    fn permission_errors_are_named() {
        let e = Error::rbd("write", "rbd/img", -(libc::EACCES as i64));
        assert!(matches!(e, Error::PermissionDenied { .. }));
        assert_eq!(e.errno(), libc::EACCES);
    }

    #[test]
    fn unknown_errno_keeps_its_number() {
        assert!(Errno(4095).to_string().contains("errno 4095"));
    }
}
