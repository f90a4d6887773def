//! `rbd_diffsync_transfer`: a transfer built with setters, then planned or run; cancellable
//! from any thread.

use std::ffi::{c_char, c_int, c_void};
use std::mem::offset_of;

use rbd_diffsync::{DiffTransfer, Plan, TransferStats};

use crate::cluster::rbd_diffsync_cluster;
use crate::guard::{free_handle, new_handle, str_arg, Failure, Handle, LastError};
use crate::job::{
    self, go_and_fill, nanos, rbd_diffsync_finalizer, rbd_diffsync_progress_cb, Common, Job, Kept,
    Out, Runs,
};

/// What a finished transfer did, filled in by `rbd_diffsync_transfer_run`. Set `struct_size`
/// to `sizeof(rbd_diffsync_stats)` before the call; the library fills in the fields that fit
/// in both its version of the struct and yours, and sets `struct_size` to the bytes it
/// filled; fields added since ABI version 1 lie beyond `continued_interrupted`, and a caller
/// built with an older header passes the older, smaller size. Its strings are owned by the
/// transfer: valid until its next run or plan, or its free.
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_stats {
    /// In: `sizeof(rbd_diffsync_stats)`; out: the bytes filled in.
    pub struct_size: usize,
    /// The source, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: *const c_char,
    /// The destination image, `pool[/namespace]/image`, its pool resolved.
    pub dest: *const c_char,
    /// The base snapshot of an incremental; NULL for a full transfer.
    pub from_snap: *const c_char,
    /// The snapshot created on the destination; NULL for a source at HEAD.
    pub end_snap: *const c_char,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes written to the destination as data.
    pub bytes_written: u64,
    /// Bytes made to read as zeros on the destination with write_zeroes.
    pub bytes_zeroed: u64,
    /// Zero bytes that needed no request because the destination read zeros there already.
    pub bytes_skipped: u64,
    /// Ranges reported by the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Size of the diff: the bytes of all those ranges.
    pub diff_bytes: u64,
    /// The source size at the end snapshot, which the destination now has.
    pub image_size: u64,
    /// Wall time of the whole transfer in nanoseconds, checks included.
    pub elapsed_ns: u64,
    /// Of that, the time spent creating the end snapshot (the commit marker).
    pub snapshot_elapsed_ns: u64,
    /// Diff bytes handled per second of wall time.
    pub throughput: f64,
    /// Whether the transfer created the destination image.
    pub created_destination: bool,
    /// Whether the destination held the writes of an interrupted transfer of the same diff,
    /// which this one completed.
    pub continued_interrupted: bool,
    /// Bytes of the diff that the interrupted transfer of the very same diff had completed
    /// (below its checkpoint), and that this one did not do again.
    pub bytes_resumed: u64,
    /// The address of the killed client of an interrupted transfer into the destination that
    /// this transfer fenced off (blocklisted, breaking its exclusive lock if it held it)
    /// instead of waiting for its watch to expire; NULL if it fenced none.
    pub broke_lock_of: *const c_char,
    /// Bytes read back from both images and compared after the writes
    /// (`rbd_diffsync_transfer_set_verify`); 0 without.
    pub bytes_verified: u64,
    /// Bytes below the checkpoint of an interrupted transfer that this one compared with the
    /// source instead of trusting them, because that transfer had let go of the destination
    /// before (another client could have written there since); chunks that differed were
    /// rewritten.
    pub bytes_rechecked: u64,
}

/// What a transfer would do, filled in by `rbd_diffsync_transfer_plan`; sized and owned as
/// `rbd_diffsync_stats` is.
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_plan {
    /// In: `sizeof(rbd_diffsync_plan)`; out: the bytes filled in.
    pub struct_size: usize,
    /// The source, `pool[/namespace]/image[@snap]`, its pool resolved.
    pub source: *const c_char,
    /// The destination image, `pool[/namespace]/image`, its pool resolved.
    pub dest: *const c_char,
    /// The base of an incremental; NULL for a full transfer.
    pub from_snap: *const c_char,
    /// The snapshot the transfer would create on the destination; NULL for a source at HEAD.
    pub end_snap: *const c_char,
    /// The source size, which the destination will have.
    pub source_size: u64,
    /// The destination's size now; 0 when the transfer creates it.
    pub dest_size: u64,
    /// Ranges of the source's diff (after merging neighbours of the same kind).
    pub extents: u64,
    /// Bytes of those ranges.
    pub diff_bytes: u64,
    /// Bytes to read from the source: the diff's data ranges and ranges of the destination to
    /// rewrite (from `resume_from` on).
    pub data_bytes: u64,
    /// Bytes to make read as zeros (some may need no request).
    pub zero_bytes: u64,
    /// Whether the transfer would create the destination.
    pub create_destination: bool,
    /// Whether the destination holds the writes of an interrupted transfer of the same diff,
    /// which the transfer would complete.
    pub continues_interrupted: bool,
    /// Whether the transfer would write over data or changes that `set_force` allowed.
    pub overwrites_destination: bool,
    /// Where the transfer would resume: the checkpoint of the interrupted transfer of the very
    /// same diff (source image, base and end snapshot), below which it had written
    /// everything; 0 when it starts from the beginning.
    pub resume_from: u64,
    /// Bytes of the diff below `resume_from`, done by the interrupted transfer and not again.
    pub bytes_resumed: u64,
}

