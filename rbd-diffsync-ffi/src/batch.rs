//! `rbd_diffsync_batch`: many transfers run at once by the core's `SyncMany`, over one
//! connection per cluster, within one budget and rate limit; cancellable from any thread.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ops::ControlFlow;
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbd_diffsync::{
    BatchProgress, BatchSettings as CoreSettings, CancelToken, Phase, SyncMany, TransferStats,
    VolumeState,
};

use crate::guard::{
    free_handle, guard, lock, new_handle, with_handle, with_handle_quietly, Failure, Handle,
    LastError,
};
use crate::job::{self, fill, nanos, out_size, rbd_diffsync_finalizer, Callback, Kept};
use crate::transfer::{self, rbd_diffsync_stats, rbd_diffsync_transfer, Settings, STATS_V1_SIZE};

/// Volume state in `rbd_diffsync_volume_progress.state`: waiting for its turn.
pub const RBD_DIFFSYNC_VOLUME_QUEUED: u32 = 0;
/// Its transfer runs.
pub const RBD_DIFFSYNC_VOLUME_RUNNING: u32 = 1;
/// Its transfer succeeded.
pub const RBD_DIFFSYNC_VOLUME_SUCCEEDED: u32 = 2;
/// Its transfer failed, or was cancelled before it started.
pub const RBD_DIFFSYNC_VOLUME_FAILED: u32 = 3;
/// A state added after this header.
pub const RBD_DIFFSYNC_VOLUME_UNKNOWN: u32 = 0xFFFF_FFFF;

/// Default number of volumes a batch transfers at once.
pub const RBD_DIFFSYNC_DEFAULT_PARALLEL: u32 = 4;
/// Default memory budget of a batch, in bytes (64 MiB): the data all its transfers hold at
/// once.
pub const RBD_DIFFSYNC_DEFAULT_BATCH_BUDGET: u64 = 67108864;
/// Default number of requests in flight at once, for all the transfers of a batch.
pub const RBD_DIFFSYNC_DEFAULT_BATCH_REQUESTS: u32 = 256;

const _: () = {
    assert!(RBD_DIFFSYNC_DEFAULT_PARALLEL as usize == rbd_diffsync::DEFAULT_PARALLEL);
    assert!(RBD_DIFFSYNC_DEFAULT_BATCH_BUDGET as usize == rbd_diffsync::DEFAULT_BATCH_BUDGET);
    assert!(RBD_DIFFSYNC_DEFAULT_BATCH_REQUESTS as usize == rbd_diffsync::DEFAULT_BATCH_REQUESTS);
};

/// Where a running batch is, as given to its progress callback: the totals of its volumes.
/// Valid only during the call. Fields may be added at the end: `struct_size` is the size the
/// library filled in.
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_batch_progress {
    /// `sizeof` the struct as this library knows it.
    pub struct_size: usize,
    /// Bytes done, of every volume.
    pub bytes_done: u64,
    /// Bytes in all, of the volumes whose diff is known.
    pub bytes_total: u64,
    /// Volumes waiting for their turn.
    pub queued: usize,
    /// Volumes whose transfer runs.
    pub running: usize,
    /// Volumes whose transfer succeeded.
    pub succeeded: usize,
    /// Volumes whose transfer failed.
    pub failed: usize,
    /// Nanoseconds since the batch started.
    pub elapsed_ns: u64,
}

const BATCH_PROGRESS_V1_SIZE: usize = size_of::<rbd_diffsync_batch_progress>();

/// Where one volume of a batch is, filled in by `rbd_diffsync_batch_volume_progress`; sized
/// as `rbd_diffsync_stats` is (set `struct_size` first).
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_volume_progress {
    /// In: `sizeof(rbd_diffsync_volume_progress)`; out: the bytes filled in.
    pub struct_size: usize,
    /// One of the `RBD_DIFFSYNC_VOLUME_*` values.
    pub state: u32,
    /// One of the `RBD_DIFFSYNC_PHASE_*` values once its transfer runs;
    /// `RBD_DIFFSYNC_PHASE_UNKNOWN` before.
    pub phase: u32,
    /// The phase's name (static), or NULL before its transfer runs.
    pub phase_name: *const c_char,
    /// Bytes of its transfer done.
    pub bytes_done: u64,
    /// Bytes of its transfer in all, as far as known; 0 until its copy starts.
    pub bytes_total: u64,
}

