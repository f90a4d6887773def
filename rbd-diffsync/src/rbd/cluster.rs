//! Connections to a cluster and I/O contexts on its pools, over the librados calls declared in
//! [`super::sys`].

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use libc::c_char;

/// librados' equality comparison of an omap value.
const LIBRADOS_CMPXATTR_OP_EQ: u8 = 1;
/// librados' flag for a write that a full pool refuses instead of holding.
const LIBRADOS_OPERATION_FULL_TRY: i32 = 64;

use crate::error::{code_text, errno_of, Error, ErrorKind, Result};
use crate::locks::lock;
use crate::rbd::sys::{self, rados_ioctx_t, rados_t};
use crate::spec::{
    ClusterSpec, ImageSpec, ResolvedSpec, DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT,
};

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
        unsafe { sys::rados_shutdown(self.rados) }
    }
}

/// How long a connection may take before a probe looks for a refused key.
const AUTH_PROBE_AFTER: Duration = Duration::from_secs(2);

/// What librados logs when the monitors refuse a client's key.
const AUTH_REFUSED: &str = "handle_auth_bad_method";

/// A second connection with the same settings as a slow one, logging to a file of its own,
/// in which a refusal of its key shows. The file lies in a directory made for it alone
/// (`mkdtemp`, mode 0700): librados opens its log with `O_CREAT | O_APPEND`, which would
/// follow a link planted at a predictable name in the shared temporary directory. Its
/// thread removes both when it gives up.
struct AuthProbe {
    dir: PathBuf,
    log: PathBuf,
    /// The probe's thread, which the tests wait for; otherwise left to end on its own.
    #[cfg(test)]
    thread: Option<thread::JoinHandle<()>>,
}

/// The name of the probe's log inside its directory.
const PROBE_LOG: &str = "connect.log";

