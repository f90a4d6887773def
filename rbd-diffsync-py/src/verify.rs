//! `Verify`, and what it gives back: `VerifyStats`.

use pyo3::prelude::*;

use rbd_diffsync as core;
use rbd_diffsync::ImageSpec;

use crate::args::parse_spec;
use crate::cluster::PyClusterSpec;
use crate::job::Settings;

/// What a verification that found both images equal did.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "VerifyStats")]
pub(crate) struct PyVerifyStats {
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
pub(crate) struct PyVerify {
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
        let verify = s.apply(core::Verify::new(self.a.clone(), self.b.clone()));
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
