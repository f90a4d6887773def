//! `DiffTransfer`, and what it gives back: `Plan` and `TransferStats`.

use pyo3::prelude::*;

use rbd_diffsync as core;
use rbd_diffsync::ImageSpec;

use crate::args::{parse_spec, rate};
use crate::cluster::PyClusterSpec;
use crate::job::Settings;

/// What a finished transfer did.
#[pyclass(frozen, get_all, module = "rbd_diffsync", name = "TransferStats")]
pub(crate) struct PyTransferStats {
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
pub(crate) struct PyPlan {
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

// The defaults of the signatures of `DiffTransfer` and `Verify`, written out so that Python
// shows them.
const _: () = assert!(core::DEFAULT_CHUNK_SIZE == 2097152 && core::DEFAULT_WINDOW == 32);

/// A transfer of the changes of a source image into a destination image.
#[pyclass(frozen, module = "rbd_diffsync", name = "DiffTransfer")]
pub(crate) struct PyDiffTransfer {
    source: ImageSpec,
    pub(crate) dest: ImageSpec,
    from_snap: Option<String>,
    pub(crate) settings: Settings,
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
        let mut settings = Settings::new(
            py,
            cluster,
            dest_cluster,
            chunk_size,
            window,
            progress_interval,
        )?;
        settings.core.whole_object = whole_object;
        settings.core.overwrite_existing = force;
        settings.core.verify = verify;
        settings.core.rate_limit = rate_limit;
        Ok(PyDiffTransfer {
            source,
            dest,
            from_snap,
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
        self.settings.core.rate_limit
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
    /// The core transfer that this object describes.
    pub(crate) fn transfer(&self) -> core::DiffTransfer {
        let t = self.settings.apply(core::DiffTransfer::new(
            self.source.clone(),
            self.dest.clone(),
        ));
        match &self.from_snap {
            Some(from) => t.from_snap(from.clone()),
            None => t,
        }
    }
}
