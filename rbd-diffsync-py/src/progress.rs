//! `Progress`: where a running transfer or verification is, as its progress callback is
//! given it.

use pyo3::prelude::*;

use rbd_diffsync as core;
use rbd_diffsync::Phase;

use crate::bridge::Report;

/// Where a running transfer is, as given to the progress callback.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "Progress")]
pub(crate) struct PyProgress {
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
