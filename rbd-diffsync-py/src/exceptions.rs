//! The exception classes (`Error` and one subclass per [`ErrorKind`]) and the exceptions
//! made of the core's errors.

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use rbd_diffsync as core;
use rbd_diffsync::ErrorKind;

/// The exception classes: `Error` and one subclass per [`ErrorKind`], made once from the
/// core's table.
pub(crate) struct Exceptions {
    pub(crate) base: Py<PyType>,
    pub(crate) kinds: Vec<(ErrorKind, Py<PyType>)>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

/// `not_found` -> `NotFoundError`; `timeout` -> `TimedOutError` (no name of the module
/// shadows a builtin: `TimeoutError` stays an alias that `import *` does not bring).
pub(crate) fn class_name(kind: ErrorKind) -> String {
    if kind == ErrorKind::Timeout {
        return "TimedOutError".to_owned();
    }
    let mut out = String::new();
    for word in kind.name().split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out.push_str("Error");
    out
}

pub(crate) fn exceptions(py: Python<'_>) -> PyResult<&Exceptions> {
    EXCEPTIONS.get_or_try_init(py, || {
        let base = base_class(py)?;
        let mut kinds = Vec::new();
        for kind in ErrorKind::ALL {
            kinds.push((kind, kind_class(py, &base, kind)?));
        }
        Ok(Exceptions { base, kinds })
    })
}

/// `rbd_diffsync.Error`, an `OSError`.
fn base_class(py: Python<'_>) -> PyResult<Py<PyType>> {
    let os_error = py.get_type::<PyOSError>();
    let base = PyErr::new_type(
        py,
        c"rbd_diffsync.Error",
        Some(c"A failed transfer: an OSError whose errno is the exact system errno, or a code of the library's own (4296 and up); kind names the ErrorKind."),
        Some(&os_error),
        None,
    )?;
    // Class defaults, for an exception made by hand; a raised one sets its own.
    base.bind(py).setattr("kind", ErrorKind::Other.name())?;
    base.bind(py).setattr("image", py.None())?;
    base.bind(py).setattr("snap", py.None())?;
    base.bind(py).setattr("offset", py.None())?;
    // What a cancelled batch had done: set on the CancelledError of SyncMany.run().
    base.bind(py).setattr("results", py.None())?;
    Ok(base)
}

/// The subclass of `base` for `kind`, such as `rbd_diffsync.NotFoundError`: also a subclass
/// of the builtin that Python itself picks for the errnos of that kind, where there is one
/// (`FileNotFoundError` for `ENOENT`), so that `except FileNotFoundError` catches it.
fn kind_class(py: Python<'_>, base: &Py<PyType>, kind: ErrorKind) -> PyResult<Py<PyType>> {
    let name = class_name(kind);
    let doc = format!("An rbd_diffsync.Error of kind {:?}.", kind.name());
    let bases = match builtin_of(py, kind)? {
        Some(builtin) => PyTuple::new(py, [base.bind(py).clone(), builtin])?,
        None => PyTuple::new(py, [base.bind(py).clone()])?,
    };
    let namespace = PyDict::new(py);
    namespace.set_item("__doc__", doc)?;
    namespace.set_item("__module__", "rbd_diffsync")?;
    namespace.set_item("kind", kind.name())?;
    let class = py
        .get_type::<PyType>()
        .call1((name, bases, namespace))?
        .cast_into::<PyType>()?;
    Ok(class.unbind())
}

/// The errnos the core gives each kind of (its table, [`ErrorKind::from_errno`]).
const ERRNOS: [i32; 15] = [
    libc::EINVAL,
    libc::ENOENT,
    libc::EEXIST,
    libc::EACCES,
    libc::EPERM,
    libc::EBUSY,
    libc::ESHUTDOWN,
    libc::ECANCELED,
    libc::ETIMEDOUT,
    libc::ENOSPC,
    libc::EDQUOT,
    libc::EOPNOTSUPP,
    libc::ENOSYS,
    libc::EIO,
    libc::EINTR,
];

/// The subclass of `OSError` that Python makes of `OSError(errno, ...)` for every errno of
/// `kind`, if they agree on one: `FileNotFoundError` for `not_found`, `PermissionError` for
/// `permission_denied` (`EACCES` and `EPERM`), none for `busy`.
fn builtin_of(py: Python<'_>, kind: ErrorKind) -> PyResult<Option<Bound<'_, PyType>>> {
    let os_error = py.get_type::<PyOSError>();
    let mut picked: Option<Bound<'_, PyType>> = None;
    for errno in ERRNOS
        .into_iter()
        .filter(|&e| ErrorKind::from_errno(e) == kind)
    {
        let class = os_error.call1((errno, ""))?.get_type();
        match &picked {
            Some(p) if !p.is(&class) => return Ok(None),
            _ => picked = Some(class),
        }
    }
    Ok(picked.filter(|class| !class.is(&os_error)))
}

fn error_class(py: Python<'_>, kind: ErrorKind) -> PyResult<Bound<'_, PyType>> {
    let exc = exceptions(py)?;
    let class = exc
        .kinds
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&exc.base, |(_, class)| class);
    Ok(class.bind(py).clone())
}

/// What an exception says besides its kind, errno and message.
#[derive(Default)]
pub(crate) struct Context<'a> {
    image: Option<&'a str>,
    snap: Option<&'a str>,
    /// For a mismatch, the first differing byte.
    offset: Option<u64>,
}

/// An exception of `kind` with this errno and message, and `image`/`snap`/`offset`
/// attributes.
pub(crate) fn new_error(
    py: Python<'_>,
    kind: ErrorKind,
    errno: i32,
    message: &str,
    cx: Context<'_>,
) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let value = error_class(py, kind)?.call1((errno, message))?;
        value.setattr("kind", kind.name())?;
        value.setattr("image", cx.image)?;
        // As OSError's own: what the error concerns, here the image.
        value.setattr("filename", cx.image)?;
        value.setattr("snap", cx.snap)?;
        value.setattr("offset", cx.offset)?;
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

pub(crate) fn to_py_err(py: Python<'_>, e: &core::Error) -> PyErr {
    let cx = Context {
        image: e.image(),
        snap: e.snap(),
        offset: e.offset(),
    };
    new_error(py, e.kind(), e.errno(), e.message(), cx)
}

/// An `InvalidArgumentError` (`EINVAL`) saying `message`.
pub(crate) fn invalid(py: Python<'_>, message: String) -> PyErr {
    new_error(
        py,
        ErrorKind::InvalidArgument,
        libc::EINVAL,
        &message,
        Context::default(),
    )
}
