//! What the handles that run share: two images and their clusters, I/O tuning, the progress
//! callback, cancellation from any thread, the last error, and filling in growable structs.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ops::ControlFlow;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rbd_diffsync::Settings as CoreSettings;
use rbd_diffsync::{CancelToken, DiffTransfer, ImageSpec, Phase, Progress, Verify};

use crate::cluster::rbd_diffsync_cluster;
use crate::guard::{
    c_string, lock, str_arg, with_handle, with_handle_quietly, Failure, Handle, LastError,
};

/// Phase in `rbd_diffsync_progress.phase`: connecting to the clusters and opening the images.
pub const RBD_DIFFSYNC_PHASE_CONNECTING: u32 = 0;
/// Checking the images, taking the destination's lock and computing the diff; for a
/// verification, finding the ranges either image has allocated.
pub const RBD_DIFFSYNC_PHASE_SCANNING: u32 = 1;
/// Reading, writing and zeroing.
pub const RBD_DIFFSYNC_PHASE_COPYING: u32 = 2;
/// Shrinking the destination if needed, flushing and creating the end snapshot.
pub const RBD_DIFFSYNC_PHASE_COMMITTING: u32 = 3;
/// Reading both images and comparing them: a verification, or the check of what a transfer
/// wrote (`rbd_diffsync_transfer_set_verify`); `bytes_done` and `bytes_total` count the bytes
/// compared.
pub const RBD_DIFFSYNC_PHASE_VERIFYING: u32 = 4;
/// A phase added after this header: `phase_name` names it.
pub const RBD_DIFFSYNC_PHASE_UNKNOWN: u32 = 0xFFFF_FFFF;

/// Where a running transfer or verification is, as given to the progress callback. Valid only
/// during the call. Fields may be added at the end: `struct_size` is the size the library
/// filled in.
#[repr(C)]
#[derive(Debug)]
pub struct rbd_diffsync_progress {
    /// `sizeof` the struct as this library knows it.
    pub struct_size: usize,
    /// One of the `RBD_DIFFSYNC_PHASE_*` values.
    pub phase: u32,
    /// `"connecting"`, `"scanning"`, `"copying"`, `"verifying"` or `"committing"`.
    pub phase_name: *const c_char,
    /// Bytes of the phase done (copied, zeroed or found to need nothing; compared).
    pub bytes_done: u64,
    /// Bytes of the phase in all, as far as known; 0 until known. While copying a diff of
    /// more than about 8192 pieces it may grow: the diff is scanned a bounded way ahead.
    pub bytes_total: u64,
    /// Nanoseconds since the transfer or verification started.
    pub elapsed_ns: u64,
    /// What it has been waiting for, for more than a second (a cluster's answer, a lock,
    /// requests in flight), or NULL.
    pub waiting_for: *const c_char,
    /// For how many nanoseconds it has waited for that.
    pub waited_ns: u64,
}

const PROGRESS_V1_SIZE: usize = size_of::<rbd_diffsync_progress>();

/// A progress callback: called on the thread running `rbd_diffsync_transfer_run`,
/// `rbd_diffsync_transfer_plan` or `rbd_diffsync_verify_run`, never on another. Return 0 to go
/// on; any other value stops the call as a cancel would (it then fails with `-ECANCELED`); the
/// end may still be reported after that. It must not unwind (C++ exceptions, longjmp) out of
/// the call.
pub type rbd_diffsync_progress_cb = Option<
    unsafe extern "C" fn(progress: *const rbd_diffsync_progress, user_data: *mut c_void) -> c_int,
>;

/// Releases a callback's `user_data`: called once, when the callback is replaced or the
/// handle freed, and after any run using it has returned, on the thread doing that.
pub type rbd_diffsync_finalizer = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The user's callback, its data and finalizer; finalized when the last run using it and the
/// handle holding it are done with it.
#[derive(Debug)]
pub(crate) struct Callback<P> {
    pub(crate) call: unsafe extern "C" fn(*const P, *mut c_void) -> c_int,
    pub(crate) user_data: *mut c_void,
    pub(crate) finalizer: rbd_diffsync_finalizer,
}