/// `s` as the C struct, its strings kept in `kept`.
pub(crate) fn stats_of(s: &TransferStats, kept: &mut Kept) -> rbd_diffsync_stats {
    rbd_diffsync_stats {
        struct_size: 0,
        source: kept.keep(Some(&s.source)),
        dest: kept.keep(Some(&s.dest)),
        from_snap: kept.keep(s.from_snap.as_deref()),
        end_snap: kept.keep(s.end_snap.as_deref()),
        bytes_read: s.bytes_read,
        bytes_written: s.bytes_written,
        bytes_zeroed: s.bytes_zeroed,
        bytes_skipped: s.bytes_skipped,
        extents: s.extents,
        diff_bytes: s.diff_bytes,
        image_size: s.image_size,
        elapsed_ns: nanos(s.elapsed),
        snapshot_elapsed_ns: nanos(s.snapshot_elapsed),
        throughput: s.throughput(),
        created_destination: s.created_destination,
        continued_interrupted: s.continued_interrupted,
        bytes_resumed: s.bytes_resumed,
        broke_lock_of: kept.keep(s.broke_lock_of.as_deref()),
        bytes_verified: s.bytes_verified,
        bytes_rechecked: s.bytes_rechecked,
    }
}

/// The sizes of the structs in ABI version 1, the least a caller may pass: up to the first
/// field added after it. Fixed for good.
pub(crate) const STATS_V1_SIZE: usize = offset_of!(rbd_diffsync_stats, bytes_resumed);
const PLAN_V1_SIZE: usize = offset_of!(rbd_diffsync_plan, resume_from);

/// What the setters set.
#[derive(Clone, Debug, Default)]
pub(crate) struct Settings {
    common: Common,
    from_snap: Option<String>,
}

impl job::Settings for Settings {
    fn common(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl Settings {
    pub(crate) fn transfer(&self) -> Result<DiffTransfer, Failure> {
        let mut t = self.common.builder::<DiffTransfer>("transfer")?;
        if let Some(from) = &self.from_snap {
            t = t.from_snap(from.clone());
        }
        Ok(t)
    }
}

/// A transfer of the changes of a source image (at its snapshot, or HEAD) since `from_snap`
/// (or since it was empty) into a destination image: set it up, then plan or run it, as
/// often as wanted.
#[derive(Debug, Default)]
pub struct rbd_diffsync_transfer(Job<Settings>);

impl Handle for rbd_diffsync_transfer {
    fn last_error(&self) -> &LastError {
        &self.0.error
    }
}

impl Runs for rbd_diffsync_transfer {
    type Settings = Settings;
    fn job(&self) -> &Job<Settings> {
        &self.0
    }
}

/// Makes an empty transfer into `*out`, to free with `rbd_diffsync_transfer_free`. Set at
/// least its source and destination before planning or running it.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_new(out: *mut *mut rbd_diffsync_transfer) -> c_int {
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    unsafe { new_handle(out, rbd_diffsync_transfer::default) }
}

/// Frees a transfer, and finalizes its callback's `user_data`. NULL is a no-op. Not while a
/// call on it runs.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_free(transfer: *mut rbd_diffsync_transfer) {
    // SAFETY: the caller passes NULL or a handle of this library no other call uses.
    unsafe { free_handle(transfer) }
}

/// The source, `[pool[/namespace]/]image[@snap]`. Without `@snap` the transfer reads HEAD and
/// creates no snapshot on the destination. `-EINVAL` for a malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_source(
    transfer: *mut rbd_diffsync_transfer,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { job::set_image(transfer, spec, true) }
}

