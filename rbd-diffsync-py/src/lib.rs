//! `rbd_diffsync._native`: the Python module over the `rbd-diffsync` crate. The package
//! `rbd_diffsync` (python/rbd_diffsync) re-exports it; its typed surface is `_native.pyi`.
//!
//! A transfer runs with the GIL released. The core calls its progress callback on the calling
//! thread only, also while it waits for the cluster; that callback takes the GIL back for a
//! moment to check for signals (so Ctrl-C raises `KeyboardInterrupt`) and, at the rate the
//! caller chose, to call the Python callback. A Python exception from either stops the
//! transfer, which then cleans up as it does for a cancel, and is raised once it has stopped.
//! One that comes too late to stop it (once the end snapshot is being created, the core
//! completes) is not raised: the call returns what the core returned, for that is what the
//! cluster holds, and the exception goes to `sys.unraisablehook`, as Python does with an
//! exception it cannot raise. A batch (`SyncMany`) runs the same way: its transfers run on
//! threads of the core that never touch Python, and the batch's progress callback, on the
//! calling thread, is the one bridged; an exception that stopped none of its transfers is
//! not raised either.

use std::collections::HashMap;
use std::ffi::CString;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyType};

use rbd_diffsync as core;
use rbd_diffsync::{CancelToken, ErrorKind, ImageSpec, Phase, VolumeState};

/// How often the running transfer looks for signals (Ctrl-C) when nothing else calls into
/// Python; progress callbacks are throttled separately, to the caller's interval.
const SIGNAL_TICK: Duration = Duration::from_millis(50);

/// The exception classes: `Error` and one subclass per [`ErrorKind`], made once from the
/// core's table.
struct Exceptions {
    base: Py<PyType>,
    kinds: Vec<(ErrorKind, Py<PyType>)>,
}

static EXCEPTIONS: PyOnceLock<Exceptions> = PyOnceLock::new();

/// `not_found` -> `NotFoundError`.
fn class_name(kind: ErrorKind) -> String {
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

fn exceptions(py: Python<'_>) -> PyResult<&Exceptions> {
    EXCEPTIONS.get_or_try_init(py, || {
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
        let mut kinds = Vec::new();
        for kind in ErrorKind::ALL {
            let name = cstring(format!("rbd_diffsync.{}", class_name(kind)))?;
            let doc = cstring(format!("An rbd_diffsync.Error of kind {:?}.", kind.name()))?;
            let class = PyErr::new_type(py, &name, Some(&doc), Some(base.bind(py)), None)?;
            class.bind(py).setattr("kind", kind.name())?;
            kinds.push((kind, class));
        }
        Ok(Exceptions { base, kinds })
    })
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
struct Context<'a> {
    image: Option<&'a str>,
    snap: Option<&'a str>,
    /// For a mismatch, the first differing byte.
    offset: Option<u64>,
}

/// An exception of `kind` with this errno and message, and `image`/`snap`/`offset`
/// attributes.
fn new_error(py: Python<'_>, kind: ErrorKind, errno: i32, message: &str, cx: Context<'_>) -> PyErr {
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

fn to_py_err(py: Python<'_>, e: &core::Error) -> PyErr {
    let cx = Context {
        image: e.image(),
        snap: e.snap(),
        offset: e.offset(),
    };
    new_error(py, e.kind(), e.errno(), e.message(), cx)
}

fn invalid(py: Python<'_>, message: String) -> PyErr {
    new_error(
        py,
        ErrorKind::InvalidArgument,
        libc::EINVAL,
        &message,
        Context::default(),
    )
}

fn parse_spec(py: Python<'_>, spec: &str) -> PyResult<ImageSpec> {
    ImageSpec::parse(spec).map_err(|e| to_py_err(py, &e))
}

/// A rate in bytes per second: None or 0 for no cap (0).
fn rate(py: Python<'_>, value: Option<i64>) -> PyResult<u64> {
    let value = value.unwrap_or(0);
    u64::try_from(value).map_err(|_| invalid(py, format!("rate_limit {value} is negative")))
}

fn seconds(py: Python<'_>, what: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        invalid(
            py,
            format!("{what} {value} is not a number of seconds >= 0"),
        )
    })
}

/// How to connect to a cluster, as the rbd CLI's global options say it.
#[pyclass(frozen, eq, module = "rbd_diffsync", name = "ClusterSpec")]
#[derive(Clone, PartialEq)]
struct PyClusterSpec {
    inner: core::ClusterSpec,
}

