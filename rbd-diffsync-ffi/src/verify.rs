//! `rbd_diffsync_verify`: a comparison of two whole images, built with setters, then run;
//! cancellable from any thread.

use std::ffi::{c_char, c_int, c_void};

use rbd_diffsync::{Verify, VerifyStats};

use crate::cluster::rbd_diffsync_cluster;
use crate::guard::{free_handle, new_handle, Handle, LastError};
use crate::job::{
    self, go_and_fill, nanos, rbd_diffsync_finalizer, rbd_diffsync_progress_cb, Common, Job, Kept,
    Out, Runs,
};

/// What a verification that found both images equal did, filled in by
/// `rbd_diffsync_verify_run`; sized and owned as `rbd_diffsync_stats` is (its strings by the
/// verify handle).
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_verify_stats {
    /// In: `sizeof(rbd_diffsync_verify_stats)`; out: the bytes filled in.
    pub struct_size: usize,
    /// The first image, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: *const c_char,
    /// The second image, likewise.
    pub dest: *const c_char,
    /// The size of both.
    pub image_size: u64,
    /// Bytes read from each image and compared.
    pub bytes_compared: u64,
    /// Bytes allocated on neither image, which read as zeros on both and were not read.
    pub bytes_skipped: u64,
    /// Wall time in nanoseconds, connecting included.
    pub elapsed_ns: u64,
    /// Image bytes verified per second of wall time.
    pub throughput: f64,
}

/// The size of the struct in its first version, the least a caller may pass. Fixed for good.
const VERIFY_STATS_V1_SIZE: usize = size_of::<rbd_diffsync_verify_stats>();

/// A comparison of two images, each at a snapshot or HEAD, on one cluster or two: what
/// `rbd export A@S - | md5sum` and `rbd export B@S - | md5sum` tell, with many reads in flight,
/// without reading what neither image has allocated, and naming the first byte that differs.
/// Set it up, then run it, as often as wanted.
#[derive(Debug, Default)]
pub struct rbd_diffsync_verify(Job<Common>);

impl Handle for rbd_diffsync_verify {
    fn last_error(&self) -> &LastError {
        &self.0.error
    }
}

impl Runs for rbd_diffsync_verify {
    type Settings = Common;
    fn job(&self) -> &Job<Common> {
        &self.0
    }
}

/// Makes an empty verification into `*out`, to free with `rbd_diffsync_verify_free`. Set its
/// two images before running it.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_new(out: *mut *mut rbd_diffsync_verify) -> c_int {
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    unsafe { new_handle(out, rbd_diffsync_verify::default) }
}

/// Frees a verification, and finalizes its callback's `user_data`. NULL is a no-op. Not while
/// a call on it runs.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_free(verify: *mut rbd_diffsync_verify) {
    // SAFETY: the caller passes NULL or a handle of this library no other call uses.
    unsafe { free_handle(verify) }
}

/// The first image, `[pool[/namespace]/]image[@snap]`; without `@snap`, HEAD. `-EINVAL` for a
/// malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_source(
    verify: *mut rbd_diffsync_verify,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { job::set_image(verify, spec, true) }
}

/// The second image, `[pool[/namespace]/]image[@snap]`; without `@snap`, HEAD. `-EINVAL` for
/// a malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_dest(
    verify: *mut rbd_diffsync_verify,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { job::set_image(verify, spec, false) }
}

/// The first image's cluster, and the second's unless `rbd_diffsync_verify_set_dest_cluster`
/// says otherwise. The settings are copied: `cluster` may be changed or freed afterwards.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_cluster(
    verify: *mut rbd_diffsync_verify,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe { job::set_cluster(verify, cluster, false) }
}

/// The second image's cluster, when it is not the first's; NULL for the first's again. The
/// settings are copied.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_dest_cluster(
    verify: *mut rbd_diffsync_verify,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe { job::set_cluster(verify, cluster, true) }
}

/// The window of reads in flight, in chunks (default `RBD_DIFFSYNC_DEFAULT_WINDOW`, at most
/// 1024): at most window × chunk size bytes are held at once. Checked when run (`-EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_window(
    verify: *mut rbd_diffsync_verify,
    chunks: u32,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_window(verify, chunks) }
}

/// The largest read in bytes (default `RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE`): a multiple of 4 KiB
/// between 4 KiB and 1 GiB. Checked when run (`-EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_chunk_size(
    verify: *mut rbd_diffsync_verify,
    bytes: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_chunk_size(verify, bytes) }
}

/// Calls `callback` with `user_data` during runs, as `rbd_diffsync_transfer_set_progress`
/// does (same rules, same `finalizer`): the phases are connecting, scanning and verifying.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_progress(
    verify: *mut rbd_diffsync_verify,
    callback: rbd_diffsync_progress_cb,
    user_data: *mut c_void,
    finalizer: rbd_diffsync_finalizer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_progress(verify, callback, user_data, finalizer) }
}

/// The least time between two progress calls, in milliseconds (default 200).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_set_progress_interval_ms(
    verify: *mut rbd_diffsync_verify,
    milliseconds: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_progress_interval(verify, milliseconds) }
}

/// Compares the two images, writing nothing; blocks until done. 0 when they are equal,
/// filling in `*stats` unless it is NULL (set `stats->struct_size` first);
/// `-RBD_DIFFSYNC_EMISMATCH` when they differ, in content or size, with
/// `rbd_diffsync_verify_last_error_offset` giving the first byte that differs (for sizes that
/// differ, the smaller size unless the content differs before). An image read at HEAD while
/// another client writes it may of course differ.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_run(
    verify: *mut rbd_diffsync_verify,
    stats: *mut rbd_diffsync_verify_stats,
) -> c_int {
    let build = |s: VerifyStats, kept: &mut Kept| rbd_diffsync_verify_stats {
        struct_size: 0,
        source: kept.keep(Some(&s.source)),
        dest: kept.keep(Some(&s.dest)),
        image_size: s.image_size,
        bytes_compared: s.bytes_compared,
        bytes_skipped: s.bytes_skipped,
        elapsed_ns: nanos(s.elapsed),
        throughput: s.throughput(),
    };
    let out = Out::new(stats, "rbd_diffsync_verify_stats", VERIFY_STATS_V1_SIZE);
    let make = |s: &Common| s.builder::<Verify>("verification");
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { go_and_fill(verify, out, make, Verify::run, build) }
}

/// Stops the run in progress on `verify`, or if none is, the next one to start: it then fails
/// with `-ECANCELED`. Returns at once; callable from any thread, also while another thread
/// runs the verification. It never touches the verification's last error.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_cancel(verify: *const rbd_diffsync_verify) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::cancel(verify) }
}

/// The message of the last call on `verify` that failed (other than with a NULL handle), or ""
/// if none did. Owned by `verify`: valid until its next failing call or its free.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_last_error(
    verify: *const rbd_diffsync_verify,
) -> *const c_char {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { crate::last_error_of(verify) }
}

/// The offset that the last call on `verify` that failed named: for `-RBD_DIFFSYNC_EMISMATCH`,
/// the first byte at which the images differ. Writes it into `*out` and returns 0; `-ENODATA`
/// if that failure named no offset, or no call failed; `-EINVAL` for a NULL `verify` or `out`.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_verify_last_error_offset(
    verify: *const rbd_diffsync_verify,
    out: *mut u64,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers.
    unsafe { job::last_error_offset(verify, out) }
}
