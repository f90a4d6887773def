//! The crate's one error type: a stable [`ErrorKind`], the exact errno (or a library code), and
//! a message naming the cluster, image, snapshot or offset concerned.
//!
//! # Codes
//!
//! [`Error::errno`] is the system errno of the failure, unchanged (`EPERM` stays `EPERM`), or,
//! for the conditions of this library that no errno describes, a code from the range reserved
//! for them, which starts at [`LIBRARY_CODE_BASE`] (4296): above 4095, the largest errno Linux
//! can return, so that no errno is ever mistaken for one of them, and with a low byte of 200 and
//! up, which no errno has, so that an exit status of `code & 0xff` stays distinct too.
//!
//! | kind | codes | meaning |
//! | --- | --- | --- |
//! | [`InvalidArgument`](ErrorKind::InvalidArgument) | `EINVAL` (22) | a malformed spec, a setting out of range, a usage error |
//! | [`NotFound`](ErrorKind::NotFound) | `ENOENT` (2) | pool, image, snapshot or ceph.conf missing |
//! | [`Exists`](ErrorKind::Exists) | `EEXIST` (17) | the end snapshot exists on the destination; a full transfer into an image that holds data |
//! | [`PermissionDenied`](ErrorKind::PermissionDenied) | `EACCES` (13), `EPERM` (1) | the client lacks a capability, or was refused |
//! | [`Busy`](ErrorKind::Busy) | `EBUSY` (16) | the destination is locked or open by another client |
//! | [`Fenced`](ErrorKind::Fenced) | `ESHUTDOWN` (108) | this client was fenced off (blocklisted): a rerun of its transfer took the destination over |
//! | [`DestinationChanged`](ErrorKind::DestinationChanged) | 4296 | the destination changed since `from_snap`, not by an interrupted transfer of the same diff |
//! | [`Mismatch`](ErrorKind::Mismatch) | 4297 | a verification found the two images different: their content at [`Error::offset`], or their sizes |
//! | [`Cancelled`](ErrorKind::Cancelled) | `ECANCELED` (125) | the cancel token, the progress callback or a signal stopped the transfer |
//! | [`Timeout`](ErrorKind::Timeout) | `ETIMEDOUT` (110) | a cluster did not answer in time |
//! | [`NoSpace`](ErrorKind::NoSpace) | `ENOSPC` (28), `EDQUOT` (122) | the pool or cluster is full, or a quota is reached |
//! | [`Unsupported`](ErrorKind::Unsupported) | `EOPNOTSUPP` (95), `ENOSYS` (38) | the cluster or image does not support an operation |
//! | [`Io`](ErrorKind::Io) | `EIO` (5) and others | a read, write or zeroing of image data failed |
//! | [`Other`](ErrorKind::Other) | any other errno | anything else, errno kept |
//!
//! Bindings map kinds to their own errors from this table: [`ErrorKind::from_errno`] gives the
//! kind of a code and [`ErrorKind::name`] a stable name for it.

use std::fmt;

/// First code of the range reserved for conditions of this library that are not system errors.
pub const LIBRARY_CODE_BASE: i32 = 4296;

/// The code of [`ErrorKind::DestinationChanged`].
pub const CODE_DESTINATION_CHANGED: i32 = LIBRARY_CODE_BASE;

/// The code of [`ErrorKind::Mismatch`].
pub const CODE_MISMATCH: i32 = LIBRARY_CODE_BASE + 1;

/// What kind of failure an [`Error`] is. New kinds may be added: match with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A malformed spec, a setting out of range or a combination that cannot work (`EINVAL`).
    InvalidArgument,
    /// A pool, image, snapshot or configuration file does not exist (`ENOENT`).
    NotFound,
    /// The end snapshot exists on the destination already, or a full transfer would overwrite
    /// an image that holds data (`EEXIST`).
    Exists,
    /// The client lacks a capability, or the cluster refused it (`EACCES`, `EPERM`).
    PermissionDenied,
    /// The destination is locked or open by another client (`EBUSY`).
    Busy,
    /// This client was fenced off the cluster (blocklisted, `ESHUTDOWN`): a rerun of its
    /// transfer found it unresponsive and took the destination over, or an operator
    /// blocklisted it. It can write nothing more; nothing of this run was committed.
    Fenced,
    /// The destination changed since `from_snap`, and not by an interrupted transfer of the
    /// same diff: continuing the chain would mix those changes into the next snapshot
    /// ([`CODE_DESTINATION_CHANGED`]).
    DestinationChanged,
    /// A verification found the images different: their content from [`Error::offset`] on,
    /// or their sizes ([`CODE_MISMATCH`]).
    Mismatch,
    /// The transfer was stopped by its cancel token or its progress callback (`ECANCELED`).
    Cancelled,
    /// A cluster did not answer in time (`ETIMEDOUT`).
    Timeout,
    /// The pool or the cluster is full, or a quota is reached (`ENOSPC`, `EDQUOT`).
    NoSpace,
    /// The cluster or the image does not support an operation (`EOPNOTSUPP`, `ENOSYS`).
    Unsupported,
    /// A read, write or zeroing of image data failed (`EIO` and other errnos of data I/O).
    Io,
    /// Anything else; the errno says what.
    Other,
}

