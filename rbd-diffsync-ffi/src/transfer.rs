//! `rbd_diffsync_transfer`: a transfer built with setters, then planned or run; cancellable
//! from any thread.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ops::ControlFlow;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rbd_diffsync::{
    CancelToken, ClusterSpec, DiffTransfer, ImageSpec, Phase, Plan, Progress, TransferStats,
};

use crate::cluster::rbd_diffsync_cluster;
use crate::guard::{
    c_string, free_handle, lock, new_handle, str_arg, with_handle, Failure, Handle, LastError,
};

/// Phase of a transfer in `rbd_diffsync_progress.phase`: connecting to the clusters and
/// opening the images.
pub const RBD_DIFFSYNC_PHASE_CONNECTING: u32 = 0;
/// Checking the images, taking the destination's lock and computing the diff.
pub const RBD_DIFFSYNC_PHASE_SCANNING: u32 = 1;
/// Reading, writing and zeroing.
pub const RBD_DIFFSYNC_PHASE_COPYING: u32 = 2;
/// Shrinking the destination if needed, flushing and creating the end snapshot.
pub const RBD_DIFFSYNC_PHASE_COMMITTING: u32 = 3;
/// A phase added after this header: `phase_name` names it.
pub const RBD_DIFFSYNC_PHASE_UNKNOWN: u32 = 0xFFFF_FFFF;

/// Where a running transfer is, as given to the progress callback. Valid only during the
/// call. Fields may be added at the end: `struct_size` is the size the library filled in.
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_progress {
    /// `sizeof` the struct as this library knows it.
    pub struct_size: usize,
    /// One of the `RBD_DIFFSYNC_PHASE_*` values.
    pub phase: u32,
    /// `"connecting"`, `"scanning"`, `"copying"` or `"committing"`.
    pub phase_name: *const c_char,
    /// Bytes of the transfer done (copied, zeroed or found to need nothing).
    pub bytes_done: u64,
    /// Bytes of the transfer in all; 0 until the diff is known.
    pub bytes_total: u64,
    /// Nanoseconds since the transfer started.
    pub elapsed_ns: u64,
    /// What the transfer has been waiting for, for more than a second (a cluster's answer, a
    /// lock, requests in flight), or NULL.
    pub waiting_for: *const c_char,
    /// For how many nanoseconds it has waited for that.
    pub waited_ns: u64,
}

/// What a finished transfer did, filled in by `rbd_diffsync_transfer_run`. Set `struct_size`
/// to `sizeof(rbd_diffsync_stats)` before the call; the library fills in the fields that fit
/// in both its version of the struct and yours, and sets `struct_size` to the bytes it
/// filled. Its strings are owned by the transfer: valid until its next run or plan, or its
/// free.
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
    /// rewrite.
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
}

/// The sizes of the structs in ABI version 1: the least a caller may pass. Fixed for good;
/// fields added later lie beyond them.
const PROGRESS_V1_SIZE: usize = size_of::<rbd_diffsync_progress>();
const STATS_V1_SIZE: usize = size_of::<rbd_diffsync_stats>();
const PLAN_V1_SIZE: usize = size_of::<rbd_diffsync_plan>();

/// A progress callback: called on the thread running `rbd_diffsync_transfer_run` or
/// `rbd_diffsync_transfer_plan`, never on another. Return 0 to go on; any other value stops
/// the transfer as `rbd_diffsync_transfer_cancel` would (the call then fails with
/// `-ECANCELED`); the transfer's end may still be reported after that. It must not unwind
/// (C++ exceptions, longjmp) out of the call.
pub type rbd_diffsync_progress_cb = Option<
    unsafe extern "C" fn(progress: *const rbd_diffsync_progress, user_data: *mut c_void) -> c_int,
>;

/// Releases a callback's `user_data`: called once, when the callback is replaced or the
/// transfer freed, and after any run using it has returned, on the thread doing that.
pub type rbd_diffsync_finalizer = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The user's callback, its data and finalizer; finalized when the last run using it and the
/// transfer holding it are done with it.
#[derive(Debug)]
struct Callback {
    call: unsafe extern "C" fn(*const rbd_diffsync_progress, *mut c_void) -> c_int,
    user_data: *mut c_void,
    finalizer: rbd_diffsync_finalizer,
}

