//! `ClusterSpec`: how to connect to a cluster.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

use rbd_diffsync as core;

use crate::args::seconds;
use crate::exceptions::invalid;

/// How to connect to a cluster, as the rbd CLI's global options say it.
#[pyclass(frozen, eq, module = "rbd_diffsync", name = "ClusterSpec")]
#[derive(Clone, PartialEq)]
pub(crate) struct PyClusterSpec {
    pub(crate) inner: core::ClusterSpec,
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
            spec = with_options(spec, options)?;
        }
        Ok(PyClusterSpec { inner: spec })
    }

    /// The ceph.conf path given, or None (librados' search: $CEPH_CONF, /etc/ceph/...).
    #[getter]
    fn conf(&self) -> Option<String> {
        self.inner.conf_path().map(path_string)
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
        self.inner.keyring_path().map(path_string)
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

/// `spec` with the librados/librbd options of `options`: a mapping, or an iterable of
/// (key, value) pairs.
fn with_options(
    mut spec: core::ClusterSpec,
    options: Bound<'_, PyAny>,
) -> PyResult<core::ClusterSpec> {
    let pairs = if options.hasattr("items")? {
        options.call_method0("items")?
    } else {
        options
    };
    for pair in pairs.try_iter()? {
        let (key, value): (String, String) = pair?.extract()?;
        spec = spec.option(key, value);
    }
    Ok(spec)
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