const VOLUME_PROGRESS_V1_SIZE: usize = size_of::<rbd_diffsync_volume_progress>();

/// A batch progress callback: called on the thread running `rbd_diffsync_batch_run`, never on
/// another, at most every progress interval and when a volume ends. Return 0 to go on; any
/// other value cancels the batch as `rbd_diffsync_batch_cancel` would. It must not unwind out
/// of the call; of the library it may call `rbd_diffsync_batch_volume_progress` and
/// `rbd_diffsync_batch_cancel` on the batch, and no other function on it.
pub type rbd_diffsync_batch_progress_cb = Option<
    unsafe extern "C" fn(
        progress: *const rbd_diffsync_batch_progress,
        user_data: *mut c_void,
    ) -> c_int,
>;

/// The user's batch callback: reports the batch's totals.
impl Callback<rbd_diffsync_batch_progress> {
    fn report(&self, p: &BatchProgress) -> ControlFlow<()> {
        let progress = rbd_diffsync_batch_progress {
            struct_size: BATCH_PROGRESS_V1_SIZE,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            queued: p.queued,
            running: p.running,
            succeeded: p.succeeded,
            failed: p.failed,
            elapsed_ns: nanos(p.elapsed),
        };
        self.call(&progress)
    }
}

/// What the setters of a batch set.
#[derive(Debug, Default)]
struct BatchSettings {
    volumes: Vec<Settings>,
    /// Parallelism, budget, rate limit and progress interval, as the core takes them.
    core: CoreSettings,
    progress: Option<Arc<Callback<rbd_diffsync_batch_progress>>>,
}

impl BatchSettings {
    /// Makes `change` to the core's settings, unless it leaves one out of range: then nothing
    /// is changed and the error names it.
    fn change(&mut self, change: impl FnOnce(&mut CoreSettings)) -> Result<(), Failure> {
        let mut changed = self.core.clone();
        change(&mut changed);
        changed.check()?;
        self.core = changed;
        Ok(())
    }
}

/// Where a volume is, as last reported.
#[derive(Clone, Copy, Debug)]
struct Volume {
    state: u32,
    phase: Option<Phase>,
    bytes_done: u64,
    bytes_total: u64,
}

impl Default for Volume {
    fn default() -> Self {
        Volume {
            state: RBD_DIFFSYNC_VOLUME_QUEUED,
            phase: None,
            bytes_done: 0,
            bytes_total: 0,
        }
    }
}

/// How a volume's transfer ended in the last run: its stats and their strings, or its code
/// and message.
#[derive(Debug)]
struct Outcome {
    result: Result<TransferStats, (c_int, CString)>,
    strings: Mutex<Vec<CString>>,
}

/// Many transfers run at once: see `rbd_diffsync_batch_new`.
#[derive(Debug, Default)]
pub struct rbd_diffsync_batch {
    settings: Mutex<BatchSettings>,
    /// The token of the run in progress, or of the next one.
    cancel: Mutex<CancelToken>,
    /// Each volume as last reported, during a run and after it.
    volumes: Arc<Mutex<Vec<Volume>>>,
    /// The outcome of each volume of the last run.
    outcomes: Mutex<Vec<Outcome>>,
    error: LastError,
}

impl Handle for rbd_diffsync_batch {
    fn last_error(&self) -> &LastError {
        &self.error
    }
}

/// Makes an empty batch into `*out`, to free with `rbd_diffsync_batch_free`: add transfers
/// with `rbd_diffsync_batch_add`, then run it. At most `parallel` transfers run at once, over
/// one connection per cluster, their data drawn from one memory budget, their requests from
/// one limit and their reads from one rate limit; each is a normal transfer, with every check
/// and guarantee of `rbd_diffsync_transfer_run`, and one that fails does not stop the others.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_new(out: *mut *mut rbd_diffsync_batch) -> c_int {
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    unsafe { new_handle(out, rbd_diffsync_batch::default) }
}