// SAFETY: the library never calls `call` concurrently nor off the thread that runs the
// transfer, verification or batch (the core calls progress callbacks on its calling thread
// only), and calls `finalizer` once, on the thread that drops the last reference: what the
// header promises the user, who vouches that `user_data` may be used so.
unsafe impl<P> Send for Callback<P> {}
// SAFETY: shared references only reach `call` through a run, as above.
unsafe impl<P> Sync for Callback<P> {}

impl<P> Drop for Callback<P> {
    fn drop(&mut self) {
        if let Some(finalize) = self.finalizer {
            // SAFETY: the user's finalizer with the user's data, called once.
            unsafe { finalize(self.user_data) }
        }
    }
}

impl<P> Callback<P> {
    /// Calls the user's callback with `progress`: `Break` when it asks to stop.
    pub(crate) fn call(&self, progress: &P) -> ControlFlow<()> {
        // SAFETY: the user's callback with a progress that outlives the call and the user's
        // data, on the thread running the job.
        match unsafe { (self.call)(progress, self.user_data) } {
            0 => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }
}

impl Callback<rbd_diffsync_progress> {
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
        self.call(&progress)
    }
}

pub(crate) fn phase_code(phase: Phase) -> u32 {
    match phase {
        Phase::Connecting => RBD_DIFFSYNC_PHASE_CONNECTING,
        Phase::Scanning => RBD_DIFFSYNC_PHASE_SCANNING,
        Phase::Copying => RBD_DIFFSYNC_PHASE_COPYING,
        Phase::Verifying => RBD_DIFFSYNC_PHASE_VERIFYING,
        Phase::Committing => RBD_DIFFSYNC_PHASE_COMMITTING,
        _ => RBD_DIFFSYNC_PHASE_UNKNOWN,
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A builder of the core that takes the core's settings.
pub(crate) trait Builder: Sized {
    fn new(source: ImageSpec, dest: ImageSpec) -> Self;
    fn settings(self, settings: CoreSettings) -> Self;
    fn on_progress(self, callback: Arc<Callback<rbd_diffsync_progress>>) -> Self;
    fn cancel_token(self, token: CancelToken) -> Self;
}

macro_rules! builder {
    ($t:ty) => {
        impl Builder for $t {
            fn new(source: ImageSpec, dest: ImageSpec) -> Self {
                <$t>::new(source, dest)
            }
            fn settings(self, settings: CoreSettings) -> Self {
                <$t>::settings(self, settings)
            }
            fn on_progress(self, callback: Arc<Callback<rbd_diffsync_progress>>) -> Self {
                <$t>::on_progress(self, move |p| callback.report(p))
            }
            fn cancel_token(self, token: CancelToken) -> Self {
                <$t>::cancel_token(self, token)
            }
        }
    };
}
builder!(DiffTransfer);
builder!(Verify);

/// The settings every handle that runs has.
#[derive(Clone, Debug, Default)]
pub(crate) struct Common {
    source: Option<ImageSpec>,
    dest: Option<ImageSpec>,
    /// The core's settings, as the setters left them.
    pub(crate) settings: CoreSettings,
    progress: Option<Arc<Callback<rbd_diffsync_progress>>>,
}

impl Common {
    /// Forgets the progress callback (a copy taken into a batch reports through the batch's).
    pub(crate) fn drop_progress(&mut self) {
        self.progress = None;
    }

    /// The core's builder as set: `what` names it in the error for a missing image.
    pub(crate) fn builder<B: Builder>(&self, what: &str) -> Result<B, Failure> {
        let (Some(source), Some(dest)) = (&self.source, &self.dest) else {
            return Err(Failure::invalid(format!(
                "the {what} has no source or no destination: set both first"
            )));
        };
        let mut b = B::new(source.clone(), dest.clone()).settings(self.settings.clone());
        if let Some(callback) = &self.progress {
            b = b.on_progress(Arc::clone(callback));
        }
        Ok(b)
    }
}

/// The settings of a handle, which hold the common ones.
pub(crate) trait Settings: Default {
    fn common(&mut self) -> &mut Common;
}

impl Settings for Common {
    fn common(&mut self) -> &mut Common {
        self
    }
}

/// The state of a handle that runs: settings, cancel token, kept strings, last error.
#[derive(Debug, Default)]
pub(crate) struct Job<S> {
    settings: Mutex<S>,
    /// The token of the run in progress, or of the next one.
    cancel: Mutex<CancelToken>,
    /// The strings of the last struct filled in.
    strings: Mutex<Vec<CString>>,
    pub(crate) error: LastError,
}

/// A handle around a [`Job`].
pub(crate) trait Runs: Handle {
    type Settings: Settings;
    fn job(&self) -> &Job<Self::Settings>;
}

impl<S> Job<S> {
    pub(crate) fn set(&self, f: impl FnOnce(&mut S)) {
        f(&mut lock(&self.settings));
    }

    /// What `f` makes of the settings now.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.settings))
    }

    /// Runs `op` on the builder `make` makes of the settings now, with the token a cancel
    /// stops; a cancelled token is replaced afterwards so that the next run may go.
    fn go<B: Builder, T>(
        &self,
        make: impl FnOnce(&S) -> Result<B, Failure>,
        op: impl FnOnce(B) -> rbd_diffsync::Result<T>,
    ) -> Result<T, Failure> {
        let builder = make(&lock(&self.settings))?;
        let token = lock(&self.cancel).clone();
        let result = op(builder.cancel_token(token.clone()));
        if token.is_cancelled() {
            *lock(&self.cancel) = CancelToken::new();
        }
        Ok(result?)
    }
}

/// Sets something of the settings of `handle`, read with `read`.
///
/// # Safety
///
/// `handle` is NULL or a live handle; `read` reads only live pointers.
pub(crate) unsafe fn set<H: Runs, T>(
    handle: *const H,
    read: impl FnOnce() -> Result<T, Failure>,
    apply: impl FnOnce(&mut H::Settings, T),
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle(handle, |h| {
            let value = read()?;
            h.job().set(|s| apply(s, value));
            Ok(())
        })
    }
}

