//! What every entry point shares: the per-handle last error, the panic guard, and reading C
//! arguments.

use std::any::Any;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};

/// Returned when a panic was caught at the boundary: a bug of this library, not of the caller.
pub(crate) const PANIC_CODE: c_int = libc::ENOTRECOVERABLE;

/// Why a call failed: a positive errno or library code, a message, and for a mismatch the
/// first byte that differs.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: c_int,
    pub(crate) message: String,
    pub(crate) offset: Option<u64>,
}

impl Failure {
    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: libc::EINVAL,
            message: message.into(),
            offset: None,
        }
    }
}

impl From<rbd_diffsync::Error> for Failure {
    fn from(e: rbd_diffsync::Error) -> Failure {
        Failure {
            code: e.errno(),
            message: e.to_string(),
            offset: e.offset(),
        }
    }
}

/// The message of the last failed call on a handle, and the offset it named if any.
#[derive(Debug, Default)]
pub(crate) struct LastError(Mutex<(CString, Option<u64>)>);

impl LastError {
    /// Records `failure` and returns its negated code.
    pub(crate) fn set(&self, failure: Failure) -> c_int {
        *lock(&self.0) = (c_string(failure.message), failure.offset);
        -failure.code
    }

    /// The message; it stays valid until the next failing call on the handle or its free.
    pub(crate) fn as_ptr(&self) -> *const c_char {
        lock(&self.0).0.as_ptr()
    }

    /// The offset of the last failure, for a mismatch.
    pub(crate) fn offset(&self) -> Option<u64> {
        lock(&self.0).1
    }
}

/// A handle that keeps the message of its last failed call.
pub(crate) trait Handle {
    fn last_error(&self) -> &LastError;
}

/// Locks `m`, also when a panic caught at the boundary poisoned it: every value guarded here
/// stays consistent across a panic (each is replaced whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `s` as a C string, any NUL byte in it replaced.
pub(crate) fn c_string(s: impl Into<String>) -> CString {
    let s = s.into();
    CString::new(s.replace('\0', "\\0")).expect("no NUL byte is left")
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown payload");
    format!("internal error in rbd-diffsync (a bug, please report it): {what}")
}

/// Runs `f` with no panic escaping: a panic becomes `-ENOTRECOVERABLE`.
pub(crate) fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(-PANIC_CODE)
}

/// Runs `f` on the handle behind `handle`: `-EINVAL` for NULL, 0 on success, and on failure
/// the negated code, its message kept in the handle; a panic fails with `-ENOTRECOVERABLE`.
///
/// # Safety
///
/// `handle` is NULL or points to a live handle.
pub(crate) unsafe fn with_handle<H: Handle>(
    handle: *const H,
    f: impl FnOnce(&H) -> Result<(), Failure>,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle, only ever shared by reference.
    let Some(h) = (unsafe { handle.as_ref() }) else {
        return -libc::EINVAL;
    };
    let failure = match catch_unwind(AssertUnwindSafe(|| f(h))) {
        Ok(Ok(())) => return 0,
        Ok(Err(failure)) => failure,
        Err(payload) => Failure {
            code: PANIC_CODE,
            message: panic_message(payload.as_ref()),
            offset: None,
        },
    };
    h.last_error().set(failure)
}

/// Runs `f` on the handle behind `handle` as [`with_handle`] does, but keeps no message: the
/// code alone says why it failed (`-EINVAL` for NULL, `-ENOTRECOVERABLE` for a panic). For the
/// functions callable from any thread while another call on the handle runs: they must never
/// replace the handle's last error, whose string another thread may be reading.
///
/// # Safety
///
/// `handle` is NULL or points to a live handle.
pub(crate) unsafe fn with_handle_quietly<H>(
    handle: *const H,
    f: impl FnOnce(&H) -> Result<(), Failure>,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle, only ever shared by reference.
    let Some(h) = (unsafe { handle.as_ref() }) else {
        return -libc::EINVAL;
    };
    match catch_unwind(AssertUnwindSafe(|| f(h))) {
        Ok(Ok(())) => 0,
        Ok(Err(failure)) => -failure.code,
        Err(_) => -PANIC_CODE,
    }
}

/// Boxes the handle made by `make` into `*out`, or fails with `-EINVAL` for a NULL `out`.
///
/// # Safety
///
/// `out` is NULL or valid for a write.
pub(crate) unsafe fn new_handle<H>(out: *mut *mut H, make: impl FnOnce() -> H) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let handle = Box::into_raw(Box::new(make()));
        // SAFETY: `out` is not NULL and the caller made it valid for a write.
        unsafe { out.write(handle) };
        0
    })
}