#[pymethods]
impl PyClusterSpec {
    #[new]
    #[pyo3(signature = (conf=None, *, id=None, name=None, cluster_name=None, keyring=None, mon_host=None, connect_timeout=None, op_timeout=None, options=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        conf: Option<PathBuf>,
        id: Option<String>,
        name: Option<String>,
        cluster_name: Option<String>,
        keyring: Option<PathBuf>,
        mon_host: Option<String>,
        connect_timeout: Option<f64>,
        op_timeout: Option<f64>,
        options: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if id.is_some() && name.is_some() {
            return Err(invalid(py, "give either id or name, not both".to_owned()));
        }
        let mut spec = core::ClusterSpec::new();
        if let Some(conf) = conf {
            spec = spec.conf(conf);
        }
        if let Some(id) = id {
            spec = spec.id(id);
        }
        if let Some(name) = name {
            spec = spec.name(name);
        }
        if let Some(cluster_name) = cluster_name {
            spec = spec.cluster_name(cluster_name);
        }
        if let Some(keyring) = keyring {
            spec = spec.keyring(keyring);
        }
        if let Some(mon_host) = mon_host {
            spec = spec.mon_host(mon_host);
        }
        if let Some(timeout) = connect_timeout {
            spec = spec.connect_timeout(seconds(py, "connect_timeout", timeout)?);
        }
        if let Some(timeout) = op_timeout {
            spec = spec.op_timeout(seconds(py, "op_timeout", timeout)?);
        }
        if let Some(options) = options {
            let pairs = if options.hasattr("items")? {
                options.call_method0("items")?
            } else {
                options
            };
            for pair in pairs.try_iter()? {
                let (key, value): (String, String) = pair?.extract()?;
                spec = spec.option(key, value);
            }
        }
        Ok(PyClusterSpec { inner: spec })
    }

    /// The ceph.conf path given, or None (librados' search: $CEPH_CONF, /etc/ceph/...).
    #[getter]
    fn conf(&self) -> Option<String> {
        self.inner
            .conf_path()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// The entity connected as (`client.<id>`), or None for the default (client.admin, or
    /// what CEPH_ARGS says).
    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.client_name()
    }

    /// The cluster name given, or None (`ceph`).
    #[getter]
    fn cluster_name(&self) -> Option<&str> {
        self.inner.cluster_name_value()
    }

    /// The keyring path given, or None.
    #[getter]
    fn keyring(&self) -> Option<String> {
        self.inner
            .keyring_path()
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// The monitor addresses given, or None.
    #[getter]
    fn mon_host(&self) -> Option<&str> {
        self.inner.mon_host_value()
    }

    /// The connect timeout in seconds, or None (DEFAULT_CONNECT_TIMEOUT unless ceph.conf
    /// sets client_mount_timeout).
    #[getter]
    fn connect_timeout(&self) -> Option<f64> {
        self.inner.connect_timeout_value().map(|d| d.as_secs_f64())
    }

    /// The operation timeout in seconds (0: wait for ever), or None (DEFAULT_OP_TIMEOUT unless
    /// ceph.conf sets rados_osd_op_timeout / rados_mon_op_timeout).
    #[getter]
    fn op_timeout(&self) -> Option<f64> {
        self.inner.op_timeout_value().map(|d| d.as_secs_f64())
    }

    /// The librados/librbd options set, in order.
    #[getter]
    fn options(&self) -> Vec<(String, String)> {
        self.inner.options().to_vec()
    }

    fn __repr__(&self) -> String {
        format!("ClusterSpec({})", self.inner)
    }
}

/// Where a running transfer is, as given to the progress callback.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "Progress")]
struct PyProgress {
    phase: &'static str,
    bytes_done: u64,
    bytes_total: u64,
    elapsed: f64,
    waiting_for: Option<String>,
    waited: f64,
}

#[pymethods]
impl PyProgress {
    fn __repr__(&self) -> String {
        format!(
            "Progress(phase={:?}, bytes_done={}, bytes_total={}, elapsed={:.3})",
            self.phase, self.bytes_done, self.bytes_total, self.elapsed
        )
    }
}

impl From<&core::Progress> for PyProgress {
    fn from(p: &core::Progress) -> Self {
        PyProgress {
            phase: p.phase.name(),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            elapsed: p.elapsed.as_secs_f64(),
            waiting_for: p.waiting_for.clone(),
            waited: p.waited.as_secs_f64(),
        }
    }
}

/// What a finished transfer did.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "TransferStats")]
struct PyTransferStats {
    source: String,
    dest: String,
    from_snap: Option<String>,
    end_snap: Option<String>,
    bytes_read: u64,
    bytes_written: u64,
    bytes_zeroed: u64,
    bytes_skipped: u64,
    bytes_verified: u64,
    extents: u64,
    diff_bytes: u64,
    image_size: u64,
    created_destination: bool,
    continued_interrupted: bool,
    bytes_resumed: u64,
    bytes_rechecked: u64,
    broke_lock_of: Option<String>,
    elapsed: f64,
    snapshot_elapsed: f64,
    throughput: f64,
}

#[pymethods]
impl PyTransferStats {
    fn __repr__(&self) -> String {
        format!(
            "TransferStats(source={:?}, dest={:?}, from_snap={:?}, end_snap={:?}, \
             bytes_written={}, bytes_zeroed={}, elapsed={:.3})",
            self.source,
            self.dest,
            self.from_snap,
            self.end_snap,
            self.bytes_written,
            self.bytes_zeroed,
            self.elapsed
        )
    }
}