// SAFETY: the library never calls `call` concurrently nor off the thread that runs the transfer
// (the core calls progress callbacks on its calling thread only), and calls `finalizer` once,
// on the thread that drops the last reference: what the header promises the user, who vouches
// that `user_data` may be used so.
unsafe impl Send for Callback {}
// SAFETY: shared references only reach `call` through a run, as above.
unsafe impl Sync for Callback {}

impl Drop for Callback {
    fn drop(&mut self) {
        if let Some(finalize) = self.finalizer {
            // SAFETY: the user's finalizer with the user's data, called once.
            unsafe { finalize(self.user_data) }
        }
    }
}

impl Callback {
    /// Reports `p`: `Break` when the callback asks to stop.
    fn report(&self, p: &Progress) -> ControlFlow<()> {
        let phase_name = c_string(p.phase.name());
        let waiting_for = p.waiting_for.as_deref().map(c_string);
        let progress = rbd_diffsync_progress {
            struct_size: PROGRESS_V1_SIZE,
            phase: phase_code(p.phase),
            phase_name: phase_name.as_ptr(),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            elapsed_ns: nanos(p.elapsed),
            waiting_for: waiting_for.as_ref().map_or(ptr::null(), |w| w.as_ptr()),
            waited_ns: nanos(p.waited),
        };
        // SAFETY: the user's callback with a progress that outlives the call and the user's
        // data, on the thread running the transfer.
        match unsafe { (self.call)(&progress, self.user_data) } {
            0 => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

fn phase_code(phase: Phase) -> u32 {
    match phase {
        Phase::Connecting => RBD_DIFFSYNC_PHASE_CONNECTING,
        Phase::Scanning => RBD_DIFFSYNC_PHASE_SCANNING,
        Phase::Copying => RBD_DIFFSYNC_PHASE_COPYING,
        Phase::Committing => RBD_DIFFSYNC_PHASE_COMMITTING,
        _ => RBD_DIFFSYNC_PHASE_UNKNOWN,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the setters set.
#[derive(Debug, Default)]
struct Settings {
    source: Option<ImageSpec>,
    dest: Option<ImageSpec>,
    from_snap: Option<String>,
    cluster: ClusterSpec,
    dest_cluster: Option<ClusterSpec>,
    chunk_size: Option<u64>,
    window: Option<usize>,
    whole_object: bool,
    force: bool,
    progress: Option<Arc<Callback>>,
    progress_interval: Option<Duration>,
}

impl Settings {
    fn transfer(&self) -> Result<DiffTransfer, Failure> {
        let (Some(source), Some(dest)) = (&self.source, &self.dest) else {
            return Err(Failure::invalid(
                "the transfer has no source or no destination: set both first",
            ));
        };
        let mut t = DiffTransfer::new(source.clone(), dest.clone())
            .cluster(self.cluster.clone())
            .whole_object(self.whole_object)
            .overwrite_existing(self.force);
        if let Some(from) = &self.from_snap {
            t = t.from_snap(from.clone());
        }
        if let Some(spec) = &self.dest_cluster {
            t = t.dest_cluster(spec.clone());
        }
        if let Some(bytes) = self.chunk_size {
            t = t.chunk_size(bytes);
        }
        if let Some(chunks) = self.window {
            t = t.window(chunks);
        }
        if let Some(interval) = self.progress_interval {
            t = t.progress_interval(interval);
        }
        if let Some(callback) = &self.progress {
            let callback = Arc::clone(callback);
            t = t.on_progress(move |p| callback.report(p));
        }
        Ok(t)
    }
}

/// A transfer of the changes of a source image (at its snapshot, or HEAD) since `from_snap`
/// (or since it was empty) into a destination image: set it up, then plan or run it, as
/// often as wanted.
#[derive(Debug, Default)]
pub struct rbd_diffsync_transfer {
    settings: Mutex<Settings>,
    /// The token of the run in progress, or of the next one.
    cancel: Mutex<CancelToken>,
    /// The strings of the last stats or plan.
    strings: Mutex<Vec<CString>>,
    error: LastError,
}

impl Handle for rbd_diffsync_transfer {
    fn last_error(&self) -> &LastError {
        &self.error
    }
}

impl rbd_diffsync_transfer {
    fn set(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut lock(&self.settings));
    }

    /// Runs `op` on the transfer as set now, with the token a cancel stops; a cancelled token
    /// is replaced afterwards so that the next run may go.
    fn go<T>(
        &self,
        op: impl FnOnce(DiffTransfer) -> rbd_diffsync::Result<T>,
    ) -> Result<T, Failure> {
        let transfer = lock(&self.settings).transfer()?;
        let token = lock(&self.cancel).clone();
        let result = op(transfer.cancel_token(token.clone()));
        if token.is_cancelled() {
            *lock(&self.cancel) = CancelToken::new();
        }
        Ok(result?)
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

/// Sets an image spec from `spec`, parsed as the rbd CLI does.
///
/// # Safety
///
/// As every entry point: NULL or live pointers.
unsafe fn set_spec(
    transfer: *mut rbd_diffsync_transfer,
    spec: *const c_char,
    f: impl FnOnce(&mut Settings, ImageSpec),
) -> c_int {
    // SAFETY: the caller's pointers, NULL-checked.
    unsafe {
        with_handle(transfer, |t| {
            let spec = ImageSpec::parse(str_arg(spec, "spec")?)?;
            t.set(|s| f(s, spec));
            Ok(())
        })
    }
}

/// The source, `[pool[/namespace]/]image[@snap]`. Without `@snap` the transfer reads HEAD and
/// creates no snapshot on the destination. `-EINVAL` for a malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_source(
    transfer: *mut rbd_diffsync_transfer,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set_spec(transfer, spec, |s, spec| s.source = Some(spec)) }
}

/// The destination image, `[pool[/namespace]/]image` (no snapshot: the one created is named
/// after the source's). `-EINVAL` for a malformed spec.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_dest(
    transfer: *mut rbd_diffsync_transfer,
    spec: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set_spec(transfer, spec, |s, spec| s.dest = Some(spec)) }
}

/// Transfers only what changed since this snapshot, which must exist on both images: an
/// incremental. NULL makes the transfer full again (the default).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_from_snap(
    transfer: *mut rbd_diffsync_transfer,
    snap: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        with_handle(transfer, |t| {
            let snap = match snap.is_null() {
                true => None,
                false => Some(str_arg(snap, "snap")?.to_owned()),
            };
            t.set(|s| s.from_snap = snap);
            Ok(())
        })
    }
}

