//! The bridge between a core job and Python: the job runs with the GIL released, its progress
//! is handed to the Python callback, signals and a callback's exception or `False` stop it,
//! and the exception is raised once it has stopped (or reported as unraisable if it came too
//! late to stop it).

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyBool;

use rbd_diffsync as core;

use crate::exceptions::to_py_err;

/// How often the running transfer looks for signals (Ctrl-C) when nothing else calls into
/// Python; progress callbacks are throttled separately, to the caller's interval.
const SIGNAL_TICK: Duration = Duration::from_millis(50);

/// A progress report of the core that the bridge hands to the Python callback.
pub(crate) trait Report {
    /// What, once it changes, makes the Python callback due however recent its last call.
    type Mark: PartialEq + Send + 'static;
    fn mark(&self) -> Self::Mark;
    fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>>;
}

/// The core's progress callback that the bridge installs.
pub(crate) type Hook<P> = Box<dyn FnMut(&P) -> ControlFlow<()> + Send>;

/// A core builder that reports progress: a transfer, a verification or a batch.
pub(crate) trait Reporting: Send {
    type Progress: Report;
    /// Calls `hook` at most every `interval`, on the thread that runs it.
    fn reporting(self, interval: Duration, hook: Hook<Self::Progress>) -> Self;
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
    fn new(callback: Option<Py<PyAny>>, interval: Duration) -> Self {
        Bridge {
            callback,
            interval,
            last_call: None,
            last_mark: None,
            error: None,
            stopped: false,
        }
    }

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
        self.call(py, p)
    }

    /// Calls the Python callback with `p`: `Break` when it returns `False` or raises.
    fn call<P: Report<Mark = M>>(&mut self, py: Python<'_>, p: &P) -> ControlFlow<()> {
        let Some(callback) = &self.callback else {
            return ControlFlow::Continue(());
        };
        match p.to_py(py).and_then(|arg| callback.call1(py, (arg,))) {
            Ok(value) if value.bind(py).is(PyBool::new(py, false)) => ControlFlow::Break(()),
            Ok(_) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }

    /// The exception that stopped the run, if any, with the callback.
    fn take_raised(&mut self) -> Option<Raised> {
        let error = self.error.take()?;
        Some(Raised {
            error,
            callback: self.callback.take(),
        })
    }
}

/// Runs `f` (a core transfer, plan, verification or batch) with the GIL released, the bridge
/// reporting and checking signals. Returns what the core returned when it succeeded, also
/// when an exception of the callback or a signal came too late to stop it (it was
/// committing): that exception is then reported as unraisable. Otherwise raises that
/// exception, if one stopped the run, or the core's error.
pub(crate) fn run_bridged<B: Reporting, T: Send>(
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
pub(crate) struct Raised {
    pub(crate) error: PyErr,
    callback: Option<Py<PyAny>>,
}

impl Raised {
    /// Reports an exception that came too late to stop the run, which completed, as Python
    /// reports an exception it cannot raise: to `sys.unraisablehook`, with the callback as
    /// the object concerned.
    pub(crate) fn too_late(self, py: Python<'_>) {
        let callback = self.callback.as_ref().map(|c| c.bind(py));
        self.error.write_unraisable(py, callback);
    }
}

/// [`run_bridged`], keeping what the run returned beside the exception of the callback or of
/// a signal, if any.
pub(crate) fn run_bridged_keeping<B: Reporting, T: Send>(
    py: Python<'_>,
    callback: Option<Py<PyAny>>,
    interval: Duration,
    builder: B,
    f: impl FnOnce(B) -> core::Result<T> + Send,
) -> (Option<Raised>, core::Result<T>) {
    let bridge = Arc::new(Mutex::new(Bridge::new(callback, interval)));
    let builder = builder.reporting(SIGNAL_TICK.min(interval), hook(bridge.clone()));
    let result = py.detach(move || f(builder));
    let raised = bridge.lock().ok().and_then(|mut b| b.take_raised());
    (raised, result)
}

/// The core's progress callback for `bridge`: it takes the GIL for each report, and stops
/// the run if the bridge's lock was poisoned.
fn hook<P: Report>(bridge: Arc<Mutex<Bridge<P::Mark>>>) -> Hook<P> {
    Box::new(move |p: &P| {
        Python::attach(|py| match bridge.lock() {
            Ok(mut bridge) => bridge.on_progress(py, p),
            Err(_) => ControlFlow::Break(()),
        })
    })
}
