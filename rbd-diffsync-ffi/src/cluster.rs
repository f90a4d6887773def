//! `rbd_diffsync_cluster`: how to reach a cluster (ceph.conf, client, keyring, options).

use std::ffi::{c_char, c_int};
use std::sync::Mutex;
use std::time::Duration;

use rbd_diffsync::ClusterSpec;

use crate::guard::{
    free_handle, lock, new_handle, path_arg, str_arg, with_handle, Failure, Handle, LastError,
};

/// How to reach a cluster: what the rbd CLI's `-c`, `--id`, `-n`, `--cluster`, `-k`, `-m` and
/// `--<option> <value>` say. Unset, as the rbd CLI with no options: `CEPH_ARGS`, then
/// /etc/ceph/ceph.conf, as `client.admin`. Only settings: nothing connects until a transfer
/// runs.
#[derive(Debug, Default)]
pub struct rbd_diffsync_cluster {
    pub(crate) spec: Mutex<ClusterSpec>,
    error: LastError,
}

impl Handle for rbd_diffsync_cluster {
    fn last_error(&self) -> &LastError {
        &self.error
    }
}

/// Reads an argument with `read` and applies it to the settings of `cluster` with `apply`.
///
/// # Safety
///
/// `cluster` is NULL or a live handle; `read` reads only live pointers.
unsafe fn set<T>(
    cluster: *const rbd_diffsync_cluster,
    read: impl FnOnce() -> Result<T, Failure>,
    apply: impl FnOnce(ClusterSpec, T) -> ClusterSpec,
) -> c_int {
    // SAFETY: the caller's promise.
    unsafe {
        with_handle(cluster, |c| {
            let value = read()?;
            let mut spec = lock(&c.spec);
            *spec = apply(std::mem::take(&mut *spec), value);
            Ok(())
        })
    }
}

/// Makes cluster settings with nothing set into `*out`, to free with
/// `rbd_diffsync_cluster_free`.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_new(out: *mut *mut rbd_diffsync_cluster) -> c_int {
    // SAFETY: the caller passes NULL or a pointer valid for a write.
    unsafe { new_handle(out, rbd_diffsync_cluster::default) }
}

/// Frees cluster settings. NULL is a no-op. Transfers given them keep their own copy.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_free(cluster: *mut rbd_diffsync_cluster) {
    // SAFETY: the caller passes NULL or a handle of this library no other call uses.
    unsafe { free_handle(cluster) }
}

/// Reads this ceph.conf instead of searching for one (`rbd -c`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_conf(
    cluster: *mut rbd_diffsync_cluster,
    path: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set(cluster, || path_arg(path, "path"), |s, v| s.conf(v)) }
}

/// Connects as `client.<id>` (`rbd --id`); a leading `client.` is accepted.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_id(
    cluster: *mut rbd_diffsync_cluster,
    id: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set(cluster, || str_arg(id, "id"), |s, v| s.id(v)) }
}

/// Connects as this entity, `type.id` such as `client.backup` (`rbd -n`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_name(
    cluster: *mut rbd_diffsync_cluster,
    name: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set(cluster, || str_arg(name, "name"), |s, v| s.name(v)) }
}

/// The cluster's name (`rbd --cluster`), which selects /etc/ceph/<name>.conf when no
/// ceph.conf is set; `ceph` by default.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_cluster_name(
    cluster: *mut rbd_diffsync_cluster,
    cluster_name: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        set(
            cluster,
            || str_arg(cluster_name, "cluster_name"),
            |s, v| s.cluster_name(v),
        )
    }
}

/// Uses this keyring instead of the one ceph.conf names (`rbd -k`).
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_keyring(
    cluster: *mut rbd_diffsync_cluster,
    path: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe { set(cluster, || path_arg(path, "path"), |s, v| s.keyring(v)) }
}

/// Connects to these monitors (`rbd -m`), a comma-separated list of `host[:port]`, instead of
/// those ceph.conf names.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_mon_host(
    cluster: *mut rbd_diffsync_cluster,
    addresses: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        set(
            cluster,
            || str_arg(addresses, "addresses"),
            |s, v| s.mon_host(v),
        )
    }
}

/// Gives up connecting after this many milliseconds (librados' `client_mount_timeout`):
/// `RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS` unless ceph.conf sets another value than librados'
/// own default (300 s). An unreachable monitor fails then, with `-ETIMEDOUT`; a key the
/// monitors refuse fails within seconds. 0 is refused (`-EINVAL`) by the run that uses it.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_connect_timeout_ms(
    cluster: *mut rbd_diffsync_cluster,
    milliseconds: u64,
) -> c_int {
    let timeout = Duration::from_millis(milliseconds);
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set(cluster, || Ok(timeout), |s, t| s.connect_timeout(t)) }
}

/// Fails an operation that the cluster has not answered after this many milliseconds with
/// `-ETIMEDOUT`, instead of waiting for a stalled OSD or monitor for ever (librados'
/// `rados_osd_op_timeout` and `rados_mon_op_timeout`): `RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS`
/// unless ceph.conf sets them; 0 waits for ever. A transfer that times out leaves no end
/// snapshot, and running it again resumes it.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_op_timeout_ms(
    cluster: *mut rbd_diffsync_cluster,
    milliseconds: u64,
) -> c_int {
    let timeout = Duration::from_millis(milliseconds);
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { set(cluster, || Ok(timeout), |s, t| s.op_timeout(t)) }
}

/// Sets a librados or librbd option (`rbd --<key> <value>`), such as `rbd_default_pool` to
/// `volumes`. Later settings of the same key win.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_set_option(
    cluster: *mut rbd_diffsync_cluster,
    key: *const c_char,
    value: *const c_char,
) -> c_int {
    // SAFETY: the caller passes NULL or live pointers (conventions in the header).
    unsafe {
        set(
            cluster,
            || Ok((str_arg(key, "key")?, str_arg(value, "value")?)),
            |s, (k, v)| s.option(k, v),
        )
    }
}

/// The message of the last call on `cluster` that failed (other than with a NULL handle), or
/// "" if none did. Owned by `cluster`: valid until its next failing call or its free.
#[no_mangle]
pub unsafe extern "C" fn rbd_diffsync_cluster_last_error(
    cluster: *const rbd_diffsync_cluster,
) -> *const c_char {
    // SAFETY: the caller passes NULL or a live handle.
    unsafe { crate::last_error_of(cluster) }
}
