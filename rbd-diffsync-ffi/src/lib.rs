//! The C ABI of rbd-diffsync: `librbd_diffsync.so` and `librbd_diffsync.a`, declared by
//! `include/rbd_diffsync.h`, which cbindgen generates from this crate. The conventions of the
//! API (ownership, threads, errors, versions) are the header's top comment, in cbindgen.toml.
//!
//! Every entry point is `unsafe extern "C"`: the caller promises what those conventions say of
//! pointers (NULL or valid), and the library checks the rest.

// The exported names are C's.
#![allow(non_camel_case_types)]
// What each function requires of its pointers is said once for all, in the header's conventions.
#![allow(clippy::missing_safety_doc)]

mod batch;
mod cluster;
mod guard;
mod job;
mod transfer;
mod verify;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::sync::{Mutex, OnceLock};

use rbd_diffsync::error::{
    code_name, describe_code, CODE_DESTINATION_CHANGED, CODE_MISMATCH, LIBRARY_CODE_BASE,
};

pub use batch::*;
pub use cluster::*;
pub use job::{
    rbd_diffsync_finalizer, rbd_diffsync_progress, rbd_diffsync_progress_cb,
    RBD_DIFFSYNC_PHASE_COMMITTING, RBD_DIFFSYNC_PHASE_CONNECTING, RBD_DIFFSYNC_PHASE_COPYING,
    RBD_DIFFSYNC_PHASE_SCANNING, RBD_DIFFSYNC_PHASE_UNKNOWN, RBD_DIFFSYNC_PHASE_VERIFYING,
};
pub use transfer::*;
pub use verify::*;

use guard::{guard, lock, Handle};

/// The ABI version, in the shared library's soname (`librbd_diffsync.so.1`). It changes only
/// when a function or struct changes incompatibly; additions keep it.
pub const RBD_DIFFSYNC_ABI_VERSION: u32 = 1;

/// The library's code for a destination changed since `from_snap`, and not by an interrupted
/// transfer of the same diff. Returned negated, as errnos are: `ret == -RBD_DIFFSYNC_EDESTCHANGED`.
pub const RBD_DIFFSYNC_EDESTCHANGED: i32 = 4296;

/// The library's code for two images found different by a verification (a transfer's
/// `set_verify`, or `rbd_diffsync_verify_run`): `*_last_error_offset` gives the first byte that
/// differs. Returned negated: `ret == -RBD_DIFFSYNC_EMISMATCH`.
pub const RBD_DIFFSYNC_EMISMATCH: i32 = 4297;

/// The first of the library's own codes: a failed call's code `ret` is one of them when
/// `-ret >= RBD_DIFFSYNC_LIBRARY_CODE_BASE`, and `-errno` otherwise. Beyond every errno.
pub const RBD_DIFFSYNC_LIBRARY_CODE_BASE: i32 = 4296;

/// Default window of a transfer, in chunks.
pub const RBD_DIFFSYNC_DEFAULT_WINDOW: u32 = 32;

/// Default chunk size of a transfer, in bytes (2 MiB).
pub const RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE: u64 = 2097152;

/// Default connect timeout, in milliseconds (30 s), where ceph.conf leaves librados' own
/// (`client_mount_timeout`, 300 s): see `rbd_diffsync_cluster_set_connect_timeout_ms`.
pub const RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30000;

/// Default operation timeout, in milliseconds (60 s), where ceph.conf leaves librados' own
/// (`rados_osd_op_timeout` and `rados_mon_op_timeout`, 0: for ever): see
/// `rbd_diffsync_cluster_set_op_timeout_ms`.
pub const RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS: u64 = 60000;

// The header's literals are the core's values.
const _: () = {
    assert!(RBD_DIFFSYNC_EDESTCHANGED == CODE_DESTINATION_CHANGED);
    assert!(RBD_DIFFSYNC_EMISMATCH == CODE_MISMATCH);
    assert!(RBD_DIFFSYNC_LIBRARY_CODE_BASE == LIBRARY_CODE_BASE);
    assert!(RBD_DIFFSYNC_DEFAULT_WINDOW as usize == rbd_diffsync::DEFAULT_WINDOW);
    assert!(RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE == rbd_diffsync::DEFAULT_CHUNK_SIZE);
    assert!(
        RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS as u128
            == rbd_diffsync::DEFAULT_CONNECT_TIMEOUT.as_millis()
    );
    assert!(
        RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS as u128 == rbd_diffsync::DEFAULT_OP_TIMEOUT.as_millis()
    );
};