/// A new directory in the temporary directory, readable and writable by this user only
/// (`mkdtemp`): `<tmp>/<prefix>XXXXXX`.
fn private_dir(prefix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
    let mut bytes = CString::new(template.into_os_string().into_vec())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .into_bytes_with_nul();
    // SAFETY: `bytes` is a NUL-terminated template ending in XXXXXX, which mkdtemp rewrites in
    // place without changing its length.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    bytes.pop();
    Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// Removes the probe's log and its directory, whatever is left of them.
fn remove_probe_files(dir: &std::path::Path, log: &std::path::Path) {
    let _ = std::fs::remove_file(log);
    let _ = std::fs::remove_dir(dir);
}

impl AuthProbe {
    fn start(spec: &ClusterSpec) -> Option<AuthProbe> {
        let dir = private_dir("rbd-diffsync-probe-").ok()?;
        let log = dir.join(PROBE_LOG);
        let started = CString::new(log.as_os_str().as_bytes())
            .ok()
            .and_then(|c_log| AuthProbe::spawn(spec, c_log, &dir, &log));
        let Some(thread) = started else {
            remove_probe_files(&dir, &log);
            return None;
        };
        #[cfg(not(test))]
        drop(thread);
        Some(AuthProbe {
            dir,
            log,
            #[cfg(test)]
            thread: Some(thread),
        })
    }

    /// Configures the probe's connection, logging to `c_log`, and starts it on a thread of
    /// its own, which removes `dir` and `log` once the connection has given up.
    fn spawn(
        spec: &ClusterSpec,
        c_log: CString,
        dir: &std::path::Path,
        log: &std::path::Path,
    ) -> Option<thread::JoinHandle<()>> {
        let extra: [(&CStr, &CStr); 4] = [
            (c"log_file", &c_log),
            (c"log_to_file", c"true"),
            (c"log_to_stderr", c"false"),
            (c"err_to_stderr", c"false"),
        ];
        let handle = Cluster::configure(spec, &extra).ok()?;
        let (dir, log) = (dir.to_owned(), log.to_owned());
        thread::Builder::new()
            .name("rbd-diffsync-probe".into())
            .spawn(move || {
                // SAFETY: the handle is configured and not yet connected.
                unsafe { sys::rados_connect(handle.rados) };
                drop(handle);
                remove_probe_files(&dir, &log);
            })
            .ok()
    }

    fn refused(&self) -> bool {
        std::fs::read(&self.log)
            .map(|log| {
                log.windows(AUTH_REFUSED.len())
                    .any(|w| w == AUTH_REFUSED.as_bytes())
            })
            .unwrap_or(false)
    }
}

impl Drop for AuthProbe {
    fn drop(&mut self) {
        // The probe's thread may still write to the log; it ends with its connection, and
        // removes what is left then (a log librados opens again after this).
        remove_probe_files(&self.dir, &self.log);
    }
}

/// What a connection knew of where it was to find its key and its monitors, for the message
/// of a failure.
struct ConnectSettings {
    /// The `mon_host` option.
    mon_host: String,
    /// The `client_mount_timeout` option.
    timeout: String,
    /// The `keyring` option: the paths librados looks for a keyring at, the first found
    /// being used.
    keyring: String,
}

/// The paths of a `keyring` option, as librados splits them (`,`, `;`, `=`, spaces, tabs).
fn keyring_paths(keyring: &str) -> Vec<&str> {
    keyring
        .split([',', ';', '=', ' ', '\t'])
        .filter(|p| !p.is_empty())
        .collect()
}

/// Which keyring is missing, when none of the paths of the `keyring` option exists: librados
/// then fails to connect with `ENOENT` and says which only in its log.
fn missing_keyring(keyring: &str) -> Option<String> {
    let paths = keyring_paths(keyring);
    if paths.is_empty() || paths.iter().any(|p| std::path::Path::new(p).exists()) {
        return None;
    }
    let paths = paths.join(", ");
    Some(format!(
        "no keyring at {paths} (check the keyring path: --keyring, or the keyring option of \
         CEPH_ARGS or ceph.conf)"
    ))
}

/// Why a connection failed; for a timeout, which monitors did not answer; for a missing
/// keyring, where it was looked for.
fn connect_error(label: &str, settings: &ConnectSettings, ret: i32) -> Error {
    let ConnectSettings {
        mon_host,
        timeout,
        keyring,
    } = settings;
    let errno = errno_of(ret.into());
    let why = if errno == libc::ETIMEDOUT {
        let monitors = if mon_host.is_empty() {
            "its monitors".to_owned()
        } else {
            format!("its monitors ({mon_host})")
        };
        format!(
            "{}: {monitors} did not answer within the connect timeout ({} s): check that \
             they run and that the addresses are right",
            code_text(errno),
            seconds(timeout).map_or_else(|| timeout.to_owned(), |s| s.to_string())
        )
    } else if let Some(missing) = missing_keyring(keyring).filter(|_| errno == libc::ENOENT) {
        format!("ENOENT: {missing}")
    } else {
        code_text(errno)
    };
    Error::from_errno(errno, format!("cannot connect to {label}: {why}"))
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

/// Timeouts the library sets where ceph.conf leaves librados' default: (option, librados'
/// default in seconds, ours).
fn timeout_defaults() -> [(&'static CStr, f64, Duration); 3] {
    [
        (c"client_mount_timeout", 300.0, DEFAULT_CONNECT_TIMEOUT),
        (c"rados_osd_op_timeout", 0.0, DEFAULT_OP_TIMEOUT),
        (c"rados_mon_op_timeout", 0.0, DEFAULT_OP_TIMEOUT),
    ]
}

/// Requests in flight for librbd's management operations, diff_iterate's object listing
/// among them, where ceph.conf leaves librbd's default (10): a diff scan is one request per
/// object, so at 3 ms of round trip the default makes a 2 GiB image's scan take 0.24 s and 128
/// 0.045 s. (librbd's default, ours.)
const MANAGEMENT_OPS_DEFAULT: (&CStr, &str, &CStr) =
    (c"rbd_concurrent_management_ops", "10", c"128");

/// A duration option's value in seconds (librados prints them as `300` or `0.000000`).
fn seconds(value: &str) -> Option<f64> {
    value.trim().trim_end_matches('s').parse().ok()
}

/// The error of a failed configuration call returning `ret`, for the cluster named `label`:
/// `what` went wrong.
fn failure(label: &str, what: &str, ret: i32) -> Error {
    let errno = errno_of(ret.into());
    Error::from_errno(
        errno,
        format!("cannot connect to {label}: {what}{}", code_text(errno)),
    )
}

/// Sets the options the library sets for itself on `handle`, where ceph.conf leaves their
/// defaults: [`LIBRARY_DEFAULTS`], [`timeout_defaults`] and [`MANAGEMENT_OPS_DEFAULT`]. `fail`
/// makes the error of a refused one.
fn set_library_defaults(handle: &Handle, fail: impl Fn(&str, i32) -> Error) -> Result<()> {
    for (key, value) in LIBRARY_DEFAULTS {
        set(handle, key, value).map_err(|ret| fail("", ret))?;
    }
    for (key, librados_default, ours) in timeout_defaults() {
        if get(handle, key).is_some_and(|v| seconds(&v) == Some(librados_default)) {
            let value = cstring("option value", ours.as_secs_f64().to_string().as_bytes())?;
            set(handle, key, &value).map_err(|ret| fail("", ret))?;
        }
    }
    let (key, librbd_default, ours) = MANAGEMENT_OPS_DEFAULT;
    if get(handle, key).is_some_and(|v| v.trim() == librbd_default) {
        set(handle, key, ours).map_err(|ret| fail("", ret))?;
    }
    Ok(())
}

/// Sets on `handle` what the spec sets: its keyring, monitors and timeouts, then its own
/// options. A refused one is an error naming it, for the cluster named `label`.
fn set_spec_options(handle: &Handle, spec: &ClusterSpec, label: &str) -> Result<()> {
    let secs = |t: Duration| t.as_secs_f64().to_string();
    let timeout = spec.connect_timeout_value().map(secs);
    let op_timeout = spec.op_timeout_value().map(secs);
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
        (
            "rados_osd_op_timeout",
            op_timeout.as_deref().map(str::as_bytes),
        ),
        (
            "rados_mon_op_timeout",
            op_timeout.as_deref().map(str::as_bytes),
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
        set(handle, &c_key, &c_value).map_err(|ret| {
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
    Ok(())
}

impl Cluster {
    /// A handle configured as the spec says, with `extra` options set last, not connected.
    fn configure(spec: &ClusterSpec, extra: &[(&CStr, &CStr)]) -> Result<Handle> {
        let resolved = spec.resolve();
        let label = resolved.to_string();
        let handle = Cluster::create(&resolved, &label)?;
        let fail = |what: &str, ret: i32| failure(&label, what, ret);
        set_library_defaults(&handle, fail)?;
        // SAFETY: the handle is created and not connected; NULL means the CEPH_ARGS variable.
        let ret = unsafe { sys::rados_conf_parse_env(handle.rados, ptr::null()) };
        if ret < 0 {
            return Err(fail("CEPH_ARGS: ", ret));
        }
        set_spec_options(&handle, spec, &label)?;
        for (key, value) in extra {
            set(&handle, key, value).map_err(|ret| fail("", ret))?;
        }
        Ok(handle)
    }

    /// A handle for the `resolved` spec (named `label`), its configuration file read.
    fn create(resolved: &ResolvedSpec, label: &str) -> Result<Handle> {
        let fail = |what: &str, ret: i32| failure(label, what, ret);
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
            unsafe { sys::rados_create2(&mut rados, cluster_name.as_ptr(), name.as_ptr(), 0) };
        if ret < 0 {
            return Err(fail("invalid client or cluster name: ", ret));
        }
        // From here on, dropping `handle` shuts the half-made connection down.
        let handle = Handle {
            rados,
            label: label.to_owned(),
        };
        let conf_ptr = conf.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: the handle is created and not connected; NULL asks for the default search.
        let ret = unsafe { sys::rados_conf_read_file(handle.rados, conf_ptr) };
        if ret < 0 {
            return Err(fail("cannot read its configuration: ", ret));
        }
        Ok(handle)
    }

    /// Connects as the spec says (see [`ClusterSpec`] for what fills in what it leaves unset).
    ///
    /// librados takes a key the monitors refuse (a wrong key, an unknown client) for a
    /// connection problem and retries until the connect timeout, then reports `ETIMEDOUT`;
    /// only its log says why. So a connection that takes longer than [`AUTH_PROBE_AFTER`] is
    /// probed by a second one with the same settings logging to a file of ours, and a refusal
    /// found there ends the wait at once as [`ErrorKind::PermissionDenied`] (`EACCES`).
    pub fn connect(spec: &ClusterSpec) -> Result<Cluster> {
        let handle = Cluster::configure(spec, &[])?;
        let label = handle.label.clone();
        let settings = ConnectSettings {
            mon_host: get(&handle, c"mon_host").unwrap_or_default(),
            timeout: get(&handle, c"client_mount_timeout").unwrap_or_default(),
            keyring: get(&handle, c"keyring").unwrap_or_default(),
        };
        let (tx, rx) = mpsc::channel();
        let connecting = thread::Builder::new()
            .name("rbd-diffsync-connect".into())
            .spawn(move || {
                // SAFETY: the handle is configured and not yet connected.
                let ret = unsafe { sys::rados_connect(handle.rados) };
                // A connection given up on is shut down when its handle drops here.
                let _ = tx.send((ret, handle));
            })
            .map_err(|e| {
                Error::from_errno(libc::EAGAIN, format!("cannot connect to {label}: {e}"))
            })?;
        drop(connecting);
        let mut probe: Option<AuthProbe> = None;
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((ret, handle)) => {
                    if ret < 0 {
                        return Err(connect_error(&label, &settings, ret));
                    }
                    return Ok(Cluster {
                        handle: Arc::new(handle),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(connect_error(&label, &settings, -libc::EIO));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if probe.is_none() && started.elapsed() >= AUTH_PROBE_AFTER {
                probe = AuthProbe::start(spec);
            }
            if probe.as_ref().is_some_and(AuthProbe::refused) {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    libc::EACCES,
                    format!(
                        "cannot connect to {label}: the monitors refuse its key (a wrong key, \
                         or no such client on that cluster); check the client name and its \
                         keyring"
                    ),
                ));
            }
        }
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
            sys::rados_conf_get(
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

    /// Fences off the client at `address`: blocklists it (as `ceph osd blocklist add`, for an
    /// hour), waits for the OSD map that says so, and checks that the map lists it: its
    /// watches and requests are gone from then on, and an OSD refuses whatever it sends.
    pub(crate) fn fence(&self, address: &str) -> Result<()> {
        let c_address = cstring("client address", address.as_bytes())?;
        // SAFETY: the cluster is connected; librados only reads the NUL-terminated address.
        let ret = unsafe {
            sys::rados_blocklist_add(self.handle.rados, c_address.as_ptr().cast_mut(), 3600)
        };
        if ret < 0 {
            return Err(Error::rbd("blocklist", address, ret.into()));
        }
        // SAFETY: the cluster is connected.
        let ret = unsafe { sys::rados_wait_for_latest_osdmap(self.handle.rados) };
        if ret < 0 {
            return Err(Error::rbd(
                "wait for the OSD map of",
                self.label(),
                ret.into(),
            ));
        }
        let dump = self.mon_command(r#"{"prefix": "osd dump", "format": "json"}"#)?;
        let listed = serde_json::from_slice::<serde_json::Value>(&dump)
            .ok()
            .and_then(|map| {
                let list = map.get("blocklist").or_else(|| map.get("blacklist"))?;
                Some(list.as_object()?.contains_key(address))
            });
        match listed {
            Some(true) => Ok(()),
            _ => Err(Error::new(
                ErrorKind::Other,
                libc::EIO,
                format!(
                    "the client at {address} was blocklisted on {}, but the OSD map does not \
                     list it: it is not known to be fenced off",
                    self.label()
                ),
            )),
        }
    }

    /// Runs a monitor command (JSON) and returns its output.
    pub(crate) fn mon_command(&self, command: &str) -> Result<Vec<u8>> {
        let c_command = cstring("monitor command", command.as_bytes())?;
        let mut commands = [c_command.as_ptr()];
        let (mut out, mut out_len) = (ptr::null_mut(), 0);
        let (mut status, mut status_len) = (ptr::null_mut(), 0);
        // SAFETY: the cluster is connected; one NUL-terminated command; no input; the out
        // buffers are freed below with librados' own call.
        let ret = unsafe {
            sys::rados_mon_command(
                self.handle.rados,
                commands.as_mut_ptr(),
                1,
                ptr::null(),
                0,
                &mut out,
                &mut out_len,
                &mut status,
                &mut status_len,
            )
        };
        // SAFETY: `out` holds `out_len` bytes when not NULL; both buffers are librados's.
        let output = unsafe {
            let output = if out.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(out.cast::<u8>(), out_len).to_vec()
            };
            if !out.is_null() {
                sys::rados_buffer_free(out);
            }
            if !status.is_null() {
                sys::rados_buffer_free(status);
            }
            output
        };
        if ret < 0 {
            return Err(Error::rbd("monitor command", self.label(), ret.into()));
        }
        Ok(output)
    }

    /// Why `pool` takes no writes, if it is marked full: its quota, or the cluster's space.
    pub(crate) fn pool_full(&self, pool: &str) -> Option<String> {
        let json = |command: serde_json::Value| -> Option<serde_json::Value> {
            serde_json::from_slice(&self.mon_command(&command.to_string()).ok()?).ok()
        };
        let pools = json(serde_json::json!({
            "prefix": "osd pool ls", "detail": "detail", "format": "json"
        }))?;
        let flags = pools.as_array()?.iter().find(|p| p["pool_name"] == pool)?["flags_names"]
            .as_str()?
            .to_owned();
        let flags: Vec<&str> = flags.split(',').collect();
        if flags.contains(&"full_quota") {
            let quota = json(serde_json::json!({
                "prefix": "osd pool get-quota", "pool": pool, "format": "json"
            }));
            let field = |key: &str| quota.as_ref().and_then(|q| q[key].as_u64()).unwrap_or(0);
            let limit = match (field("quota_max_bytes"), field("quota_max_objects")) {
                (0, objects) => format!("{objects} objects"),
                (bytes, _) => format!("{bytes} bytes"),
            };
            Some(format!(
                "pool {pool} has reached its quota ({limit}; it holds {} bytes in {} objects): \
                 raise it (`ceph osd pool set-quota {pool} max_bytes N`) or free space",
                field("current_num_bytes"),
                field("current_num_objects")
            ))
        } else if flags.contains(&"full") {
            Some(format!(
                "pool {pool} is full (its OSDs have reached their full ratio): free space or \
                 add capacity"
            ))
        } else {
            None
        }
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> Result<String> {
        let mut buf = [0u8; 64];
        // SAFETY: the buffer is valid for its length; librados NUL-terminates within it.
        let ret = unsafe {
            sys::rados_cluster_fsid(self.handle.rados, buf.as_mut_ptr().cast(), buf.len())
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
            sys::rados_buffer_free(addrs);
            addr
        };
        Ok(addr)
    }

    /// An I/O context on `pool`, in `namespace` if given.
    pub fn pool(&self, pool: &str, namespace: Option<&str>) -> Result<Pool> {
        let c_pool = cstring("pool name", pool.as_bytes())?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: the cluster is connected; `io` is a valid out pointer.
        let ret = unsafe { sys::rados_ioctx_create(self.handle.rados, c_pool.as_ptr(), &mut io) };
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
            cluster: self.clone(),
        };
        if let Some(ns) = namespace {
            let c_ns = cstring("namespace", ns.as_bytes())?;
            // SAFETY: `io` is valid and not yet shared with any other thread.
            unsafe { sys::rados_ioctx_set_namespace(owned.io, c_ns.as_ptr()) };
        }
        Ok(Pool {
            handle: Arc::new(owned),
            pool: pool.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    /// Opens the pool of `spec`, with this cluster's `rbd_default_pool` for a spec that names
    /// none; returns the spec with its pool filled in.
    pub(crate) fn pool_of(&self, spec: &ImageSpec) -> Result<(ImageSpec, Pool)> {
        let spec = match spec.pool() {
            Some(_) => spec.clone(),
            None => spec.in_default_pool(&self.config("rbd_default_pool")?),
        };
        let pool = self.pool(spec.pool().unwrap_or_default(), spec.namespace())?;
        Ok((spec, pool))
    }
}

fn set(handle: &Handle, key: &CStr, value: &CStr) -> std::result::Result<(), i32> {
    // SAFETY: both strings are NUL-terminated and outlive the call; the handle is unconnected.
    let ret = unsafe { sys::rados_conf_set(handle.rados, key.as_ptr(), value.as_ptr()) };
    if ret < 0 {
        Err(ret)
    } else {
        Ok(())
    }
}

/// An option's value on a handle being configured, `None` if librados has no such option.
fn get(handle: &Handle, key: &CStr) -> Option<String> {
    // Room for a list of keyring paths.
    let mut buf = vec![0u8; 4096];
    // SAFETY: the key is NUL-terminated; the buffer is valid for its length and librados
    // NUL-terminates within it.
    let ret = unsafe {
        sys::rados_conf_get(
            handle.rados,
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (ret >= 0).then(|| {
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

struct PoolHandle {
    io: rados_ioctx_t,
    // The ioctx must not outlive its cluster connection.
    cluster: Cluster,
}

// SAFETY: librados I/O contexts may be used from several threads once configured; the
// namespace is set before the handle is shared and never changed afterwards.
unsafe impl Send for PoolHandle {}
// SAFETY: as above.
unsafe impl Sync for PoolHandle {}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        // SAFETY: `io` came from rados_ioctx_create and is destroyed exactly once, here.
        unsafe { sys::rados_ioctx_destroy(self.io) }
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
            .field("cluster", &self.handle.cluster.label())
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
        unsafe { sys::rados_ioctx_get_id(self.handle.io) }
    }

    /// The first bytes of `object`, at most `max`; `None` if it does not exist.
    pub(crate) fn read(&self, object: &str, max: usize) -> Result<Option<Vec<u8>>> {
        let c_object = cstring("object name", object.as_bytes())?;
        let mut buf = vec![0u8; max];
        // SAFETY: the ioctx is alive; the name is NUL-terminated; the buffer holds `max` bytes.
        let ret = unsafe {
            sys::rados_read(
                self.handle.io,
                c_object.as_ptr(),
                buf.as_mut_ptr().cast(),
                max,
                0,
            )
        };
        match usize::try_from(ret) {
            Ok(len) => {
                buf.truncate(len);
                Ok(Some(buf))
            }
            Err(_) if ret == -libc::ENOENT => Ok(None),
            Err(_) => Err(Error::rbd("read", object, ret.into())),
        }
    }

    /// The values of `keys` in the omap of `object`, in the order of `keys` (`None` for a
    /// missing key), read in one operation; `None` if the object is missing.
    pub(crate) fn omap_get(
        &self,
        object: &str,
        keys: &[&str],
    ) -> Result<Option<Vec<Option<Vec<u8>>>>> {
        let c_object = cstring("object name", object.as_bytes())?;
        let c_keys = keys
            .iter()
            .map(|k| cstring("omap key", k.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let key_ptrs: Vec<*const c_char> = c_keys.iter().map(|k| k.as_ptr()).collect();
        let mut iter: sys::rados_omap_iter_t = ptr::null_mut();
        let mut step = 0;
        // SAFETY: the op is created, filled, run on the live ioctx and released exactly once;
        // the keys outlive it; the iterator it fills is read, then ended, only if it ran.
        unsafe {
            let op = sys::rados_create_read_op();
            sys::rados_read_op_omap_get_vals_by_keys(
                op,
                key_ptrs.as_ptr(),
                key_ptrs.len(),
                &mut iter,
                &mut step,
            );
            let ret = sys::rados_read_op_operate(op, self.handle.io, c_object.as_ptr(), 0);
            sys::rados_release_read_op(op);
            if ret == -libc::ENOENT {
                return Ok(None);
            }
            if ret < 0 || step < 0 {
                return Err(Error::rbd("read omap of", object, ret.min(step).into()));
            }
            let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
            loop {
                let (mut k, mut v, mut len) = (ptr::null_mut(), ptr::null_mut(), 0);
                if sys::rados_omap_get_next(iter, &mut k, &mut v, &mut len) != 0 || k.is_null() {
                    break;
                }
                let key = CStr::from_ptr(k).to_bytes();
                if let Some(i) = keys.iter().position(|want| want.as_bytes() == key) {
                    values[i] = Some(if v.is_null() {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(v.cast::<u8>(), len).to_vec()
                    });
                }
            }
            sys::rados_omap_get_end(iter);
            Ok(Some(values))
        }
    }

    /// On the existing `object`, in one atomic operation: if the omap value of `guard.0` is
    /// `guard.1` (an empty value for a missing key), sets the `set` pairs and removes the
    /// `remove` keys. `Ok(false)`, changing nothing, if the value differs.
    pub(crate) fn omap_write_if(
        &self,
        object: &str,
        guard: (&str, &str),
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<bool> {
        let c_guard = cstring("omap key", guard.0.as_bytes())?;
        let set_keys = set
            .iter()
            .map(|(k, _)| cstring("omap key", k.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let rm_keys = remove
            .iter()
            .map(|k| cstring("omap key", k.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<*const c_char> = set_keys.iter().map(|k| k.as_ptr()).collect();
        let values: Vec<*const c_char> = set.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let lens: Vec<usize> = set.iter().map(|(_, v)| v.len()).collect();
        let rm: Vec<*const c_char> = rm_keys.iter().map(|k| k.as_ptr()).collect();
        let mut compared = 0;
        // SAFETY: every array and string outlives the op, which `omap_write` runs before
        // returning; `compared` receives the comparison's result.
        let written = self.omap_write(object, "write omap of", |op| unsafe {
            sys::rados_write_op_omap_cmp(
                op,
                c_guard.as_ptr(),
                LIBRADOS_CMPXATTR_OP_EQ,
                guard.1.as_ptr().cast(),
                guard.1.len(),
                &mut compared,
            );
            if !keys.is_empty() {
                sys::rados_write_op_omap_set(
                    op,
                    keys.as_ptr(),
                    values.as_ptr(),
                    lens.as_ptr(),
                    keys.len(),
                );
            }
            if !rm.is_empty() {
                sys::rados_write_op_omap_rm_keys(op, rm.as_ptr(), rm.len());
            }
        });
        match written {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::ECANCELED => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs on the existing `object` a write op that `fill` fills in.
    fn omap_write(
        &self,
        object: &str,
        what: &str,
        fill: impl FnOnce(sys::rados_write_op_t),
    ) -> Result<()> {
        let c_object = cstring("object name", object.as_bytes())?;
        // SAFETY: the op is created, filled, run on the live ioctx and released exactly once;
        // `fill` only adds steps to it.
        let ret = unsafe {
            let op = sys::rados_create_write_op();
            sys::rados_write_op_assert_exists(op);
            fill(op);
            // FULL_TRY: a full pool refuses it at once (EDQUOT, ENOSPC) instead of holding it
            // until the operation timeout.
            let ret = sys::rados_write_op_operate(
                op,
                self.handle.io,
                c_object.as_ptr(),
                ptr::null_mut(),
                LIBRADOS_OPERATION_FULL_TRY,
            );
            sys::rados_release_write_op(op);
            ret
        };
        if ret < 0 {
            return Err(Error::rbd(what, object, ret.into()));
        }
        Ok(())
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
            sys::rados_notify2(
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
            sys::rados_buffer_free(reply);
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

/// What a connection attempt gave, kept for the other transfers of the batch.
type Connected = std::result::Result<Cluster, (ErrorKind, i32, String)>;

/// One connection per cluster: the first transfer that needs one connects, the others of the
/// batch wait for it and share it; a failure is given to each of them, not tried again.
#[derive(Default)]
pub(crate) struct Connections {
    clusters: Mutex<HashMap<ClusterSpec, Arc<Mutex<Option<Connected>>>>>,
}

impl Connections {
    pub(crate) fn get(&self, spec: &ClusterSpec) -> Result<Cluster> {
        let cell = lock(&self.clusters)
            .entry(spec.clone())
            .or_default()
            .clone();
        let mut slot = lock(&cell);
        let connected = slot.get_or_insert_with(|| {
            Cluster::connect(spec).map_err(|e| (e.kind(), e.errno(), e.message().to_owned()))
        });
        match connected {
            Ok(cluster) => Ok(cluster.clone()),
            Err((kind, errno, message)) => Err(Error::new(*kind, *errno, message.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_auth_probe_logs_in_a_private_directory_of_its_own_and_removes_it() {
        // Nothing answers there: the probe's connection hunts for a monitor until its
        // timeout (an empty keyring lets it start).
        let spec = ClusterSpec::new()
            .conf("/dev/null")
            .keyring("/dev/null")
            .mon_host("127.0.0.1:1")
            .connect_timeout(Duration::from_secs(3));
        let mut probes = Vec::new();
        for _ in 0..2 {
            let probe = AuthProbe::start(&spec).expect("a probe starts");
            let meta = std::fs::symlink_metadata(&probe.dir).unwrap();
            assert!(meta.is_dir(), "{}", probe.dir.display());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
            assert_eq!(probe.log, probe.dir.join(PROBE_LOG));
            assert_eq!(probe.dir.parent(), Some(&*std::env::temp_dir()));
            assert!(!probe.refused());
            probes.push(probe);
        }
        assert_ne!(probes[0].dir, probes[1].dir, "a directory for each probe");
        for mut probe in probes {
            let dir = probe.dir.clone();
            let thread = probe.thread.take().unwrap();
            drop(probe);
            thread.join().unwrap();
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
    }

    #[test]
    fn private_directories_are_new_and_closed_to_others() {
        let dir = private_dir("rbd-diffsync-test-").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("rbd-diffsync-test-"));
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn a_missing_keyring_is_named_in_the_error() {
        let settings = |keyring: &str| ConnectSettings {
            mon_host: "127.0.0.1:6789".to_owned(),
            timeout: "30".to_owned(),
            keyring: keyring.to_owned(),
        };
        let missing = "/nonexistent/rbd-diffsync/client.backup.keyring";
        let e = connect_error(
            "cluster c as client.backup",
            &settings(missing),
            -libc::ENOENT,
        );
        assert_eq!((e.kind(), e.errno()), (ErrorKind::NotFound, libc::ENOENT));
        assert!(
            e.to_string().contains(&format!("no keyring at {missing}")),
            "{e}"
        );
        // librados' default search: every path named.
        let list = "/nonexistent/a.keyring,/nonexistent/b.keyring, /nonexistent/keyring";
        let e = connect_error("c", &settings(list), -libc::ENOENT);
        assert!(
            e.to_string().contains(
                "no keyring at /nonexistent/a.keyring, /nonexistent/b.keyring, \
                 /nonexistent/keyring"
            ),
            "{e}"
        );
        // A keyring that exists is not blamed for an ENOENT.
        let e = connect_error("c", &settings("/dev/null"), -libc::ENOENT);
        assert!(!e.to_string().contains("keyring"), "{e}");
        // Nor for another error.
        let e = connect_error("c", &settings(missing), -libc::EACCES);
        assert!(!e.to_string().contains("keyring"), "{e}");
    }
}