impl From<core::TransferStats> for PyTransferStats {
    fn from(s: core::TransferStats) -> Self {
        PyTransferStats {
            throughput: s.throughput(),
            source: s.source,
            dest: s.dest,
            from_snap: s.from_snap,
            end_snap: s.end_snap,
            bytes_read: s.bytes_read,
            bytes_written: s.bytes_written,
            bytes_zeroed: s.bytes_zeroed,
            bytes_skipped: s.bytes_skipped,
            bytes_verified: s.bytes_verified,
            extents: s.extents,
            diff_bytes: s.diff_bytes,
            image_size: s.image_size,
            created_destination: s.created_destination,
            continued_interrupted: s.continued_interrupted,
            bytes_resumed: s.bytes_resumed,
            bytes_rechecked: s.bytes_rechecked,
            broke_lock_of: s.broke_lock_of,
            elapsed: s.elapsed.as_secs_f64(),
            snapshot_elapsed: s.snapshot_elapsed.as_secs_f64(),
        }
    }
}

/// What a transfer would do, found without writing anything.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "Plan")]
struct PyPlan {
    source: String,
    dest: String,
    from_snap: Option<String>,
    end_snap: Option<String>,
    source_size: u64,
    dest_size: Option<u64>,
    create_destination: bool,
    continues_interrupted: bool,
    resume_from: u64,
    bytes_resumed: u64,
    overwrites_destination: bool,
    extents: u64,
    diff_bytes: u64,
    data_bytes: u64,
    zero_bytes: u64,
}

#[pymethods]
impl PyPlan {
    fn __repr__(&self) -> String {
        format!(
            "Plan(source={:?}, dest={:?}, from_snap={:?}, create_destination={}, diff_bytes={})",
            self.source, self.dest, self.from_snap, self.create_destination, self.diff_bytes
        )
    }
}

impl From<core::Plan> for PyPlan {
    fn from(p: core::Plan) -> Self {
        PyPlan {
            source: p.source,
            dest: p.dest,
            from_snap: p.from_snap,
            end_snap: p.end_snap,
            source_size: p.source_size,
            dest_size: p.dest_size,
            create_destination: p.create_destination,
            continues_interrupted: p.continues_interrupted,
            resume_from: p.resume_from,
            bytes_resumed: p.bytes_resumed,
            overwrites_destination: p.overwrites_destination,
            extents: p.extents,
            diff_bytes: p.diff_bytes,
            data_bytes: p.data_bytes,
            zero_bytes: p.zero_bytes,
        }
    }
}

/// A progress report of the core that the bridge hands to the Python callback.
trait Report {
    /// What, once it changes, makes the Python callback due however recent its last call.
    type Mark: PartialEq + Send + 'static;
    fn mark(&self) -> Self::Mark;
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

impl Report for core::Progress {
    /// The phase, and the bytes done once they reach the total.
    type Mark = (Phase, Option<u64>);

    fn mark(&self) -> Self::Mark {
        let reached = self.bytes_total > 0 && self.bytes_done == self.bytes_total;
        (self.phase, reached.then_some(self.bytes_done))
    }

    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(py, PyProgress::from(self))?.into_any())
    }
}

impl Report for core::BatchProgress {
    /// The state of each volume.
    type Mark = Vec<VolumeState>;

    fn mark(&self) -> Self::Mark {
        self.volumes.iter().map(|v| v.state).collect()
    }

    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(Bound::new(py, PyBatchProgress::new(py, self)?)?.into_any())
    }
}

/// What the core's progress callback shares with the Python side of one run.
struct Bridge<M> {
    callback: Option<Py<PyAny>>,
    interval: Duration,
    last_call: Option<Instant>,
    last_mark: Option<M>,
    /// The exception that stopped the run: raised once it has stopped.
    error: Option<PyErr>,
    /// Set once the bridge asked the run to stop: the callback is not called again while it
    /// winds down.
    stopped: bool,
}

impl<M: PartialEq> Bridge<M> {
    /// Whether the Python callback is due: when the report's mark changes (a change of phase,
    /// the total reached, a volume of a batch ending), and otherwise at most every `interval`.
    fn due(&self, mark: &M, now: Instant) -> bool {
        self.last_mark.as_ref() != Some(mark)
            || self
                .last_call
                .is_none_or(|last| now - last >= self.interval)
    }

    fn on_progress<P: Report<Mark = M>>(&mut self, py: Python<'_>, p: &P) -> ControlFlow<()> {
        let flow = self.report(py, p);
        self.stopped |= flow.is_break();
        flow
    }