/// Sets a number or switch of the common settings.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
unsafe fn set_common<H: Runs>(handle: *const H, f: impl FnOnce(&mut Common)) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { set(handle, || Ok(()), |s, ()| f(s.common())) }
}

/// Sets the source (`source`) or the destination from `spec`, parsed as the rbd CLI does.
///
/// # Safety
///
/// `handle` is NULL or a live handle; `spec` is NULL or a NUL-terminated string.
pub(crate) unsafe fn set_image<H: Runs>(
    handle: *const H,
    spec: *const c_char,
    source: bool,
) -> c_int {
    // SAFETY: the caller passes NULL or a NUL-terminated string, NULL-checked.
    let read = || Ok(ImageSpec::parse(unsafe { str_arg(spec, "spec") }?)?);
    // SAFETY: the caller's promise.
    unsafe {
        set(handle, read, |s, spec| match source {
            true => s.common().source = Some(spec),
            false => s.common().dest = Some(spec),
        })
    }
}

/// Sets the source's cluster (`dest` false; NULL refused) or the destination's (NULL: the
/// source's), copying the settings.
///
/// # Safety
///
/// `handle` and `cluster` are NULL or live handles.
pub(crate) unsafe fn set_cluster<H: Runs>(
    handle: *const H,
    cluster: *const rbd_diffsync_cluster,
    dest: bool,
) -> c_int {
    // SAFETY: the caller's promise.
    let spec = unsafe { cluster.as_ref() }.map(|c| lock(&c.spec).clone());
    let read = || match (spec, dest) {
        (None, false) => Err(Failure::invalid("cluster is NULL")),
        (spec, _) => Ok(spec),
    };
    // SAFETY: the caller's promise.
    unsafe {
        set(handle, read, |s, spec| match dest {
            true => s.common().settings.dest_cluster = spec,
            false => s.common().settings.cluster = spec.expect("checked above"),
        })
    }
}

/// Sets the window, in chunks.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn set_window<H: Runs>(handle: *const H, chunks: u32) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { set_common(handle, |s| s.settings.window = chunks as usize) }
}

/// Sets the chunk size, in bytes.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn set_chunk_size<H: Runs>(handle: *const H, bytes: u64) -> c_int {
    // SAFETY: the caller's promise.
    unsafe { set_common(handle, |s| s.settings.chunk_size = bytes) }
}