/// The destination image, `[pool[/namespace]/]image` (no snapshot: the one created is named
/// after the source's). `-EINVAL` for a malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_dest(
    transfer: *mut rbd_diffsync_transfer,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { job::set_image(transfer, spec, false) }
}

/// Transfers only what changed since this snapshot, which must exist on both images: an
/// incremental. NULL makes the transfer full again (the default).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_from_snap(
    transfer: *mut rbd_diffsync_transfer,
    snap: *const c_char,
) -> c_int {
    let read = || match snap.is_null() {
        true => Ok(None),
        // SAFETY: not NULL; the caller passes a NUL-terminated string.
        false => Ok(Some(unsafe { str_arg(snap, "snap") }?.to_owned())),
    };
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set(transfer, read, |s, snap| s.from_snap = snap) }
}

/// The source's cluster, and the destination's unless `rbd_diffsync_transfer_set_dest_cluster`
/// says otherwise. The settings are copied: `cluster` may be changed or freed afterwards.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_cluster(
    transfer: *mut rbd_diffsync_transfer,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe { job::set_cluster(transfer, cluster, false) }
}

/// The destination's cluster, when it is not the source's; NULL for the source's again. The
/// settings are copied.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_dest_cluster(
    transfer: *mut rbd_diffsync_transfer,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe { job::set_cluster(transfer, cluster, true) }
}

/// Sets a switch of the transfer.
///
/// # Safety
///
/// `transfer` is NULL or a live handle.
unsafe fn set_switch(
    transfer: *mut rbd_diffsync_transfer,
    on: bool,
    f: impl FnOnce(&mut Settings, bool),
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { job::set(transfer, || Ok(on), f) }
}

/// The window of I/O in flight, in chunks (default `RBD_DIFFSYNC_DEFAULT_WINDOW`, at most
/// 1024): the transfer holds at most window × chunk size bytes of data at once. Checked when
/// the transfer is planned or run (`-EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_window(
    transfer: *mut rbd_diffsync_transfer,
    chunks: u32,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_window(transfer, chunks) }
}

/// The largest data request in bytes (default `RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE`): a multiple
/// of 4 KiB between 4 KiB and 1 GiB. Checked when the transfer is planned or run (`-EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_chunk_size(
    transfer: *mut rbd_diffsync_transfer,
    bytes: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_chunk_size(transfer, bytes) }
}

/// Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
/// fast-diff, more data to read. Off by default.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_whole_object(
    transfer: *mut rbd_diffsync_transfer,
    on: bool,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set_switch(transfer, on, |s, on| s.common.settings.whole_object = on) }
}

/// Allows writing over what the destination holds (the command line's `--force`): a full
/// transfer into an image that has snapshots, holds data or is open by another client, and an
/// incremental into an image changed since `from_snap` (the changed ranges are rewritten from
/// the source). Off by default: those are refused with `-EEXIST`, `-EBUSY` or
/// `-RBD_DIFFSYNC_EDESTCHANGED`.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_force(
    transfer: *mut rbd_diffsync_transfer,
    on: bool,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        set_switch(transfer, on, |s, on| {
            s.common.settings.overwrite_existing = on
        })
    }
}

/// After the writes, before the end snapshot, reads back every range the run wrote or zeroed
/// from both images (the source at its end snapshot, the destination at HEAD) and compares
/// them (the command line's `--verify`; `stats->bytes_verified`). A difference fails the run
/// with `-RBD_DIFFSYNC_EMISMATCH`, `rbd_diffsync_transfer_last_error_offset` giving the first
/// differing byte, and no end snapshot is created: running it again rewrites those ranges.
/// Off by default.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_verify(
    transfer: *mut rbd_diffsync_transfer,
    on: bool,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set_switch(transfer, on, |s, on| s.common.settings.verify = on) }
}

/// Caps the bytes the transfer reads from the source at `bytes_per_sec` on average (the
/// command line's `--max-rate`); 0 removes the cap (the default). Only data counts: ranges
/// made to read as zeros are not held back. While it waits for the cap the transfer still
/// reports progress and can be cancelled. In a batch (`rbd_diffsync_batch_add`) its own cap
/// applies besides the batch's. With verification on, its reads of the source are held back
/// by the cap too.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_rate_limit(
    transfer: *mut rbd_diffsync_transfer,
    bytes_per_sec: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        job::set(
            transfer,
            || Ok(bytes_per_sec),
            |s, rate| s.common.settings.rate_limit = (rate > 0).then_some(rate),
        )
    }
}