/// Frees a batch, and finalizes its callback's `user_data`. NULL is a no-op. Not while a call
/// on it runs.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_free(batch: *mut rbd_diffsync_batch) {
    // SAFETY: the caller passes NULL or a handle of this library no other call uses.
    unsafe { free_handle(batch) }
}

/// Sets something of the settings of `batch`.
///
/// # Safety
///
/// `batch` is NULL or a live handle.
unsafe fn set(
    batch: *const rbd_diffsync_batch,
    f: impl FnOnce(&mut BatchSettings) -> Result<(), Failure>,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { with_handle(batch, |b| f(&mut lock(&b.settings))) }
}

/// Adds a volume: a copy of `transfer`'s settings as they are at this moment (source,
/// destination, `from_snap`, clusters, window, chunk size, switches, rate limit, progress
/// interval); changing or freeing `transfer` afterwards does not change the batch. Its
/// progress callback is not taken (the batch has its own), nor does its cancel reach the
/// batch. `-EINVAL` for a NULL `transfer`, or one without a source or a destination; other
/// settings are checked when the batch runs, as that volume's result. Volumes keep the order
/// they were added in, from index 0.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_add(
    batch: *mut rbd_diffsync_batch,
    transfer: *const rbd_diffsync_transfer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle, only read here.
    let transfer = unsafe { transfer.as_ref() };
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        set(batch, |s| {
            let Some(t) = transfer else {
                return Err(Failure::invalid("transfer is NULL"));
            };
            let mut copy = crate::job::Runs::job(t).read(Settings::clone);
            copy.transfer()?;
            job::Settings::common(&mut copy).drop_progress();
            s.volumes.push(copy);
            Ok(())
        })
    }
}

/// Volumes transferred at once, 1 to 1024 (default `RBD_DIFFSYNC_DEFAULT_PARALLEL`); the
/// others wait their turn, in the order added. Out of range: `-EINVAL`, and the setting is
/// unchanged.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_parallel(
    batch: *mut rbd_diffsync_batch,
    n: u32,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set(batch, |s| s.change(|c| c.parallel = n as usize)) }
}

/// Bytes of data all the transfers of the batch hold at once, librados's receive buffers
/// included (default `RBD_DIFFSYNC_DEFAULT_BATCH_BUDGET`); each transfer's window still bounds
/// what it holds. A request larger than the whole budget still goes, alone. 0: `-EINVAL`, and
/// the setting is unchanged.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_memory_budget(
    batch: *mut rbd_diffsync_batch,
    bytes: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        set(batch, |s| {
            s.change(|c| c.memory_budget = usize::try_from(bytes).unwrap_or(usize::MAX))
        })
    }
}

/// Requests in flight at once, for all the transfers of the batch together (default
/// `RBD_DIFFSYNC_DEFAULT_BATCH_REQUESTS`). 0: `-EINVAL`, and the setting is unchanged.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_max_requests(
    batch: *mut rbd_diffsync_batch,
    n: u32,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set(batch, |s| s.change(|c| c.max_requests = n as usize)) }
}

/// Caps the bytes read by all the transfers of the batch together at `bytes_per_sec` on
/// average; 0 removes the cap (the default). A transfer's own cap
/// (`rbd_diffsync_transfer_set_rate_limit`) applies besides.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_rate_limit(
    batch: *mut rbd_diffsync_batch,
    bytes_per_sec: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        set(batch, |s| {
            s.core.rate_limit = (bytes_per_sec > 0).then_some(bytes_per_sec);
            Ok(())
        })
    }
}