    fn report<P: Report<Mark = M>>(&mut self, py: Python<'_>, p: &P) -> ControlFlow<()> {
        if self.stopped {
            return ControlFlow::Break(());
        }
        if let Err(e) = py.check_signals() {
            self.error = Some(e);
            return ControlFlow::Break(());
        }
        if self.callback.is_none() {
            return ControlFlow::Continue(());
        }
        let now = Instant::now();
        let mark = p.mark();
        if !self.due(&mark, now) {
            return ControlFlow::Continue(());
        }
        self.last_call = Some(now);
        self.last_mark = Some(mark);
        let Some(callback) = &self.callback else {
            return ControlFlow::Continue(());
        };
        match p.to_py(py).and_then(|arg| callback.call1(py, (arg,))) {
            Ok(value) if value.bind(py).is(pyo3::types::PyBool::new(py, false)) => {
                ControlFlow::Break(())
            }
            Ok(_) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// The core's progress callback that the bridge installs.
type Hook<P> = Box<dyn FnMut(&P) -> ControlFlow<()> + Send>;

/// A core builder that reports progress: a transfer, a verification or a batch.
trait Reporting: Send {
    type Progress: Report;
    /// Calls `hook` at most every `interval`, on the thread that runs it.
    fn reporting(self, interval: Duration, hook: Hook<Self::Progress>) -> Self;
}

impl Reporting for core::DiffTransfer {
    type Progress = core::Progress;
    fn reporting(self, interval: Duration, hook: Hook<core::Progress>) -> Self {
        self.progress_interval(interval).on_progress(hook)
    }
}

impl Reporting for core::Verify {
    type Progress = core::Progress;
    fn reporting(self, interval: Duration, hook: Hook<core::Progress>) -> Self {
        self.progress_interval(interval).on_progress(hook)
    }
}

/// Runs `f` (a core transfer, plan, verification or batch) with the GIL released, the bridge
/// reporting and checking signals. Returns what the core returned when it succeeded, also
/// when an exception of the callback or a signal came too late to stop it (it was
/// committing): that exception is then reported as unraisable. Otherwise raises that
/// exception, if one stopped the run, or the core's error.
fn run_bridged<B: Reporting, T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    interval: Duration,
    builder: B,
    f: impl FnOnce(B) -> core::Result<T> + Send,
) -> PyResult<T> {
    let (raised, result) = run_bridged_keeping(py, callback, interval, builder, f);
    match (raised, result) {
        (Some(raised), Ok(value)) => {
            raised.too_late(py);
            Ok(value)
        }
        (Some(raised), Err(_)) => Err(raised.error),
        (None, result) => result.map_err(|e| to_py_err(py, &e)),
    }
}

/// The exception of the callback or of a signal that stopped a run, and the callback.
struct Raised {
    error: PyErr,
    callback: Option<Py<PyAny>>,
}

impl Raised {
    /// Reports an exception that came too late to stop the run, which completed, as Python
    /// reports an exception it cannot raise: to `sys.unraisablehook`, with the callback as
    /// the object concerned.
    fn too_late(self, py: Python<'_>) {
        let callback = self.callback.as_ref().map(|c| c.bind(py));
        self.error.write_unraisable(py, callback);
    }
}

/// [`run_bridged`], keeping what the run returned beside the exception of the callback or of
/// a signal, if any.
fn run_bridged_keeping<B: Reporting, T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    interval: Duration,
    builder: B,
    f: impl FnOnce(B) -> core::Result<T> + Send,
) -> (Option<Raised>, core::Result<T>) {
    let bridge = Arc::new(Mutex::new(Bridge::<<B::Progress as Report>::Mark> {
        callback,
        interval,
        last_call: None,
        last_mark: None,
        error: None,
        stopped: false,
    }));
    let shared = bridge.clone();
    let hook: Hook<B::Progress> = Box::new(move |p: &B::Progress| {
        Python::attach(|py| match shared.lock() {
            Ok(mut bridge) => bridge.on_progress(py, p),
            Err(_) => ControlFlow::Break(()),
        })
    });
    let builder = builder.reporting(SIGNAL_TICK.min(interval), hook);
    let result = py.detach(move || f(builder));
    let raised = bridge.lock().ok().and_then(|mut b| {
        let error = b.error.take()?;
        Some(Raised {
            error,
            callback: b.callback.take(),
        })
    });
    (raised, result)
}

// The defaults of the signature of `DiffTransfer`, written out so that Python shows them.
const _: () = assert!(core::DEFAULT_CHUNK_SIZE == 2097152 && core::DEFAULT_WINDOW == 32);

/// What a transfer and a verification are both given: the clusters, the I/O settings, the
/// progress interval and the token of cancel().
struct Settings {
    cluster: core::ClusterSpec,
    dest_cluster: Option<core::ClusterSpec>,
    chunk_size: u64,
    window: usize,
    progress_interval: Duration,
    token: CancelToken,
}

impl Settings {
    fn new(
        py: Python<'_>,
        cluster: Option<PyRef<'_, PyClusterSpec>>,
        dest_cluster: Option<PyRef<'_, PyClusterSpec>>,
        chunk_size: i64,
        window: i64,
        progress_interval: f64,
    ) -> PyResult<Self> {
        let chunk_size = u64::try_from(chunk_size)
            .map_err(|_| invalid(py, format!("chunk_size {chunk_size} is negative")))?;
        let window = usize::try_from(window)
            .map_err(|_| invalid(py, format!("window {window} is negative")))?;
        Ok(Settings {
            cluster: cluster.map(|c| c.inner.clone()).unwrap_or_default(),
            dest_cluster: dest_cluster.map(|c| c.inner.clone()),
            chunk_size,
            window,
            progress_interval: seconds(py, "progress_interval", progress_interval)?,
            token: CancelToken::new(),
        })
    }

