//! `SyncMany` and `sync_many()`: many transfers at once; `BatchProgress` and
//! `VolumeProgress`, where a batch is; and the batch as the bridge runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;

use rbd_diffsync as core;
use rbd_diffsync::{CancelToken, ErrorKind, Phase, VolumeState};

use crate::args::{non_negative, rate, seconds};
use crate::bridge::{run_bridged_keeping, Hook, Raised, Report, Reporting};
use crate::exceptions::{invalid, new_error, to_py_err, Context};
use crate::transfer::{PyDiffTransfer, PyTransferStats};

/// Where one volume of a batch is, in a `BatchProgress`.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "VolumeProgress")]
pub(crate) struct PyVolumeProgress {
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
pub(crate) struct PyBatchProgress {
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
pub(crate) struct PySyncMany {
    transfers: Vec<Py<PyDiffTransfer>>,
    settings: core::BatchSettings,
    token: CancelToken,
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
        let transfers = distinct_destinations(py, transfers)?;
        let mut settings = core::BatchSettings::default();
        settings.parallel = non_negative(py, "parallel", parallel)?;
        settings.memory_budget = non_negative(py, "memory_budget", memory_budget)?;
        settings.max_requests = non_negative(py, "max_requests", max_requests)?;
        settings.rate_limit = rate(py, rate_limit)?;
        settings.progress_interval = seconds(py, "progress_interval", progress_interval)?;
        settings.check().map_err(|e| to_py_err(py, &e))?;
        Ok(PySyncMany {
            transfers,
            settings,
            token: CancelToken::new(),
        })
    }

    /// Runs the transfers, the GIL released; returns each one's TransferStats or Error.
    #[pyo3(signature = (progress=None))]
    fn run(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> PyResult<Vec<Py<PyAny>>> {
        let batch = self.batch();
        let stopped = batch.stopped.clone();
        let (raised, results) =
            run_bridged_keeping(py, progress, self.settings.progress_interval, batch, |b| {
                Ok(b.many.run())
            });
        let results = results.map_err(|e| to_py_err(py, &e))?;
        let total = results.len();
        let (out, unfinished) = results_to_py(py, results)?;
        if let Some(raised) = raised {
            return raised_outcome(py, raised, out, unfinished);
        }
        if unfinished > 0 && (stopped.load(Ordering::Relaxed) || self.token.is_cancelled()) {
            return Err(cancelled_error(py, unfinished, total, &out)?);
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
        self.settings.parallel
    }

    #[getter]
    fn memory_budget(&self) -> usize {
        self.settings.memory_budget
    }

    #[getter]
    fn max_requests(&self) -> usize {
        self.settings.max_requests
    }

    #[getter]
    fn rate_limit(&self) -> Option<u64> {
        self.settings.rate_limit
    }

    #[getter]
    fn progress_interval(&self) -> f64 {
        self.settings.progress_interval.as_secs_f64()
    }

    fn __len__(&self) -> usize {
        self.transfers.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SyncMany(<{} transfers>, parallel={})",
            self.transfers.len(),
            self.settings.parallel
        )
    }
}

impl PySyncMany {
    /// The core batch of a run: each transfer with a token of its own for this run, linked to
    /// the token of its `DiffTransfer` object.
    fn batch(&self) -> Batch {
        let mut transfers = Vec::with_capacity(self.transfers.len());
        let mut links = Vec::with_capacity(self.transfers.len());
        for t in &self.transfers {
            let (transfer, link) = self.linked_transfer(t.get());
            transfers.push(transfer);
            links.push(link);
        }
        Batch {
            many: core::SyncMany::new(transfers)
                .settings(self.settings.clone())
                .cancel_token(self.token.clone()),
            links,
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The core transfer of `t` in a run, with a new token (already cancelled if `t` is),
    /// and its link: the token of `t` and that new token.
    fn linked_transfer(
        &self,
        t: &PyDiffTransfer,
    ) -> (core::DiffTransfer, (CancelToken, CancelToken)) {
        let own = t.settings.token.clone();
        let token = CancelToken::new();
        if own.is_cancelled() {
            token.cancel();
        }
        let transfer = t
            .transfer()
            .progress_interval(self.settings.progress_interval)
            .cancel_token(token.clone());
        (transfer, (own, token))
    }
}

/// The `DiffTransfer` objects of `transfers`; refused if two write the same destination (the
/// same image name on the same cluster).
fn distinct_destinations(
    py: Python<'_>,
    transfers: &Bound<'_, PyAny>,
) -> PyResult<Vec<Py<PyDiffTransfer>>> {
    let mut list: Vec<Py<PyDiffTransfer>> = Vec::new();
    let mut seen: HashMap<(String, core::ClusterSpec), usize> = HashMap::new();
    for (i, t) in transfers.try_iter()?.enumerate() {
        let t = t?.cast_into::<PyDiffTransfer>()?;
        let key = {
            let t = t.get();
            let s = &t.settings;
            let cluster = s.core.dest_cluster.as_ref().unwrap_or(&s.core.cluster);
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
    Ok(list)
}

/// Each result of a batch as Python returns it, a `TransferStats` or an `Error`, and how
/// many transfers did not complete (failed as cancelled).
fn results_to_py(
    py: Python<'_>,
    results: Vec<core::Result<core::TransferStats>>,
) -> PyResult<(Vec<Py<PyAny>>, usize)> {
    let mut unfinished = 0;
    let mut out = Vec::with_capacity(results.len());
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
    Ok((out, unfinished))
}

/// How a batch that Ctrl-C or an exception of the callback came into ends: with its results
/// if that stopped none of its transfers, otherwise with that exception, which holds them.
fn raised_outcome(
    py: Python<'_>,
    raised: Raised,
    out: Vec<Py<PyAny>>,
    unfinished: usize,
) -> PyResult<Vec<Py<PyAny>>> {
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
    Err(raised)
}

/// The `CancelledError` of a batch that was cancelled or stopped by its callback, saying what
/// each volume did.
fn cancelled_error(
    py: Python<'_>,
    unfinished: usize,
    total: usize,
    out: &[Py<PyAny>],
) -> PyResult<PyErr> {
    let error = new_error(
        py,
        ErrorKind::Cancelled,
        libc::ECANCELED,
        &format!("the batch was cancelled: {unfinished} of its {total} transfers did not complete"),
        Context::default(),
    );
    error.value(py).setattr("results", PyList::new(py, out)?)?;
    Ok(error)
}

/// `SyncMany(transfers, ...).run(progress)`.
#[pyfunction]
#[pyo3(signature = (transfers, *, parallel=4, memory_budget=67108864, max_requests=256, rate_limit=None, progress=None, progress_interval=0.2))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sync_many(
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