/// Calls `callback` with `user_data` during runs of the batch, with the totals of its
/// volumes: on the thread running it only, at most every progress interval (default 200 ms)
/// and when a volume ends. A nonzero return cancels the batch. `finalizer` (may be NULL) is
/// called with `user_data` once the callback is replaced or the batch freed. A NULL `callback`
/// removes the callback; `finalizer` is then not called, nor when this call fails.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_progress(
    batch: *mut rbd_diffsync_batch,
    callback: rbd_diffsync_batch_progress_cb,
    user_data: *mut c_void,
    finalizer: rbd_diffsync_finalizer,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        // Made only once the handle is known good, so that a failed call finalizes nothing.
        set(batch, |s| {
            s.progress = callback.map(|call| {
                Arc::new(Callback {
                    call,
                    user_data,
                    finalizer,
                })
            });
            Ok(())
        })
    }
}

/// The least time between two calls of the batch's progress callback, in milliseconds
/// (default 200).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_set_progress_interval_ms(
    batch: *mut rbd_diffsync_batch,
    milliseconds: u64,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        set(batch, |s| {
            s.core.progress_interval = Duration::from_millis(milliseconds);
            Ok(())
        })
    }
}

/// Runs every volume of the batch, at most `parallel` at a time, and blocks until all have
/// ended. Returns 0 when every volume succeeded (an empty batch too); the number of volumes
/// that failed (> 0) otherwise, the batch's last error then naming the first of them, and
/// `rbd_diffsync_batch_volume_result` giving each one's code; a negative code only when the
/// batch could not run at all (`-EINVAL` for a NULL `batch`). A cancel, or a nonzero return
/// of the progress callback, stops every volume: those running fail with `-ECANCELED` as a
/// cancelled transfer does, those not started with `-ECANCELED` too. A batch may be run again,
/// each volume from its settings as added: a volume cancelled or failed mid-way is then
/// completed, one that succeeded fails with `-EEXIST` (its end snapshot exists).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_run(batch: *mut rbd_diffsync_batch) -> c_int {
    let mut failed = 0usize;
    // SAFETY: the caller passes NULL or a live handle.
    let code = unsafe {
        with_handle(batch, |b| {
            let token = lock(&b.cancel).clone();
            let (many, n) = prepare(b, &token)?;
            *lock(&b.volumes) = vec![Volume::default(); n];
            let results = many.run();
            if token.is_cancelled() {
                *lock(&b.cancel) = CancelToken::new();
            }
            failed = record(b, results);
            Ok(())
        })
    };
    match code {
        0 if failed > 0 => c_int::try_from(failed).unwrap_or(c_int::MAX),
        code => code,
    }
}

/// The run of `b`'s volumes as its settings say, cancelled by `token`, its progress kept in
/// `b.volumes` and given to the batch's callback; and the number of volumes.
fn prepare(b: &rbd_diffsync_batch, token: &CancelToken) -> Result<(SyncMany, usize), Failure> {
    let s = lock(&b.settings);
    let mut transfers = Vec::with_capacity(s.volumes.len());
    for v in &s.volumes {
        transfers.push(v.transfer()?);
    }
    let mut many = SyncMany::new(transfers)
        .settings(s.core.clone())
        .cancel_token(token.clone());
    let callback = s.progress.clone();
    let volumes = Arc::clone(&b.volumes);
    many = many.on_progress(move |p: &BatchProgress| {
        *lock(&volumes) = p
            .volumes
            .iter()
            .map(|v| Volume {
                state: state_code(v.state),
                phase: v.phase,
                bytes_done: v.bytes_done,
                bytes_total: v.bytes_total,
            })
            .collect();
        match &callback {
            Some(c) => c.report(p),
            None => ControlFlow::Continue(()),
        }
    });
    Ok((many, s.volumes.len()))
}

