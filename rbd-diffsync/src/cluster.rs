//! Connections to a cluster and I/O contexts on its pools.
//!
//! The raw librados calls come from the `ceph` crate; the owners are this crate's own, because
//! `ceph::ceph::connect_to_ceph` takes neither a keyring nor librados' default conf search, and
//! its `config_set` refuses to run on an unconnected handle.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use ceph::rados as raw;
use libc::c_char;

use crate::error::{code_text, errno_of, Error, Result};
use crate::spec::ClusterSpec;
use crate::sys::{self, rados_ioctx_t, rados_t};

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
        // SAFETY: `rados` came from rados_create2 and is shut down exactly once, here.
        unsafe { raw::rados_shutdown(self.rados) }
    }
}

/// A connection to one cluster, shared by the images opened through it. Cloning is cheap.
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
    CString::new(s).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}

/// The options the library sets for itself, before `CEPH_ARGS` and the spec's own: see
/// [`ClusterSpec`].
const LIBRARY_DEFAULTS: [(&CStr, &CStr); 1] = [(c"rbd_cache", c"false")];

impl Cluster {
    /// Connects as the spec says (see [`ClusterSpec`] for what fills in what it leaves unset).
    pub fn connect(spec: &ClusterSpec) -> Result<Cluster> {
        let resolved = spec.resolve();
        let label = resolved.to_string();
        let fail = |what: &str, ret: i32| {
            let errno = errno_of(ret.into());
            Error::from_errno(
                errno,
                format!("cannot connect to {label}: {what}{}", code_text(errno)),
            )
        };
        let name = cstring("client name", resolved.name.as_bytes())?;
        let cluster_name = cstring("cluster name", resolved.cluster_name.as_bytes())?;
        let conf = resolved
            .conf
            .as_ref()
            .map(|p| cstring("conf path", p.as_os_str().as_bytes()))
            .transpose()?;
        let mut rados: rados_t = ptr::null_mut();
        // SAFETY: `rados` is a valid out pointer and both names are NUL-terminated.
        let ret =
            unsafe { raw::rados_create2(&mut rados, cluster_name.as_ptr(), name.as_ptr(), 0) };
        if ret < 0 {
            return Err(fail("invalid client or cluster name: ", ret));
        }
        // From here on, dropping `handle` shuts the half-made connection down.
        let handle = Handle {
            rados,
            label: label.clone(),
        };
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: the handle is created and not connected; NULL asks for the default search.
        let ret = unsafe { raw::rados_conf_read_file(handle.rados, conf_ptr) };
        if ret < 0 {
            return Err(fail("cannot read its configuration: ", ret));
        }
        for (key, value) in LIBRARY_DEFAULTS {
            set(&handle, key, value).map_err(|ret| fail("", ret))?;
        }
        // SAFETY: as above; NULL means the CEPH_ARGS variable.
        let ret = unsafe { raw::rados_conf_parse_env(handle.rados, ptr::null()) };
        if ret < 0 {
            return Err(fail("CEPH_ARGS: ", ret));
        }
        let timeout = spec
            .connect_timeout_value()
            .map(|t| format!("{}", t.as_secs_f64()));
        let named = [
            (
                "keyring",
                spec.keyring_path().map(|p| p.as_os_str().as_bytes()),
            ),
            ("mon_host", spec.mon_host_value().map(str::as_bytes)),
            (
                "client_mount_timeout",
                timeout.as_deref().map(str::as_bytes),
            ),
        ];
        let options = spec
            .options()
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        for (key, value) in named.into_iter().chain(options) {
            let Some(value) = value else { continue };
            let c_key = cstring("option name", key.as_bytes())?;
            let c_value = cstring("option value", value)?;
            set(&handle, &c_key, &c_value).map_err(|ret| {
                let errno = errno_of(ret.into());
                Error::from_errno(
                    errno,
                    format!(
                        "cannot set option {key:?} for {label}: {}",
                        code_text(errno)
                    ),
                )
            })?;
        }
        // SAFETY: the handle is configured and not yet connected.
        let ret = unsafe { raw::rados_connect(handle.rados) };
        if ret < 0 {
            return Err(fail("", ret));
        }
        Ok(Cluster {
            handle: Arc::new(handle),
        })
    }

    /// `cluster <conf> as client.<id>`, for messages.
    pub fn label(&self) -> &str {
        &self.handle.label
    }