impl ErrorKind {
    /// The kind of a failure with this code (an errno or a library code), as the table of the
    /// module documentation says. A read or write of image data that fails with an errno of no
    /// other kind is [`Io`](Self::Io); elsewhere such an errno is [`Other`](Self::Other).
    pub fn from_errno(code: i32) -> ErrorKind {
        match code {
            libc::EINVAL => ErrorKind::InvalidArgument,
            libc::ENOENT => ErrorKind::NotFound,
            libc::EEXIST => ErrorKind::Exists,
            libc::EACCES | libc::EPERM => ErrorKind::PermissionDenied,
            libc::EBUSY => ErrorKind::Busy,
            libc::ESHUTDOWN => ErrorKind::Fenced,
            CODE_DESTINATION_CHANGED => ErrorKind::DestinationChanged,
            CODE_MISMATCH => ErrorKind::Mismatch,
            libc::ECANCELED => ErrorKind::Cancelled,
            libc::ETIMEDOUT => ErrorKind::Timeout,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EOPNOTSUPP | libc::ENOSYS => ErrorKind::Unsupported,
            libc::EIO => ErrorKind::Io,
            _ => ErrorKind::Other,
        }
    }

    /// A stable snake_case name (`"not_found"`), for JSON output and bindings.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Exists => "exists",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Busy => "busy",
            ErrorKind::Fenced => "fenced",
            ErrorKind::DestinationChanged => "destination_changed",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::Other => "other",
        }
    }

    /// Every kind, in the order of the table.
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::Exists,
        ErrorKind::PermissionDenied,
        ErrorKind::Busy,
        ErrorKind::Fenced,
        ErrorKind::DestinationChanged,
        ErrorKind::Mismatch,
        ErrorKind::Cancelled,
        ErrorKind::Timeout,
        ErrorKind::NoSpace,
        ErrorKind::Unsupported,
        ErrorKind::Io,
        ErrorKind::Other,
    ];
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The symbolic name of a code (`"ENOENT"`, `"EDESTCHANGED"`), or `None` for one this crate
/// does not name.
pub fn code_name(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::ESTALE => "ESTALE",
        CODE_DESTINATION_CHANGED => "EDESTCHANGED",
        CODE_MISMATCH => "EMISMATCH",
        _ => return None,
    })
}

/// A description of a code: the system's for an errno, this library's for its own codes.
pub fn describe_code(code: i32) -> String {
    match code {
        CODE_DESTINATION_CHANGED => "Destination changed since the base snapshot".to_owned(),
        CODE_MISMATCH => "Images differ".to_owned(),
        // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local string.
        _ => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }
            .to_string_lossy()
            .into_owned(),
    }
}

/// `ENOENT: No such file or directory`, or the description and the number for a code this
/// crate does not name.
pub(crate) fn code_text(code: i32) -> String {
    match code_name(code) {
        Some(name) => format!("{name}: {}", describe_code(code)),
        None => format!("{} (errno {code})", describe_code(code)),
    }
}

/// What was stopped, for the message of [`Error::cancelled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    Transfer,
    Plan,
    Verify,
}

/// A positive errno from a librbd/librados return value (negative on failure).
pub(crate) fn errno_of(ret: i64) -> i32 {
    i32::try_from(ret.unsigned_abs()).unwrap_or(libc::EIO)
}

