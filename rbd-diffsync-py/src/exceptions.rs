//! The exception classes (`Error` and one subclass per [`ErrorKind`]) and the exceptions
//! made of the core's errors.

use std::ffi::CString;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use rbd_diffsync as core;
use rbd_diffsync::ErrorKind;

/// The exception classes: `Error` and one subclass per [`ErrorKind`], made once from the
/// core's table.
pub(crate) struct Exceptions {
    pub(crate) base: Py<PyType>,
    pub(crate) kinds: Vec<(ErrorKind, Py<PyType>)>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

/// `not_found` -> `NotFoundError`.
pub(crate) fn class_name(kind: ErrorKind) -> String {
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

fn cstring(s: String) -> PyResult<CString> {
    CString::new(s).map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))
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

/// The subclass of `base` for `kind`, such as `rbd_diffsync.NotFoundError`.
fn kind_class(py: Python<'_>, base: &Py<PyType>, kind: ErrorKind) -> PyResult<Py<PyType>> {
    let name = cstring(format!("rbd_diffsync.{}", class_name(kind)))?;
    let doc = cstring(format!("An rbd_diffsync.Error of kind {:?}.", kind.name()))?;
    let class = PyErr::new_type(py, &name, Some(&doc), Some(base.bind(py)), None)?;
    class.bind(py).setattr("kind", kind.name())?;
    Ok(class)
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