    /// Runs `f` on `builder` as [`run_bridged`] does, at this progress interval.
    fn run<B: Reporting, T: Send>(
        &self,
        py: Python<'_>,
        progress: Option<Py<PyAny>>,
        builder: B,
        f: impl FnOnce(B) -> core::Result<T> + Send,
    ) -> PyResult<T> {
        run_bridged(py, progress, self.progress_interval, builder, f)
    }
}

/// A transfer of the changes of a source image into a destination image.
#[pyclass(frozen, module = "rbd_diffsync", name = "DiffTransfer")]
struct PyDiffTransfer {
    source: ImageSpec,
    dest: ImageSpec,
    from_snap: Option<String>,
    whole_object: bool,
    force: bool,
    verify: bool,
    /// Bytes per second read from the source, at most; 0 for no cap.
    rate_limit: u64,
    settings: Settings,
}

#[pymethods]
impl PyDiffTransfer {
    #[new]
    #[pyo3(signature = (source, dest, *, from_snap=None, cluster=None, dest_cluster=None, chunk_size=2097152, window=32, whole_object=false, force=false, verify=false, rate_limit=None, progress_interval=0.2))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: &str,
        dest: &str,
        from_snap: Option<String>,
        cluster: Option<PyRef<'_, PyClusterSpec>>,
        dest_cluster: Option<PyRef<'_, PyClusterSpec>>,
        chunk_size: i64,
        window: i64,
        whole_object: bool,
        force: bool,
        verify: bool,
        rate_limit: Option<i64>,
        progress_interval: f64,
    ) -> PyResult<Self> {
        let source = parse_spec(py, source)?;
        let rate_limit = rate(py, rate_limit)?;
        let dest = parse_spec(py, dest)?;
        let settings = Settings::new(
            py,
            cluster,
            dest_cluster,
            chunk_size,
            window,
            progress_interval,
        )?;
        Ok(PyDiffTransfer {
            source,
            dest,
            from_snap,
            whole_object,
            force,
            verify,
            rate_limit,
            settings,
        })
    }

    /// Runs every check and computes the diff, writing nothing.
    #[pyo3(signature = (progress=None))]
    fn plan(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> PyResult<PyPlan> {
        let transfer = self.transfer();
        self.settings
            .run(py, progress, transfer, |t| t.plan())
            .map(PyPlan::from)
    }

    /// Checks everything, then transfers, the GIL released.
    #[pyo3(signature = (progress=None))]
    fn run(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> PyResult<PyTransferStats> {
        let transfer = self.transfer();
        self.settings
            .run(py, progress, transfer, |t| t.run())
            .map(PyTransferStats::from)
    }

    /// Stops the running transfer (from any thread) and every later run of this object.
    fn cancel(&self) {
        self.settings.token.cancel();
    }

    /// Whether cancel() was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.settings.token.is_cancelled()
    }

    #[getter]
    fn source(&self) -> String {
        self.source.to_string()
    }

    #[getter]
    fn dest(&self) -> String {
        self.dest.to_string()
    }

    #[getter(from_snap)]
    fn base_snap(&self) -> Option<&str> {
        self.from_snap.as_deref()
    }

    /// The cap on the bytes per second read from the source, or None.
    #[getter(rate_limit)]
    fn max_rate(&self) -> Option<u64> {
        (self.rate_limit > 0).then_some(self.rate_limit)
    }

    fn __repr__(&self) -> String {
        format!(
            "DiffTransfer({:?}, {:?}, from_snap={:?})",
            self.source.to_string(),
            self.dest.to_string(),
            self.from_snap
        )
    }
}

impl PyDiffTransfer {
    fn transfer(&self) -> core::DiffTransfer {
        let s = &self.settings;
        let mut t = core::DiffTransfer::new(self.source.clone(), self.dest.clone())
            .cluster(s.cluster.clone())
            .chunk_size(s.chunk_size)
            .window(s.window)
            .whole_object(self.whole_object)
            .overwrite_existing(self.force)
            .verify(self.verify)
            .rate_limit(self.rate_limit)
            .cancel_token(s.token.clone());
        if let Some(from) = &self.from_snap {
            t = t.from_snap(from.clone());
        }
        if let Some(dest) = &s.dest_cluster {
            t = t.dest_cluster(dest.clone());
        }
        t
    }
}

/// What a verification that found both images equal did.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "VerifyStats")]
struct PyVerifyStats {
    source: String,
    dest: String,
    image_size: u64,
    bytes_compared: u64,
    bytes_skipped: u64,
    elapsed: f64,
    throughput: f64,
}

#[pymethods]
impl PyVerifyStats {
    fn __repr__(&self) -> String {
        format!(
            "VerifyStats(source={:?}, dest={:?}, image_size={}, bytes_compared={}, elapsed={:.3})",
            self.source, self.dest, self.image_size, self.bytes_compared, self.elapsed
        )
    }
}

impl From<core::VerifyStats> for PyVerifyStats {
    fn from(s: core::VerifyStats) -> Self {
        PyVerifyStats {
            throughput: s.throughput(),
            source: s.source,
            dest: s.dest,
            image_size: s.image_size,
            bytes_compared: s.bytes_compared,
            bytes_skipped: s.bytes_skipped,
            elapsed: s.elapsed.as_secs_f64(),
        }
    }
}

/// A comparison of two whole images, each at a snapshot or HEAD.
#[pyclass(frozen, module = "rbd_diffsync", name = "Verify")]
struct PyVerify {
    a: ImageSpec,
    b: ImageSpec,
    settings: Settings,
}

#[pymethods]
impl PyVerify {
    #[new]
    #[pyo3(signature = (a, b, *, cluster=None, dest_cluster=None, chunk_size=2097152, window=32, progress_interval=0.2))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        a: &str,
        b: &str,
        cluster: Option<PyRef<'_, PyClusterSpec>>,
        dest_cluster: Option<PyRef<'_, PyClusterSpec>>,
        chunk_size: i64,
        window: i64,
        progress_interval: f64,
    ) -> PyResult<Self> {
        let a = parse_spec(py, a)?;
        let b = parse_spec(py, b)?;
        let settings = Settings::new(
            py,
            cluster,
            dest_cluster,
            chunk_size,
            window,
            progress_interval,
        )?;
        Ok(PyVerify { a, b, settings })
    }