/// What to do about a failed read or write of `image` (`pool[/namespace]/image`).
fn io_hint(errno: i32, image: &str) -> String {
    let pool = image.split('/').next().unwrap_or(image);
    match errno {
        libc::ETIMEDOUT => " (the OSDs did not answer within the operation timeout: a stalled \
             or unreachable OSD; no end snapshot was created, and running the transfer again \
             once the cluster answers resumes it)"
            .to_owned(),
        libc::EDQUOT | libc::ENOSPC => format!(
            " (pool {pool} is full or has reached its quota, see `ceph osd pool get-quota \
             {pool}` and `ceph df`; free space or raise the quota, then run the transfer again: \
             it resumes)"
        ),
        libc::ESHUTDOWN => " (this client was fenced off the cluster: blocklisted by a rerun \
             of this transfer that found it unresponsive, or by an operator; it can write \
             nothing more, and nothing of this run was committed)"
            .to_owned(),
        _ => String::new(),
    }
}

/// What went wrong: a [`kind`](Error::kind), the exact [`errno`](Error::errno), the image and
/// snapshot concerned where there are some, and a message naming them.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    errno: i32,
    message: String,
    image: Option<String>,
    snap: Option<String>,
    offset: Option<u64>,
}

impl Error {
    /// An error of `kind` with code `errno` and `message`.
    pub(crate) fn new(kind: ErrorKind, errno: i32, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            kind,
            errno,
            message: message.into(),
            image: None,
            snap: None,
            offset: None,
        }))
    }

    /// An error whose kind follows from its errno.
    pub(crate) fn from_errno(errno: i32, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::from_errno(errno), errno, message)
    }

    /// Names the image (`pool[/namespace]/image`) concerned.
    pub(crate) fn with_image(mut self, image: impl Into<String>) -> Error {
        self.0.image = Some(image.into());
        self
    }

    /// Names the snapshot concerned.
    pub(crate) fn with_snap(mut self, snap: impl Into<String>) -> Error {
        self.0.snap = Some(snap.into());
        self
    }

    /// The images compared differ from byte `offset` on; `message` says how.
    pub(crate) fn mismatch(image: &str, offset: u64, message: impl Into<String>) -> Error {
        let mut e = Error::new(ErrorKind::Mismatch, CODE_MISMATCH, message).with_image(image);
        e.0.offset = Some(offset);
        e
    }

    /// A setting or argument that cannot work.
    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, libc::EINVAL, message)
    }

    /// The negative return of librbd/librados call `op` on `target`.
    pub(crate) fn rbd(op: &str, target: &str, ret: i64) -> Error {
        let errno = errno_of(ret);
        Error::from_errno(errno, format!("{op} on {target}: {}", code_text(errno)))
    }

    /// The negative return of a read, write or zeroing of image data.
    pub(crate) fn io(op: &str, image: &str, offset: u64, len: u64, ret: i64) -> Error {
        let errno = errno_of(ret);
        let kind = match ErrorKind::from_errno(errno) {
            ErrorKind::Other => ErrorKind::Io,
            kind => kind,
        };
        Error::new(
            kind,
            errno,
            format!(
                "{op} of image {image} at offset {offset} (length {len}): {}{}",
                code_text(errno),
                io_hint(errno, image)
            ),
        )
    }

    /// The image does not exist.
    pub(crate) fn image_not_found(image: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            libc::ENOENT,
            format!("image {image} does not exist"),
        )
        .with_image(image)
    }

    /// The snapshot does not exist on that image.
    pub(crate) fn snap_not_found(image: &str, snap: &str) -> Error {
        Error::new(
            ErrorKind::NotFound,
            libc::ENOENT,
            format!("snapshot {snap:?} does not exist on image {image}"),
        )
        .with_image(image)
        .with_snap(snap)
    }

    /// The snapshot exists on that image already.
    pub(crate) fn snap_exists(image: &str, snap: &str) -> Error {
        Error::new(
            ErrorKind::Exists,
            libc::EEXIST,
            format!("snapshot {snap:?} already exists on image {image}"),
        )
        .with_image(image)
        .with_snap(snap)
    }

    /// The transfer into `image`, only its plan, or a verification of `image` was stopped.
    pub(crate) fn cancelled(image: &str, why: &str, task: Task) -> Error {
        let message = match task {
            Task::Plan => format!("planning the transfer into {image} {why}; nothing was written"),
            Task::Transfer => format!(
                "transfer into {image} {why}; no end snapshot was created, run it again to \
                 complete it"
            ),
            Task::Verify => format!("verification of {image} {why}"),
        };
        Error::new(ErrorKind::Cancelled, libc::ECANCELED, message).with_image(image)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The exact errno of the failure (positive), or a library code from the reserved range
    /// (see the [module documentation](self)).
    pub fn errno(&self) -> i32 {
        self.0.errno
    }

    /// The image concerned, `pool[/namespace]/image`, where there is one.
    pub fn image(&self) -> Option<&str> {
        self.0.image.as_deref()
    }

    /// The snapshot concerned, where there is one.
    pub fn snap(&self) -> Option<&str> {
        self.0.snap.as_deref()
    }

    /// For a [`Mismatch`](ErrorKind::Mismatch), the first byte at which the images differ (for
    /// images of different sizes, the smaller size, unless their content differs before it).
    pub fn offset(&self) -> Option<u64> {
        self.0.offset
    }

    /// The message, without the kind or code.
    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        match code_name(self.0.errno) {
            Some(name) => d.field("errno", &format_args!("{name}")),
            None => d.field("errno", &self.0.errno),
        };
        d.field("message", &self.0.message);
        if let Some(image) = &self.0.image {
            d.field("image", image);
        }
        if let Some(snap) = &self.0.snap {
            d.field("snap", snap);
        }
        if let Some(offset) = &self.0.offset {
            d.field("offset", offset);
        }
        d.finish()
    }
}