/// Keeps in `b` how each volume of a run ended (`results`), and as its last error a summary
/// naming the first that failed. Returns the number of volumes that failed.
fn record(b: &rbd_diffsync_batch, results: Vec<rbd_diffsync::Result<TransferStats>>) -> usize {
    let outcomes: Vec<Outcome> = results
        .into_iter()
        .map(|r| Outcome {
            result: r.map_err(|e| (e.errno(), crate::guard::c_string(e.to_string()))),
            strings: Mutex::default(),
        })
        .collect();
    let first = outcomes
        .iter()
        .enumerate()
        .find_map(|(i, o)| o.result.as_ref().err().map(|e| (i, e)));
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    let summary = first.map(|(i, (_, message))| {
        format!(
            "{failed} of {} volumes failed; the first, volume {i}: {}",
            outcomes.len(),
            message.to_string_lossy()
        )
    });
    // How each ended, also those the progress did not report (settings refused).
    for (v, o) in lock(&b.volumes).iter_mut().zip(&outcomes) {
        v.state = match o.result {
            Ok(_) => RBD_DIFFSYNC_VOLUME_SUCCEEDED,
            Err(_) => RBD_DIFFSYNC_VOLUME_FAILED,
        };
    }
    *lock(&b.outcomes) = outcomes;
    if let Some(message) = summary {
        // Kept as a failure's message, though the call returns the count.
        b.error.set(Failure {
            code: 0,
            message,
            offset: None,
        });
    }
    failed
}

/// Cancels the run in progress on `batch`, or if none is, the next one to start: every
/// volume stops, those running as `rbd_diffsync_transfer_cancel` stops a transfer, those not
/// started fail with `-ECANCELED` at once. Returns at once; callable from any thread, also
/// while another thread runs the batch, and from its progress callback. It never touches the
/// batch's last error.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_cancel(batch: *const rbd_diffsync_batch) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        with_handle_quietly(batch, |b| {
            lock(&b.cancel).cancel();
            Ok(())
        })
    }
}

/// The number of volumes added to `batch`; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_volume_count(
    batch: *const rbd_diffsync_batch,
) -> usize {
    let mut n = 0;
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        with_handle(batch, |b| {
            n = lock(&b.settings).volumes.len();
            Ok(())
        })
    };
    n
}

/// Runs `f` on the outcome of volume `index` of the last run: `-ERANGE` (with a message) for
/// an index beyond the volumes, `-ENODATA` for a volume the batch has not run.
///
/// # Safety
///
/// `batch` is NULL or a live handle.
unsafe fn with_outcome(
    batch: *const rbd_diffsync_batch,
    index: usize,
    f: impl FnOnce(Option<&Outcome>) -> Result<c_int, Failure>,
) -> c_int {
    let mut code = 0;
    // SAFETY: the caller's promise.
    let ret = unsafe {
        with_handle(batch, |b| {
            let n = lock(&b.settings).volumes.len();
            if index >= n {
                return Err(Failure {
                    code: libc::ERANGE,
                    message: format!("volume {index} is beyond the {n} volumes of the batch"),
                    offset: None,
                });
            }
            code = f(lock(&b.outcomes).get(index))?;
            Ok(())
        })
    };
    match ret {
        0 => code,
        ret => ret,
    }
}

/// How volume `index` (from 0, in the order added) ended in the last run: 0 if its transfer
/// succeeded, its negative code if it failed (its message is
/// `rbd_diffsync_batch_volume_error_message`). `-ENODATA` for a volume added since the last
/// run, or before any run; `-ERANGE` for an index beyond the volumes; `-EINVAL` for a NULL
/// batch.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_volume_result(
    batch: *const rbd_diffsync_batch,
    index: usize,
) -> c_int {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe {
        with_outcome(batch, index, |o| {
            Ok(match o.map(|o| &o.result) {
                Some(Ok(_)) => 0,
                Some(Err((code, _))) => -code,
                None => -libc::ENODATA,
            })
        })
    }
}

/// Fills in `*stats` (set `stats->struct_size` first) with what the transfer of volume
/// `index` did in the last run, when it succeeded: 0. Its strings are owned by the batch,
/// valid until its next run or its free. `-ENODATA` when the volume failed or has not run;
/// `-ERANGE` for an index beyond the volumes; `-EINVAL` for a NULL `batch` or `stats`.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_volume_stats(
    batch: *const rbd_diffsync_batch,
    index: usize,
    stats: *mut rbd_diffsync_stats,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        with_outcome(batch, index, |o| {
            if stats.is_null() {
                return Err(Failure::invalid("stats is NULL"));
            }
            let size = out_size(stats.cast(), STATS_V1_SIZE, "rbd_diffsync_stats")?;
            let Some((Ok(s), o)) = o.map(|o| (&o.result, o)) else {
                return Ok(-libc::ENODATA);
            };
            let mut kept = Kept::new(lock(&o.strings));
            fill(stats, size, transfer::stats_of(s, &mut kept));
            Ok(0)
        })
    }
}