    /// The value of a configuration option.
    pub fn config(&self, key: &str) -> Result<String> {
        let c_key = cstring("option name", key.as_bytes())?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: the buffer is valid for its length; librados NUL-terminates within it.
        let ret = unsafe {
            raw::rados_conf_get(
                self.handle.rados,
                c_key.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if ret < 0 {
            return Err(Error::rbd(
                "read option",
                &format!("{key} of {}", self.label()),
                ret.into(),
            ));
        }
        Ok(CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> Result<String> {
        let mut buf = [0u8; 64];
        // SAFETY: the buffer is valid for its length; librados NUL-terminates within it.
        let ret = unsafe {
            raw::rados_cluster_fsid(self.handle.rados, buf.as_mut_ptr().cast(), buf.len())
        };
        if ret < 0 {
            return Err(Error::rbd("read fsid", self.label(), ret.into()));
        }
        Ok(CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default())
    }

    /// This client's address as the cluster sees it (`ip:port/nonce`), which is how lock
    /// owners are named.
    pub fn address(&self) -> Result<String> {
        let mut addrs: *mut c_char = ptr::null_mut();
        // SAFETY: the cluster is connected; `addrs` is an out pointer freed below.
        let ret = unsafe { sys::rados_getaddrs(self.handle.rados, &mut addrs) };
        if ret < 0 || addrs.is_null() {
            return Err(Error::rbd(
                "read client address",
                self.label(),
                ret.min(-1).into(),
            ));
        }
        // SAFETY: librados gave a NUL-terminated string, freed exactly once with its own call.
        let addr = unsafe {
            let addr = CStr::from_ptr(addrs).to_string_lossy().into_owned();
            raw::rados_buffer_free(addrs);
            addr
        };
        Ok(addr)
    }

    /// An I/O context on `pool`, in `namespace` if given.
    pub fn pool(&self, pool: &str, namespace: Option<&str>) -> Result<Pool> {
        let c_pool = cstring("pool name", pool.as_bytes())?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out pointer.
        let ret = unsafe { raw::rados_ioctx_create(self.handle.rados, c_pool.as_ptr(), &mut io) };
        if ret == -libc::ENOENT {
            return Err(Error::from_errno(
                libc::ENOENT,
                format!("pool {pool:?} does not exist on {}", self.label()),
            ));
        }
        if ret < 0 {
            return Err(Error::rbd(
                "open pool",
                &format!("{pool} on {}", self.label()),
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
            pool: pool.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }
}

fn set(handle: &Handle, key: &CStr, value: &CStr) -> std::result::Result<(), i32> {
    // SAFETY: both strings are NUL-terminated and outlive the call; the handle is unconnected.
    let ret = unsafe { raw::rados_conf_set(handle.rados, key.as_ptr(), value.as_ptr()) };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(())
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
    pool: String,
    namespace: Option<String>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .field("cluster", &self.handle._cluster.label())
            .finish()
    }
}

impl Pool {
    pub(crate) fn raw(&self) -> rados_ioctx_t {
        self.handle.io
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.pool
    }

    /// The namespace, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The pool's id.
    pub fn id(&self) -> i64 {
        // SAFETY: the ioctx is alive.
        unsafe { raw::rados_ioctx_get_id(self.handle.io) }
    }

    /// Sends an empty notification to the watchers of `object` and returns those that did not
    /// acknowledge it within `timeout`, as (client id, watch cookie).
    pub(crate) fn unanswered(&self, object: &str, timeout: Duration) -> Result<Vec<(u64, u64)>> {
        let c_object = cstring("object name", object.as_bytes())?;
        let (mut reply, mut reply_len): (*mut c_char, usize) = (ptr::null_mut(), 0);
        let empty = [0 as c_char; 1];
        let timeout_ms = timeout.as_millis().try_into().unwrap_or(u64::MAX);
        // SAFETY: the ioctx is alive; the name is NUL-terminated; an empty payload; `reply`
        // receives a buffer freed below.
        let ret = unsafe {
            raw::rados_notify2(
                self.handle.io,
                c_object.as_ptr(),
                empty.as_ptr(),
                0,
                timeout_ms,
                &mut reply,
                &mut reply_len,
            )
        };
        // ETIMEDOUT: some watcher did not answer, which the reply tells.
        if ret < 0 && ret != -libc::ETIMEDOUT {
            return Err(Error::rbd("notify", object, ret.into()));
        }
        if reply.is_null() {
            return Err(Error::rbd("notify", object, (-libc::EIO).into()));
        }
        let (mut acks, mut nr_acks) = (ptr::null_mut(), 0);
        let (mut timeouts, mut nr_timeouts) = (ptr::null_mut(), 0);
        // SAFETY: `reply` holds `reply_len` bytes from librados; the out pointers are valid,
        // and what they receive is freed with the matching call below.
        let unanswered = unsafe {
            let ret = sys::rados_decode_notify_response(
                reply,
                reply_len,
                &mut acks,
                &mut nr_acks,
                &mut timeouts,
                &mut nr_timeouts,
            );
            raw::rados_buffer_free(reply);
            if ret < 0 {
                return Err(Error::rbd("decode the notify reply of", object, ret.into()));
            }
            let list: Vec<(u64, u64)> = if timeouts.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(timeouts, nr_timeouts)
                    .iter()
                    .map(|t| (t.notifier_id, t.cookie))
                    .collect()
            };
            sys::rados_free_notify_response(acks, nr_acks, timeouts);
            list
        };
        Ok(unanswered)
    }
}