impl std::error::Error for Error {}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbd_errors_keep_the_exact_errno_and_print_it_by_name() {
        let e = Error::rbd("open", "rbd/img", -(libc::ENOENT as i64));
        assert_eq!((e.kind(), e.errno()), (ErrorKind::NotFound, libc::ENOENT));
        assert!(
            e.to_string().starts_with("open on rbd/img: ENOENT: "),
            "{e}"
        );
        let e = Error::rbd("write", "rbd/img", -(libc::EPERM as i64));
        assert_eq!(
            (e.kind(), e.errno()),
            (ErrorKind::PermissionDenied, libc::EPERM)
        );
    }

    #[test]
    fn data_io_with_an_unnamed_errno_is_an_io_error() {
        let e = Error::io("read", "rbd/img", 4096, 512, -(libc::ENXIO as i64));
        assert_eq!((e.kind(), e.errno()), (ErrorKind::Io, libc::ENXIO));
        let e = Error::io("write", "rbd/img", 0, 1, -(libc::EDQUOT as i64));
        assert_eq!(e.kind(), ErrorKind::NoSpace);
    }

    #[test]
    fn every_kind_has_a_code_that_maps_back_to_it() {
        for kind in ErrorKind::ALL {
            let code = match kind {
                ErrorKind::InvalidArgument => libc::EINVAL,
                ErrorKind::NotFound => libc::ENOENT,
                ErrorKind::Exists => libc::EEXIST,
                ErrorKind::PermissionDenied => libc::EACCES,
                ErrorKind::Busy => libc::EBUSY,
                ErrorKind::Fenced => libc::ESHUTDOWN,
                ErrorKind::DestinationChanged => CODE_DESTINATION_CHANGED,
                ErrorKind::Mismatch => CODE_MISMATCH,
                ErrorKind::Cancelled => libc::ECANCELED,
                ErrorKind::Timeout => libc::ETIMEDOUT,
                ErrorKind::NoSpace => libc::ENOSPC,
                ErrorKind::Unsupported => libc::EOPNOTSUPP,
                ErrorKind::Io => libc::EIO,
                ErrorKind::Other => libc::EXDEV,
            };
            assert_eq!(ErrorKind::from_errno(code), kind, "{code}");
            assert!(code_name(code).is_some(), "{kind} {code}");
        }
    }

    #[test]
    fn library_codes_are_beyond_every_errno_and_have_a_distinct_low_byte() {
        const { assert!(LIBRARY_CODE_BASE > 4095) };
        assert_eq!(CODE_DESTINATION_CHANGED & 0xff, 200);
        assert_eq!(CODE_MISMATCH & 0xff, 201);
        assert!(code_text(CODE_DESTINATION_CHANGED).starts_with("EDESTCHANGED: "));
        assert!(code_text(CODE_MISMATCH).starts_with("EMISMATCH: "));
    }

    #[test]
    fn unknown_codes_keep_their_number() {
        assert!(code_text(4095).contains("errno 4095"));
    }
}