    /// Compares the images, the GIL released.
    #[pyo3(signature = (progress=None))]
    fn run(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> PyResult<PyVerifyStats> {
        let s = &self.settings;
        let mut verify = core::Verify::new(self.a.clone(), self.b.clone())
            .cluster(s.cluster.clone())
            .chunk_size(s.chunk_size)
            .window(s.window)
            .cancel_token(s.token.clone());
        if let Some(dest) = &s.dest_cluster {
            verify = verify.dest_cluster(dest.clone());
        }
        s.run(py, progress, verify, |v| v.run())
            .map(PyVerifyStats::from)
    }

    /// Stops the running verification (from any thread) and every later run of this object.
    fn cancel(&self) {
        self.settings.token.cancel();
    }

    /// Whether cancel() was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.settings.token.is_cancelled()
    }

    #[getter]
    fn a(&self) -> String {
        self.a.to_string()
    }

    #[getter]
    fn b(&self) -> String {
        self.b.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Verify({:?}, {:?})", self.a.to_string(), self.b.to_string())
    }
}

/// Where one volume of a batch is, in a `BatchProgress`.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "VolumeProgress")]
struct PyVolumeProgress {
    source: String,
    dest: String,
    state: &'static str,
    phase: Option<&'static str>,
    bytes_done: u64,
    bytes_total: u64,
    waiting_for: Option<String>,
}

#[pymethods]
impl PyVolumeProgress {
    fn __repr__(&self) -> String {
        format!(
            "VolumeProgress(dest={:?}, state={:?}, phase={:?}, bytes_done={}, bytes_total={})",
            self.dest, self.state, self.phase, self.bytes_done, self.bytes_total
        )
    }
}

impl From<&core::VolumeProgress> for PyVolumeProgress {
    fn from(v: &core::VolumeProgress) -> Self {
        PyVolumeProgress {
            source: v.source.clone(),
            dest: v.dest.clone(),
            state: v.state.name(),
            phase: v.phase.map(Phase::name),
            bytes_done: v.bytes_done,
            bytes_total: v.bytes_total,
            waiting_for: v.waiting_for.clone(),
        }
    }
}

/// Where a batch is, as given to its progress callback.
#[pyclass(frozen, module = "rbd_diffsync", name = "BatchProgress")]
struct PyBatchProgress {
    volumes: Vec<Py<PyVolumeProgress>>,
    #[pyo3(get)]
    bytes_done: u64,
    #[pyo3(get)]
    bytes_total: u64,
    #[pyo3(get)]
    queued: usize,
    #[pyo3(get)]
    running: usize,
    #[pyo3(get)]
    succeeded: usize,
    #[pyo3(get)]
    failed: usize,
    #[pyo3(get)]
    elapsed: f64,
}

impl PyBatchProgress {
    fn new(py: Python<'_>, p: &core::BatchProgress) -> PyResult<Self> {
        let volumes = p
            .volumes
            .iter()
            .map(|v| Py::new(py, PyVolumeProgress::from(v)))
            .collect::<PyResult<_>>()?;
        Ok(PyBatchProgress {
            volumes,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            queued: p.queued,
            running: p.running,
            succeeded: p.succeeded,
            failed: p.failed,
            elapsed: p.elapsed.as_secs_f64(),
        })
    }
}

#[pymethods]
impl PyBatchProgress {
    /// Each volume, in the order given.
    #[getter]
    fn volumes(&self, py: Python<'_>) -> Vec<Py<PyVolumeProgress>> {
        self.volumes.iter().map(|v| v.clone_ref(py)).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "BatchProgress(queued={}, running={}, succeeded={}, failed={}, bytes_done={}, \
             bytes_total={}, elapsed={:.3})",
            self.queued,
            self.running,
            self.succeeded,
            self.failed,
            self.bytes_done,
            self.bytes_total,
            self.elapsed
        )
    }
}

/// A core batch as the bridge runs it: each transfer runs with a token of this run, which the
/// batch may cancel, and the `cancel()` of its `DiffTransfer` object reaches it through
/// `links`; `stopped` tells whether the bridge stopped the batch.
struct Batch {
    many: core::SyncMany,
    /// The token of each `DiffTransfer` object, and the token its transfer runs with.
    links: Vec<(CancelToken, CancelToken)>,
    stopped: Arc<AtomicBool>,
}