/// Frees a handle made by [`new_handle`]; NULL is a no-op.
///
/// # Safety
///
/// `handle` is NULL or a handle from [`new_handle`] that no other call is using.
pub(crate) unsafe fn free_handle<H>(handle: *mut H) {
    if handle.is_null() {
        return;
    }
    guard(|| {
        // SAFETY: the caller passes a handle from Box::into_raw that nothing else uses.
        drop(unsafe { Box::from_raw(handle) });
        0
    });
}

/// The string argument `what` (a NUL-terminated UTF-8 string).
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's promise, with NULL checked first.
    let bytes = unsafe { bytes_arg(p, what)? };
    std::str::from_utf8(bytes).map_err(|_| Failure::invalid(format!("{what} is not valid UTF-8")))
}

/// The bytes of the string argument `what`, for paths, which need not be UTF-8.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn bytes_arg<'a>(p: *const c_char, what: &str) -> Result<&'a [u8], Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// A path argument.
///
/// # Safety
///
/// `p` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn path_arg(p: *const c_char, what: &str) -> Result<std::path::PathBuf, Failure> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the caller's promise.
    let bytes = unsafe { bytes_arg(p, what)? };
    Ok(std::ffi::OsStr::from_bytes(bytes).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct H(LastError);
    impl Handle for H {
        fn last_error(&self) -> &LastError {
            &self.0
        }
    }

    fn message(h: &H) -> String {
        // SAFETY: the pointer is the handle's, alive here.
        unsafe { CStr::from_ptr(h.0.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_code_and_a_message_in_the_handle() {
        let h = H::default();
        // SAFETY: a live handle.
        let code = unsafe { with_handle(&h, |_| panic!("boom")) };
        assert_eq!(code, -libc::ENOTRECOVERABLE);
        assert!(message(&h).contains("boom"), "{}", message(&h));
        // The poisoned-free state still serves the next call.
        // SAFETY: a live handle.
        let code = unsafe { with_handle(&h, |_| Err(Failure::invalid("bad"))) };
        assert_eq!((code, message(&h).as_str()), (-libc::EINVAL, "bad"));
        assert_eq!(guard(|| panic!("no handle")), -libc::ENOTRECOVERABLE);
    }

    #[test]
    fn a_quiet_failure_leaves_the_last_error_as_it_was() {
        let h = H::default();
        // SAFETY: a live handle.
        let code = unsafe { with_handle(&h, |_| Err(Failure::invalid("first"))) };
        assert_eq!(code, -libc::EINVAL);
        let before = h.0.as_ptr();
        // SAFETY: a live handle.
        let code = unsafe {
            with_handle_quietly(&h, |_| {
                Err(Failure {
                    code: libc::ERANGE,
                    message: "second".to_owned(),
                    offset: None,
                })
            })
        };
        assert_eq!(code, -libc::ERANGE);
        // SAFETY: a live handle.
        let code = unsafe { with_handle_quietly(&h, |_| panic!("boom")) };
        assert_eq!(code, -libc::ENOTRECOVERABLE);
        // The very string a caller may still hold, unchanged.
        assert_eq!((h.0.as_ptr(), message(&h).as_str()), (before, "first"));
        // SAFETY: NULL is allowed.
        let code = unsafe { with_handle_quietly(std::ptr::null::<H>(), |_| Ok(())) };
        assert_eq!(code, -libc::EINVAL);
    }

    #[test]
    fn null_handles_and_strings_are_refused() {
        // SAFETY: NULL is allowed.
        let code = unsafe { with_handle(std::ptr::null::<H>(), |_| Ok(())) };
        assert_eq!(code, -libc::EINVAL);
        // SAFETY: NULL is allowed.
        let e = unsafe { str_arg(std::ptr::null(), "spec") }.unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (libc::EINVAL, "spec is NULL"));
        // SAFETY: a NUL-terminated string.
        let e = unsafe { str_arg(c"\xff".as_ptr(), "spec") }.unwrap_err();
        assert_eq!(e.code, libc::EINVAL);
    }

    #[test]
    fn messages_with_nul_bytes_are_kept_readable() {
        assert_eq!(c_string("a\0b").as_bytes(), b"a\\0b");
    }
}
