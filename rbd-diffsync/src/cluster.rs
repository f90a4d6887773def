//! Connections to a cluster and I/O contexts on its pools.
//!
//! The raw librados calls come from the `ceph` crate; the owners are this crate's own, because
//! `ceph::ceph::connect_to_ceph` takes neither a keyring nor librados' default conf search, and
//! its `config_set` refuses to run on an unconnected handle.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::Arc;

use ceph::rados as raw;

use crate::error::{Error, Result};
use crate::spec::ClusterSpec;
use crate::sys::{rados_ioctx_t, rados_t};

struct Handle {
    rados: rados_t,
    label: String,
}

// SAFETY: a connected rados_t is documented as safe to use from several threads at once.
unsafe impl Send for Handle {}
// SAFETY: as above; nothing in `Handle` is mutated after connect.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `rados` came from rados_create and is shut down exactly once, here.
        unsafe { raw::rados_shutdown(self.rados) }
    }
}

/// A connection to one cluster, shared by the images opened through it. Cloning is cheap.
///
/// Set up for streaming: librbd's cache is off (each byte is read once and written once) and
/// writes hand librbd the caller's buffer without a copy, which stays valid until they complete.
#[derive(Clone)]
pub struct Cluster {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("cluster", &self.handle.label)
            .finish()
    }
}

fn cstring(what: &str, s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
}

impl Cluster {
    /// Connects as the spec says.
    pub fn connect(spec: &ClusterSpec) -> Result<Cluster> {
        let label = spec.to_string();
        let id = cstring("client id", spec.client_id().as_bytes())?;
        let conf = spec
            .conf_path()
            .map(|p| cstring("conf path", p.as_os_str().as_bytes()))
            .transpose()?;
        let keyring = spec
            .keyring_path()
            .map(|p| cstring("keyring path", p.as_os_str().as_bytes()))
            .transpose()?;
        let mut rados: rados_t = ptr::null_mut();
        // SAFETY: `rados` is a valid out pointer and `id` a NUL-terminated string.
        let ret = unsafe { raw::rados_create(&mut rados, id.as_ptr()) };
        if ret < 0 {
            return Err(Error::Connect {
                cluster: label,
                errno: crate::error::Errno::from_ret(ret.into()),
            });
        }
        // From here on, dropping `handle` shuts the half-made connection down.
        let handle = Handle { rados, label };
        let fail = |ret: i32, handle: &Handle| Error::Connect {
            cluster: handle.label.clone(),
            errno: crate::error::Errno::from_ret(ret.into()),
        };
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: the handle is created and not connected; a NULL path asks for the default search.
        let ret = unsafe { raw::rados_conf_read_file(handle.rados, conf_ptr) };
        if ret < 0 {
            return Err(fail(ret, &handle));
        }
        // SAFETY: as above; NULL means the CEPH_ARGS variable.
        let ret = unsafe { raw::rados_conf_parse_env(handle.rados, ptr::null()) };
        if ret < 0 {
            return Err(fail(ret, &handle));
        }
        let timeout = spec
            .connect_timeout_value()
            .map(|t| cstring("timeout", format!("{}", t.as_secs_f64()).as_bytes()))
            .transpose()?;
        let settings = [
            (c"keyring", keyring.as_deref()),
            (c"client_mount_timeout", timeout.as_deref()),
            // A transfer reads each byte once and writes it once: librbd's cache would only
            // copy it again and hold up to rbd_cache_size per image.
            (c"rbd_cache", Some(c"false")),
            // Our buffers stay untouched until their write completes, so librbd may send them
            // as they are instead of copying each one first.
            (c"rbd_disable_zero_copy_writes", Some(c"false")),
        ];
        for (key, value) in settings {
            let Some(value) = value else { continue };
            // SAFETY: both strings are NUL-terminated and outlive the call.
            let ret = unsafe { raw::rados_conf_set(handle.rados, key.as_ptr(), value.as_ptr()) };
            if ret < 0 {
                return Err(fail(ret, &handle));
            }
        }
        // SAFETY: the handle is configured and not yet connected.
        let ret = unsafe { raw::rados_connect(handle.rados) };
        if ret < 0 {
            return Err(fail(ret, &handle));
        }
        Ok(Cluster {
            handle: Arc::new(handle),
        })
    }

    /// `cluster <conf> as client.<id>`, for messages.
    pub fn label(&self) -> &str {
        &self.handle.label
    }

    /// An I/O context on `pool`, in `namespace` if given.
    pub fn pool(&self, pool: &str, namespace: Option<&str>) -> Result<Pool> {
        let c_pool = cstring("pool name", pool.as_bytes())?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out pointer.
        let ret = unsafe { raw::rados_ioctx_create(self.handle.rados, c_pool.as_ptr(), &mut io) };
        if ret == -libc::ENOENT {
            return Err(Error::PoolNotFound {
                pool: pool.to_owned(),
                cluster: self.label().to_owned(),
            });
        }
        if ret < 0 {
            return Err(Error::rbd(
                "open pool",
                format!("{pool} on {}", self.label()),
                ret.into(),
            ));
        }
        let owned = PoolHandle {
            io,
            _cluster: self.clone(),
        };
        if let Some(ns) = namespace {
            let c_ns = cstring("namespace", ns.as_bytes())?;
            // SAFETY: `io` is valid and not yet shared with any other thread.
            unsafe { raw::rados_ioctx_set_namespace(owned.io, c_ns.as_ptr()) };
        }
        Ok(Pool {
            handle: Arc::new(owned),
            name: match namespace {
                Some(ns) => format!("{pool}/{ns}"),
                None => pool.to_owned(),
            },
        })
    }
}

struct PoolHandle {
    io: rados_ioctx_t,
    // The ioctx must not outlive its cluster connection.
    _cluster: Cluster,
}

// SAFETY: librados I/O contexts may be used from several threads once configured; the
// namespace is set before the handle is shared and never changed afterwards.
unsafe impl Send for PoolHandle {}
// SAFETY: as above.
unsafe impl Sync for PoolHandle {}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // SAFETY: `io` came from rados_ioctx_create and is destroyed exactly once, here.
        unsafe { raw::rados_ioctx_destroy(self.io) }
    }
}

/// An I/O context on a pool (and namespace) of a [`Cluster`]. Cloning is cheap.
#[derive(Clone)]
pub struct Pool {
    handle: Arc<PoolHandle>,
    name: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("pool", &self.name)
            .field("cluster", &self.handle._cluster.label())
            .finish()
    }
}

impl Pool {
    pub(crate) fn raw(&self) -> rados_ioctx_t {
        self.handle.io
    }

    /// `pool[/namespace]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster this pool is on.
    pub fn cluster(&self) -> &Cluster {
        &self.handle._cluster
    }
}