impl Reporting for Batch {
    type Progress = core::BatchProgress;
    fn reporting(mut self, interval: Duration, mut hook: Hook<core::BatchProgress>) -> Self {
        let links = std::mem::take(&mut self.links);
        let stopped = self.stopped.clone();
        self.many =
            self.many
                .progress_interval(interval)
                .on_progress(move |p: &core::BatchProgress| {
                    for (own, run) in &links {
                        if own.is_cancelled() {
                            run.cancel();
                        }
                    }
                    let flow = hook(p);
                    if flow.is_break() {
                        stopped.store(true, Ordering::Relaxed);
                    }
                    flow
                });
        self
    }
}

// The defaults of the signature of `SyncMany`, written out so that Python shows them.
const _: () = assert!(
    core::DEFAULT_PARALLEL == 4
        && core::DEFAULT_BATCH_BUDGET == 67108864
        && core::DEFAULT_BATCH_REQUESTS == 256
);

/// Many transfers at once, over one connection per cluster, within one budget.
#[pyclass(frozen, module = "rbd_diffsync", name = "SyncMany")]
struct PySyncMany {
    transfers: Vec<Py<PyDiffTransfer>>,
    parallel: usize,
    memory_budget: usize,
    max_requests: usize,
    /// 0 for no cap.
    rate_limit: u64,
    progress_interval: Duration,
    token: CancelToken,
}

/// A count of a batch's settings, between `least` and `most`.
fn count(py: Python<'_>, what: &str, value: i64, least: i64, most: i64) -> PyResult<usize> {
    if value < least || value > most {
        let range = if most == i64::MAX {
            format!("at least {least}")
        } else {
            format!("between {least} and {most}")
        };
        return Err(invalid(py, format!("{what} {value} is not {range}")));
    }
    usize::try_from(value).map_err(|_| invalid(py, format!("{what} {value} is too large")))
}

#[pymethods]
impl PySyncMany {
    #[new]
    #[pyo3(signature = (transfers, *, parallel=4, memory_budget=67108864, max_requests=256, rate_limit=None, progress_interval=0.2))]
    fn new(
        py: Python<'_>,
        transfers: &Bound<'_, PyAny>,
        parallel: i64,
        memory_budget: i64,
        max_requests: i64,
        rate_limit: Option<i64>,
        progress_interval: f64,
    ) -> PyResult<Self> {
        let mut list: Vec<Py<PyDiffTransfer>> = Vec::new();
        let mut seen: HashMap<(String, core::ClusterSpec), usize> = HashMap::new();
        for (i, t) in transfers.try_iter()?.enumerate() {
            let t = t?.cast_into::<PyDiffTransfer>()?;
            let key = {
                let t = t.get();
                let s = &t.settings;
                let cluster = s.dest_cluster.as_ref().unwrap_or(&s.cluster);
                (t.dest.to_string(), cluster.clone())
            };
            if let Some(first) = seen.insert(key, i) {
                return Err(invalid(
                    py,
                    format!(
                        "transfers {} and {} write the same destination, {}",
                        first + 1,
                        i + 1,
                        t.get().dest
                    ),
                ));
            }
            list.push(t.unbind());
        }
        Ok(PySyncMany {
            transfers: list,
            parallel: count(py, "parallel", parallel, 1, 1024)?,
            memory_budget: count(py, "memory_budget", memory_budget, 1, i64::MAX)?,
            max_requests: count(py, "max_requests", max_requests, 1, i64::MAX)?,
            rate_limit: rate(py, rate_limit)?,
            progress_interval: seconds(py, "progress_interval", progress_interval)?,
            token: CancelToken::new(),
        })
    }