/// The library's version, such as `"0.1.0"`. Static.
#[no_mangle]
pub extern "C" fn rbd_diffsync_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the package version has no NUL byte"),
        };
    VERSION.as_ptr()
}

/// The ABI version of the library loaded, to compare with `RBD_DIFFSYNC_ABI_VERSION`.
#[no_mangle]
pub extern "C" fn rbd_diffsync_abi_version() -> u32 {
    RBD_DIFFSYNC_ABI_VERSION
}

/// Interns `s`: one static C string per distinct text, so that callers need free nothing.
/// Only texts of known codes come here, so the set stays small.
fn intern(s: String) -> *const c_char {
    static TEXTS: OnceLock<Mutex<HashMap<String, &'static CStr>>> = OnceLock::new();
    let mut texts = lock(TEXTS.get_or_init(Default::default));
    let text = texts
        .entry(s)
        .or_insert_with_key(|s| Box::leak(guard::c_string(s.as_str()).into_boxed_c_str()));
    text.as_ptr()
}

/// A code as the core knows it: positive, or `None` for one beyond the errnos that is not the
/// library's.
fn known_code(code: c_int) -> Option<i32> {
    let code = code.checked_abs()?;
    (code <= 4095 || code_name(code).is_some()).then_some(code)
}

/// A description of `code` (as returned, negative; a positive errno is taken as well): the
/// system's for an errno (`"No such file or directory"`), the library's for its own codes.
/// Static; thread-safe.
#[no_mangle]
pub extern "C" fn rbd_diffsync_strerror(code: c_int) -> *const c_char {
    let mut text = c"Unknown error code".as_ptr();
    guard(|| {
        if let Some(code) = known_code(code) {
            text = intern(describe_code(code));
        }
        0
    });
    text
}

/// The symbolic name of `code` (negative or positive), such as `"ENOENT"` or
/// `"EDESTCHANGED"`, or NULL for one the library does not name. Static; thread-safe.
#[no_mangle]
pub extern "C" fn rbd_diffsync_code_name(code: c_int) -> *const c_char {
    let mut name = std::ptr::null();
    guard(|| {
        if let Some(name_of) = known_code(code).and_then(code_name) {
            name = intern(name_of.to_owned());
        }
        0
    });
    name
}

/// The last error message of a handle, or a fixed text for NULL.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
unsafe fn last_error_of<H: Handle>(handle: *const H) -> *const c_char {
    // SAFETY: the caller's promise.
    match unsafe { handle.as_ref() } {
        Some(h) => h.last_error().as_ptr(),
        None => c"the handle is NULL".as_ptr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: *const c_char) -> &'static str {
        // SAFETY: the library's static strings.
        unsafe { CStr::from_ptr(p) }.to_str().unwrap()
    }

    #[test]
    fn the_header_abi_version_is_the_sonames() {
        assert_eq!(
            env!("RBD_DIFFSYNC_BUILD_ABI"),
            RBD_DIFFSYNC_ABI_VERSION.to_string()
        );
    }

    #[test]
    fn codes_are_described_from_the_cores_table_either_sign() {
        assert_eq!(text(rbd_diffsync_code_name(-libc::ENOENT)), "ENOENT");
        assert_eq!(text(rbd_diffsync_code_name(libc::ENOENT)), "ENOENT");
        assert_eq!(
            text(rbd_diffsync_code_name(-RBD_DIFFSYNC_EDESTCHANGED)),
            "EDESTCHANGED"
        );
        assert_eq!(
            text(rbd_diffsync_strerror(-RBD_DIFFSYNC_EDESTCHANGED)),
            describe_code(CODE_DESTINATION_CHANGED)
        );
        assert_eq!(
            text(rbd_diffsync_code_name(-RBD_DIFFSYNC_EMISMATCH)),
            "EMISMATCH"
        );
        assert_eq!(
            text(rbd_diffsync_strerror(-RBD_DIFFSYNC_EMISMATCH)),
            describe_code(CODE_MISMATCH)
        );
        assert!(rbd_diffsync_code_name(-4298).is_null());
        assert!(rbd_diffsync_code_name(i32::MIN).is_null());
        assert_eq!(text(rbd_diffsync_strerror(-99999)), "Unknown error code");
        // Interned: the same pointer each time.
        assert_eq!(rbd_diffsync_strerror(-5), rbd_diffsync_strerror(5));
    }
}