/// The source's cluster, and the destination's unless `rbd_diffsync_transfer_set_dest_cluster`
/// says otherwise. The settings are copied: `cluster` may be changed or freed afterwards.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_cluster(
    transfer: *mut rbd_diffsync_transfer,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe {
        with_handle(transfer, |t| {
            let spec = cluster_arg(cluster)?.ok_or_else(|| Failure::invalid("cluster is NULL"))?;
            t.set(|s| s.cluster = spec);
            Ok(())
        })
    }
}

/// The destination's cluster, when it is not the source's; NULL for the source's again. The
/// settings are copied.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_dest_cluster(
    transfer: *mut rbd_diffsync_transfer,
    cluster: *const rbd_diffsync_cluster,
) -> c_int {
    // SAFETY: the caller passes NULL or live handles (conventions in the header).
    unsafe {
        with_handle(transfer, |t| {
            let spec = cluster_arg(cluster)?;
            t.set(|s| s.dest_cluster = spec);
            Ok(())
        })
    }
}

/// A copy of the settings of `cluster`, `None` for NULL.
///
/// # Safety
///
/// `cluster` is NULL or a live handle.
unsafe fn cluster_arg(
    cluster: *const rbd_diffsync_cluster,
) -> Result<Option<ClusterSpec>, Failure> {
    // SAFETY: the caller's promise.
    Ok(unsafe { cluster.as_ref() }.map(|c| lock(&c.spec).clone()))
}

/// Sets a number or switch of the transfer.
///
/// # Safety
///
/// `transfer` is NULL or a live handle.
unsafe fn set_value(transfer: *mut rbd_diffsync_transfer, f: impl FnOnce(&mut Settings)) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle(transfer, |t| {
            t.set(f);
            Ok(())
        })
    }
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
    unsafe { set_value(transfer, |s| s.window = Some(chunks as usize)) }
}

/// The largest data request in bytes (default `RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE`): a multiple
/// of 4 KiB between 4 KiB and 1 GiB. Checked when the transfer is planned or run (`-EINVAL`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_chunk_size(
    transfer: *mut rbd_diffsync_transfer,
    bytes: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set_value(transfer, |s| s.chunk_size = Some(bytes)) }
}

/// Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
/// fast-diff, more data to read. Off by default.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_whole_object(
    transfer: *mut rbd_diffsync_transfer,
    on: bool,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set_value(transfer, |s| s.whole_object = on) }
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
    unsafe { set_value(transfer, |s| s.force = on) }
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
    unsafe {
        // The callback is made only once the handle is known good, so that a failed call
        // finalizes nothing.
        set_value(transfer, |s| {
            s.progress = callback.map(|call| {
                Arc::new(Callback {
                    call,
                    user_data,
                    finalizer,
                })
            })
        })
    }
}

/// The least time between two progress calls, in milliseconds (default 200).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_set_progress_interval_ms(
    transfer: *mut rbd_diffsync_transfer,
    milliseconds: u64,
) -> c_int {
    let interval = Duration::from_millis(milliseconds);
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set_value(transfer, |s| s.progress_interval = Some(interval)) }
}

/// Checks `struct_size` of a struct to fill in: at least `least`.
///
/// # Safety
///
/// `out` is NULL or points to a struct whose first field is its `size_t` size.
unsafe fn out_size(out: *const usize, least: usize, what: &str) -> Result<usize, Failure> {
    if out.is_null() {
        return Ok(0);
    }
    // SAFETY: not NULL; the caller's struct starts with its size.
    let size = unsafe { out.read() };
    match size >= least {
        true => Ok(size),
        false => Err(Failure::invalid(format!(
            "{what}.struct_size is {size}, less than sizeof({what}) = {least}: set it first"
        ))),
    }
}

/// Copies the first `min(size, sizeof T)` bytes of `value` to `out`, and that length into its
/// first field.
///
/// # Safety
///
/// `out` is NULL or points to `size` writable bytes, `size` at least that of a `usize`.
unsafe fn fill<T>(out: *mut T, size: usize, mut value: T) {
    if out.is_null() {
        return;
    }
    let n = size.min(size_of::<T>());
    let first = (&raw mut value).cast::<usize>();
    // SAFETY: every struct filled here starts with its `usize` size; `n` bytes fit in both
    // `value` and the caller's struct, which do not overlap.
    unsafe {
        first.write(n);
        ptr::copy_nonoverlapping((&raw const value).cast::<u8>(), out.cast::<u8>(), n);
    }
}

/// The strings of a plan or stats, kept in the transfer for the caller to read.
struct Kept<'a>(MutexGuard<'a, Vec<CString>>);

impl Kept<'_> {
    /// `s` as a C string the transfer owns; NULL for `None`.
    fn keep(&mut self, s: Option<&str>) -> *const c_char {
        match s {
            Some(s) => {
                self.0.push(c_string(s));
                self.0.last().expect("just pushed").as_ptr()
            }
            None => ptr::null(),
        }
    }
}

/// Plans or runs `transfer` with `op`, then fills in `*out` (unless NULL, and after checking
/// its `struct_size` against `least`) with what `build` makes of the result, its strings kept
/// in the transfer in place of the last ones.
///
/// # Safety
///
/// `transfer` is NULL or a live handle; `out` is NULL or points to a struct whose first field
/// is its size, of at least that size.
unsafe fn go_and_fill<T, R>(
    transfer: *mut rbd_diffsync_transfer,
    out: *mut R,
    least: usize,
    what: &str,
    op: impl FnOnce(DiffTransfer) -> rbd_diffsync::Result<T>,
    build: impl FnOnce(T, &mut Kept) -> R,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle(transfer, |t| {
            let size = out_size(out.cast(), least, what)?;
            let result = t.go(op)?;
            let mut kept = Kept(lock(&t.strings));
            kept.0.clear();
            fill(out, size, build(result, &mut kept));
            Ok(())
        })
    }
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
    };
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        go_and_fill(
            transfer,
            plan,
            PLAN_V1_SIZE,
            "rbd_diffsync_plan",
            DiffTransfer::plan,
            build,
        )
    }
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
    let build = |s: TransferStats, kept: &mut Kept| rbd_diffsync_stats {
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
    };
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        go_and_fill(
            transfer,
            stats,
            STATS_V1_SIZE,
            "rbd_diffsync_stats",
            DiffTransfer::run,
            build,
        )
    }
}

/// Stops the run or plan in progress on `transfer`, or if none is, the next one to start: it
/// then fails with `-ECANCELED`, requests in flight drained, no end snapshot created. Once the
/// end snapshot is being created it is too late: the run completes. Returns at once; callable
/// from any thread, also while another thread runs the transfer.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_transfer_cancel(
    transfer: *const rbd_diffsync_transfer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        with_handle(transfer, |t| {
            lock(&t.cancel).cancel();
            Ok(())
        })
    }
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