    /// Runs the transfers, the GIL released; returns each one's TransferStats or Error.
    #[pyo3(signature = (progress=None))]
    fn run(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> PyResult<Vec<Py<PyAny>>> {
        let mut transfers = Vec::with_capacity(self.transfers.len());
        let mut links = Vec::with_capacity(self.transfers.len());
        for t in &self.transfers {
            let t = t.get();
            let own = t.settings.token.clone();
            let token = CancelToken::new();
            if own.is_cancelled() {
                token.cancel();
            }
            transfers.push(
                t.transfer()
                    .progress_interval(self.progress_interval)
                    .cancel_token(token.clone()),
            );
            links.push((own, token));
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let batch = Batch {
            many: core::SyncMany::new(transfers)
                .parallel(self.parallel)
                .memory_budget(self.memory_budget)
                .max_requests(self.max_requests)
                .rate_limit(self.rate_limit)
                .cancel_token(self.token.clone()),
            links,
            stopped: stopped.clone(),
        };
        let (raised, results) =
            run_bridged_keeping(py, progress, self.progress_interval, batch, |b| {
                Ok(b.many.run())
            });
        let results = results.map_err(|e| to_py_err(py, &e))?;
        let total = results.len();
        let mut unfinished = 0;
        let mut out = Vec::with_capacity(total);
        for result in results {
            out.push(match result {
                Ok(stats) => Py::new(py, PyTransferStats::from(stats))?.into_any(),
                Err(e) => {
                    if e.kind() == ErrorKind::Cancelled {
                        unfinished += 1;
                    }
                    to_py_err(py, &e).into_value(py).into_any()
                }
            });
        }
        if let Some(raised) = raised {
            if unfinished == 0 {
                // It stopped no transfer: it came once every volume was committing or done.
                // What the run returns is what the clusters hold.
                raised.too_late(py);
                return Ok(out);
            }
            // Ctrl-C, or an exception of the callback: it says what each volume did too.
            // An exception that takes no attributes is raised as it is.
            let raised = raised.error;
            let _ = raised.value(py).setattr("results", PyList::new(py, &out)?);
            return Err(raised);
        }
        if unfinished > 0 && (stopped.load(Ordering::Relaxed) || self.token.is_cancelled()) {
            let error = new_error(
                py,
                ErrorKind::Cancelled,
                libc::ECANCELED,
                &format!("the batch was cancelled: {unfinished} of its {total} transfers did not complete"),
                Context::default(),
            );
            error.value(py).setattr("results", PyList::new(py, &out)?)?;
            return Err(error);
        }
        Ok(out)
    }

    /// Stops the running batch (from any thread) and every later run of this object.
    fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether cancel() was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    #[getter]
    fn transfers(&self, py: Python<'_>) -> Vec<Py<PyDiffTransfer>> {
        self.transfers.iter().map(|t| t.clone_ref(py)).collect()
    }

    #[getter]
    fn parallel(&self) -> usize {
        self.parallel
    }

    #[getter]
    fn memory_budget(&self) -> usize {
        self.memory_budget
    }

    #[getter]
    fn max_requests(&self) -> usize {
        self.max_requests
    }

    #[getter]
    fn rate_limit(&self) -> Option<u64> {
        (self.rate_limit > 0).then_some(self.rate_limit)
    }

    #[getter]
    fn progress_interval(&self) -> f64 {
        self.progress_interval.as_secs_f64()
    }

    fn __len__(&self) -> usize {
        self.transfers.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SyncMany(<{} transfers>, parallel={})",
            self.transfers.len(),
            self.parallel
        )
    }
}

/// `SyncMany(transfers, ...).run(progress)`.
#[pyfunction]
#[pyo3(signature = (transfers, *, parallel=4, memory_budget=67108864, max_requests=256, rate_limit=None, progress=None, progress_interval=0.2))]
#[allow(clippy::too_many_arguments)]
fn sync_many(
    py: Python<'_>,
    transfers: &Bound<'_, PyAny>,
    parallel: i64,
    memory_budget: i64,
    max_requests: i64,
    rate_limit: Option<i64>,
    progress: Option<Py<PyAny>>,
    progress_interval: f64,
) -> PyResult<Vec<Py<PyAny>>> {
    PySyncMany::new(
        py,
        transfers,
        parallel,
        memory_budget,
        max_requests,
        rate_limit,
        progress_interval,
    )?
    .run(py, progress)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyClusterSpec>()?;
    m.add_class::<PyDiffTransfer>()?;
    m.add_class::<PyProgress>()?;
    m.add_class::<PyTransferStats>()?;
    m.add_class::<PyPlan>()?;
    m.add_class::<PyVerify>()?;
    m.add_class::<PyVerifyStats>()?;
    m.add_class::<PySyncMany>()?;
    m.add_class::<PyBatchProgress>()?;
    m.add_class::<PyVolumeProgress>()?;
    m.add_function(wrap_pyfunction!(sync_many, m)?)?;
    // What a panic of the library (a bug) raises: pyo3's own class, a BaseException.
    m.add(
        "PanicException",
        py.get_type::<pyo3::panic::PanicException>(),
    )?;
    let exc = exceptions(py)?;
    m.add("Error", exc.base.bind(py))?;
    let by_kind = PyDict::new(py);
    for (kind, class) in &exc.kinds {
        m.add(class_name(*kind).as_str(), class.bind(py))?;
        by_kind.set_item(kind.name(), class.bind(py))?;
    }
    m.add("ERROR_CLASSES", by_kind)?;
    m.add("DEFAULT_CHUNK_SIZE", core::DEFAULT_CHUNK_SIZE)?;
    m.add("DEFAULT_WINDOW", core::DEFAULT_WINDOW)?;
    m.add("DEFAULT_PARALLEL", core::DEFAULT_PARALLEL)?;
    m.add("DEFAULT_BATCH_BUDGET", core::DEFAULT_BATCH_BUDGET)?;
    m.add("DEFAULT_BATCH_REQUESTS", core::DEFAULT_BATCH_REQUESTS)?;
    m.add(
        "DEFAULT_CONNECT_TIMEOUT",
        core::DEFAULT_CONNECT_TIMEOUT.as_secs_f64(),
    )?;
    m.add("DEFAULT_OP_TIMEOUT", core::DEFAULT_OP_TIMEOUT.as_secs_f64())?;
    m.add("DESTINATION_CHANGED", core::error::CODE_DESTINATION_CHANGED)?;
    m.add("MISMATCH", core::error::CODE_MISMATCH)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