/// Sets or removes the progress callback.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn set_progress<H: Runs>(
    handle: *const H,
    callback: rbd_diffsync_progress_cb,
    user_data: *mut c_void,
    finalizer: rbd_diffsync_finalizer,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        // The callback is made only once the handle is known good, so that a failed call
        // finalizes nothing.
        set_common(handle, |s| {
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

/// Sets the least time between two progress calls.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn set_progress_interval<H: Runs>(handle: *const H, ms: u64) -> c_int {
    let interval = Duration::from_millis(ms);
    // SAFETY: the caller's promise.
    unsafe { set_common(handle, |s| s.settings.progress_interval = interval) }
}

/// Cancels the run in progress, or the next. Callable from any thread: it never touches the
/// handle's last error.
///
/// # Safety
///
/// `handle` is NULL or a live handle.
pub(crate) unsafe fn cancel<H: Runs>(handle: *const H) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle_quietly(handle, |h| {
            lock(&h.job().cancel).cancel();
            Ok(())
        })
    }
}

/// Writes the offset of the last failure of `handle` into `*out`: `-ENODATA` when it had none.
///
/// # Safety
///
/// `handle` is NULL or a live handle; `out` NULL or valid for a write.
pub(crate) unsafe fn last_error_offset<H: Handle>(handle: *const H, out: *mut u64) -> c_int {
    let mut found = false;
    // SAFETY: the caller's promise.
    let code = unsafe {
        with_handle(handle, |h| {
            if out.is_null() {
                return Err(Failure::invalid("out is NULL"));
            }
            if let Some(offset) = h.last_error().offset() {
                // SAFETY: not NULL, and the caller made it valid for a write.
                out.write(offset);
                found = true;
            }
            Ok(())
        })
    };
    match (code, found) {
        (0, false) => -libc::ENODATA,
        (code, _) => code,
    }
}

/// Checks `struct_size` of a struct to fill in: at least `least`.
///
/// # Safety
///
/// `out` is NULL or points to a struct whose first field is its `size_t` size.
pub(crate) unsafe fn out_size(
    out: *const usize,
    least: usize,
    what: &str,
) -> Result<usize, Failure> {
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
pub(crate) unsafe fn fill<T>(out: *mut T, size: usize, mut value: T) {
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

/// The strings of a struct filled in, kept in the handle for the caller to read.
pub(crate) struct Kept<'a>(MutexGuard<'a, Vec<CString>>);

impl<'a> Kept<'a> {
    /// Keeps strings in `strings`, in place of those it held.
    pub(crate) fn new(mut strings: MutexGuard<'a, Vec<CString>>) -> Self {
        strings.clear();
        Kept(strings)
    }

    /// `s` as a C string the handle owns; NULL for `None`.
    pub(crate) fn keep(&mut self, s: Option<&str>) -> *const c_char {
        match s {
            Some(s) => {
                self.0.push(c_string(s));
                self.0.last().expect("just pushed").as_ptr()
            }
            None => ptr::null(),
        }
    }
}

/// A struct the library fills in: its C name, and its size in ABI version 1, the least a
/// caller may pass (fixed for good: fields added later lie beyond it).
pub(crate) struct Out<R> {
    ptr: *mut R,
    name: &'static str,
    least: usize,
}

impl<R> Out<R> {
    pub(crate) fn new(ptr: *mut R, name: &'static str, least: usize) -> Self {
        Out { ptr, name, least }
    }
}

/// Runs `op` on the builder `make` makes of the settings of `handle`, then fills in `out`
/// (unless NULL, and after checking its `struct_size`) with what `build` makes of the result,
/// its strings kept in the handle in place of the last ones.
///
/// # Safety
///
/// `handle` is NULL or a live handle; `out.ptr` is NULL or points to a struct whose first
/// field is its size, of at least that size.
pub(crate) unsafe fn go_and_fill<H: Runs, B: Builder, T, R>(
    handle: *const H,
    out: Out<R>,
    make: impl FnOnce(&H::Settings) -> Result<B, Failure>,
    op: impl FnOnce(B) -> rbd_diffsync::Result<T>,
    build: impl FnOnce(T, &mut Kept) -> R,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle(handle, |h| {
            let size = out_size(out.ptr.cast(), out.least, out.name)?;
            let job = h.job();
            let result = job.go(make, op)?;
            let mut kept = Kept(lock(&job.strings));
            kept.0.clear();
            fill(out.ptr, size, build(result, &mut kept));
            Ok(())
        })
    }
}