/// The message of volume `index`'s failure in the last run, naming the cluster, image and
/// snapshot concerned; "" if it succeeded; NULL for a NULL `batch`, an index beyond the
/// volumes or a volume that has not run. Owned by the batch: valid until its next run or its
/// free.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_volume_error_message(
    batch: *const rbd_diffsync_batch,
    index: usize,
) -> *const c_char {
    let mut message = ptr::null();
    guard(|| {
        // SAFETY: the caller passes NULL or a live handle.
        if let Some(b) = unsafe { batch.as_ref() } {
            if let Some(o) = lock(&b.outcomes).get(index) {
                message = match &o.result {
                    Ok(_) => c"".as_ptr(),
                    Err((_, m)) => m.as_ptr(),
                };
            }
        }
        0
    });
    message
}

/// Where volume `index` is: during a run as last reported (also from the batch's progress
/// callback, and from any thread), and after it how it ended. Fills in `*out` (set
/// `out->struct_size` first) and returns 0; before any run a volume is queued. `-ERANGE` for
/// an index beyond the volumes; `-EINVAL` for a NULL `batch` or `out`, or an
/// `out->struct_size` too small. A failure is told by the code alone: this function never
/// touches the batch's last error, whose string another thread may be reading (it keeps the
/// message of the batch's last failed call, as it was).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_volume_progress(
    batch: *const rbd_diffsync_batch,
    index: usize,
    out: *mut rbd_diffsync_volume_progress,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        with_handle_quietly(batch, |b| {
            if out.is_null() {
                return Err(Failure::invalid("out is NULL"));
            }
            let size = out_size(
                out.cast(),
                VOLUME_PROGRESS_V1_SIZE,
                "rbd_diffsync_volume_progress",
            )?;
            let n = lock(&b.settings).volumes.len();
            if index >= n {
                return Err(Failure {
                    code: libc::ERANGE,
                    message: format!("volume {index} is beyond the {n} volumes of the batch"),
                    offset: None,
                });
            }
            let volumes = lock(&b.volumes);
            let v = volumes.get(index).copied().unwrap_or_default();
            drop(volumes);
            let value = rbd_diffsync_volume_progress {
                struct_size: 0,
                state: v.state,
                phase: v
                    .phase
                    .map_or(crate::RBD_DIFFSYNC_PHASE_UNKNOWN, job::phase_code),
                phase_name: v
                    .phase
                    .map_or(ptr::null(), |p| crate::intern(p.name().to_owned())),
                bytes_done: v.bytes_done,
                bytes_total: v.bytes_total,
            };
            fill(out, size, value);
            Ok(())
        })
    }
}

fn state_code(state: VolumeState) -> u32 {
    match state {
        VolumeState::Queued => RBD_DIFFSYNC_VOLUME_QUEUED,
        VolumeState::Running => RBD_DIFFSYNC_VOLUME_RUNNING,
        VolumeState::Succeeded => RBD_DIFFSYNC_VOLUME_SUCCEEDED,
        VolumeState::Failed => RBD_DIFFSYNC_VOLUME_FAILED,
        _ => RBD_DIFFSYNC_VOLUME_UNKNOWN,
    }
}

/// The message of the last call on `batch` that failed (other than with a NULL handle), or ""
/// if none did; after a run with failed volumes, a summary naming the first of them. Owned by
/// `batch`: valid until its next failing call or its free.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_batch_last_error(
    batch: *const rbd_diffsync_batch,
) -> *const c_char {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { crate::last_error_of(batch) }
}
