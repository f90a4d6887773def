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
//!
//! The module's parts: `exceptions` (the exception classes), `args` (the checks of arguments),
//! `bridge` (a core job run from Python), `cluster` (`ClusterSpec`), `progress` (`Progress`),
//! `job` (what a transfer and a verification share), `transfer` (`DiffTransfer`, `Plan`,
//! `TransferStats`), `verify` (`Verify`, `VerifyStats`) and `batch` (`SyncMany`,
//! `sync_many()`, `BatchProgress`, `VolumeProgress`).

mod args;
mod batch;
mod bridge;
mod cluster;
mod exceptions;
mod job;
mod progress;
mod transfer;
mod verify;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use rbd_diffsync as core;

use crate::batch::{PyBatchProgress, PySyncMany, PyVolumeProgress};
use crate::cluster::PyClusterSpec;
use crate::exceptions::{class_name, exceptions};
use crate::progress::PyProgress;
use crate::transfer::{PyDiffTransfer, PyPlan, PyTransferStats};
use crate::verify::{PyVerify, PyVerifyStats};

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
    m.add_function(wrap_pyfunction!(batch::sync_many, m)?)?;
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
    // The name this class had before, which shadowed the builtin: kept, out of `__all__`.
    if let Some((_, class)) = exc
        .kinds
        .iter()
        .find(|(k, _)| *k == core::ErrorKind::Timeout)
    {
        m.setattr("TimeoutError", class.bind(py))?;
    }
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