/// Calls `callback` with `user_data` during plans and runs: on their thread only, at most
/// every progress interval (default 200 ms) in every phase, also while a call to the cluster
/// blocks, and at every change of phase and at the end. A nonzero return stops the transfer.
/// `finalizer` (may be NULL) is called with `user_data` once the callback is replaced or the
/// transfer freed. A NULL `callback` removes the callback; `finalizer` is then not called, nor
/// when this call fails: `user_data` stays the caller's.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_progress(
    transfer: *mut rbd_diffsync_transfer,
    callback: rbd_diffsync_progress_cb,
    user_data: *mut c_void,
    finalizer: rbd_diffsync_finalizer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_progress(transfer, callback, user_data, finalizer) }
}

/// The least time between two progress calls, in milliseconds (default 200).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_progress_interval_ms(
    transfer: *mut rbd_diffsync_transfer,
    milliseconds: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::set_progress_interval(transfer, milliseconds) }
}

/// Runs every check and computes the diff, writing nothing (the destination is opened
/// read-only and not locked): what a run would do now. Fills in `*plan` unless it is NULL;
/// set `plan->struct_size` first.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_plan(
    transfer: *mut rbd_diffsync_transfer,
    plan: *mut rbd_diffsync_plan,
) -> c_int {
    let build = |p: Plan, kept: &mut Kept| rbd_diffsync_plan {
        struct_size: 0,
        source: kept.keep(Some(&p.source)),
        dest: kept.keep(Some(&p.dest)),
        from_snap: kept.keep(p.from_snap.as_deref()),
        end_snap: kept.keep(p.end_snap.as_deref()),
        source_size: p.source_size,
        dest_size: p.dest_size.unwrap_or(0),
        extents: p.extents,
        diff_bytes: p.diff_bytes,
        data_bytes: p.data_bytes,
        zero_bytes: p.zero_bytes,
        create_destination: p.create_destination,
        continues_interrupted: p.continues_interrupted,
        overwrites_destination: p.overwrites_destination,
        resume_from: p.resume_from,
        bytes_resumed: p.bytes_resumed,
    };
    let out = Out::new(plan, "rbd_diffsync_plan", PLAN_V1_SIZE);
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { go_and_fill(transfer, out, Settings::transfer, DiffTransfer::plan, build) }
}

/// Checks everything, then transfers. Nothing is written unless every check passed; the
/// destination's end snapshot is created only after every write succeeded, so a failed,
/// cancelled or killed run leaves none, and running it again completes it. Blocks until done.
/// Fills in `*stats` unless it is NULL; set `stats->struct_size` first.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_run(
    transfer: *mut rbd_diffsync_transfer,
    stats: *mut rbd_diffsync_stats,
) -> c_int {
    let out = Out::new(stats, "rbd_diffsync_stats", STATS_V1_SIZE);
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        go_and_fill(
            transfer,
            out,
            Settings::transfer,
            DiffTransfer::run,
            |s, kept| stats_of(&s, kept),
        )
    }
}

/// Stops the run or plan in progress on `transfer`, or if none is, the next one to start: it
/// then fails with `-ECANCELED`, requests in flight drained, no end snapshot created. Once the
/// end snapshot is being created it is too late: the run completes. Returns at once; callable
/// from any thread, also while another thread runs the transfer. It never touches the
/// transfer's last error.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_cancel(
    transfer: *const rbd_diffsync_transfer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { job::cancel(transfer) }
}

/// The message of the last call on `transfer` that failed (other than with a NULL handle),
/// naming the cluster, image and snapshot concerned, or "" if none did. Owned by `transfer`:
/// valid until its next failing call or its free.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_last_error(
    transfer: *const rbd_diffsync_transfer,
) -> *const c_char {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { crate::last_error_of(transfer) }
}

/// The offset that the last call on `transfer` that failed named: for
/// `-RBD_DIFFSYNC_EMISMATCH`, the first byte at which the images differ. Writes it into `*out`
/// and returns 0; `-ENODATA` if that failure named no offset, or no call failed; `-EINVAL` for
/// a NULL `transfer` or `out`.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_last_error_offset(
    transfer: *const rbd_diffsync_transfer,
    out: *mut u64,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers.
    unsafe { job::last_error_offset(transfer, out) }
}
