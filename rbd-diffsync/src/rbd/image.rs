//! An open RBD image that closes itself, and the librbd calls made on it.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::time::Duration;

use libc::{c_char, c_int, c_void, size_t};

use crate::error::{code_text, Error, ErrorKind, Result};
use crate::rbd::cluster::Pool;
use crate::rbd::sys;

/// One range of a diff, as librbd's diff_iterate reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffExtent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// `true`: the range holds data to copy; `false`: it must read as zeros.
    pub exists: bool,
}

/// Size and layout of an image (at the snapshot it was opened at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes (`1 << order`).
    pub object_size: u64,
    /// log2 of the object size.
    pub order: u8,
}

/// What an image is created with: object size, striping and features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// log2 of the object size.
    pub order: u8,
    /// Bytes written to one object before moving to the next of a stripe.
    pub stripe_unit: u64,
    /// Objects a stripe spans.
    pub stripe_count: u64,
    /// `RBD_FEATURE_*` bits.
    pub features: u64,
}

/// The features an image can be created with; the others are set by librbd itself or are
/// states of an image (data-pool, operations, migrating, non-primary, dirty-cache).
const CREATABLE_FEATURES: u64 = sys::RBD_FEATURE_LAYERING
    | sys::RBD_FEATURE_STRIPINGV2
    | sys::RBD_FEATURE_EXCLUSIVE_LOCK
    | sys::RBD_FEATURE_OBJECT_MAP
    | sys::RBD_FEATURE_FAST_DIFF
    | sys::RBD_FEATURE_DEEP_FLATTEN
    | sys::RBD_FEATURE_JOURNALING;

/// A snapshot of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// librbd's snapshot id; later snapshots have larger ids.
    pub id: u64,
    /// The name.
    pub name: String,
    /// The image size when it was taken.
    pub size: u64,
}

/// A client that has an image open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watcher {
    /// Its address, `ip:port/nonce`.
    pub address: String,
    /// Its global id (`client.<id>`).
    pub id: i64,
    /// Its watch's cookie.
    pub cookie: u64,
}

/// An open image; closed when dropped.
pub struct Image {
    raw: sys::rbd_image_t,
    label: String,
    // The I/O context must outlive the image.
    pool: Pool,
}

// SAFETY: librbd serialises access to an image context internally; its C API may be called on
// one handle from several threads, which is what concurrent aio on one image does.
unsafe impl Send for Image {}
// SAFETY: as above; `Image` has no Rust-side interior state.
unsafe impl Sync for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image").field("image", &self.label).finish()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: `raw` came from rbd_open* and is closed exactly once, here. Closing releases
        // the exclusive lock if this handle holds it.
        unsafe { sys::rbd_close(self.raw) };
    }
}

/// The progress callback of librbd calls that take one: reports nothing, never stops them.
unsafe extern "C" fn no_progress(_offset: u64, _total: u64, _arg: *mut c_void) -> c_int {
    0
}

fn c_name(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(format!("{what} {s:?} contains a NUL byte")))
}

fn check(ret: c_int, op: &str, target: &str) -> Result<()> {
    if ret < 0 {
        Err(Error::rbd(op, target, ret.into()))
    } else {
        Ok(())
    }
}

/// `pool[/namespace]/image`.
pub(crate) fn image_path(pool: &Pool, name: &str) -> String {
    match pool.namespace() {
        Some(ns) => format!("{}/{ns}/{name}", pool.name()),
        None => format!("{}/{name}", pool.name()),
    }
}

impl Image {
    fn open_with(pool: &Pool, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let path = image_path(pool, name);
        let c_image = c_name("image name", name)?;
        let c_snap = snap.map(|s| c_name("snapshot name", s)).transpose()?;
        let mut raw: sys::rbd_image_t = ptr::null_mut();
        // Opened at HEAD, then moved to the snapshot, as the rbd CLI does: librbd refuses to
        // open an image at a snapshot whose object map is missing (ENOENT), but moves to it.
        // SAFETY: the ioctx is alive (held by `pool`), the name is NUL-terminated, `raw` is an
        // out pointer.
        let ret = unsafe {
            if read_only {
                sys::rbd_open_read_only(pool.raw(), c_image.as_ptr(), &mut raw, ptr::null())
            } else {
                sys::rbd_open(pool.raw(), c_image.as_ptr(), &mut raw, ptr::null())
            }
        };
        if ret == -libc::ENOENT {
            return Err(Error::image_not_found(&path));
        }
        check(ret, "open", &path).map_err(|e| e.with_image(&path))?;
        let mut image = Image {
            raw,
            label: path.clone(),
            pool: pool.clone(),
        };
        if let (Some(snap), Some(c_snap)) = (snap, c_snap) {
            // SAFETY: `raw` is open; the name is NUL-terminated.
            let ret = unsafe { sys::rbd_snap_set(image.raw, c_snap.as_ptr()) };
            if ret == -libc::ENOENT {
                return Err(Error::snap_not_found(&path, snap));
            }
            check(ret, "open", &format!("{path}@{snap}"))
                .map_err(|e| e.with_image(&path).with_snap(snap))?;
            image.label = format!("{path}@{snap}");
        }
        Ok(image)
    }

    /// Opens `name` for reading, at `snap` or at HEAD.
    pub fn open_read_only(pool: &Pool, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open_with(pool, name, snap, true)
    }

    /// Opens `name` at HEAD for reading and writing.
    pub fn open(pool: &Pool, name: &str) -> Result<Image> {
        Image::open_with(pool, name, None, false)
    }

    /// Creates an image of `size` bytes with `layout` (the cluster's defaults when `None`).
    pub fn create(pool: &Pool, name: &str, size: u64, layout: Option<&Layout>) -> Result<()> {
        let path = image_path(pool, name);
        let c_image = c_name("image name", name)?;
        let mut opts: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: `opts` is an out pointer; it is destroyed below on every path.
        unsafe { sys::rbd_image_options_create(&mut opts) };
        let mut settings = Vec::new();
        if let Some(layout) = layout {
            settings.push((sys::RBD_IMAGE_OPTION_ORDER, u64::from(layout.order)));
            settings.push((
                sys::RBD_IMAGE_OPTION_FEATURES,
                layout.features & CREATABLE_FEATURES,
            ));
            // librbd refuses striping settings on an image without the striping feature.
            if layout.features & sys::RBD_FEATURE_STRIPINGV2 != 0 {
                settings.push((sys::RBD_IMAGE_OPTION_STRIPE_UNIT, layout.stripe_unit));
                settings.push((sys::RBD_IMAGE_OPTION_STRIPE_COUNT, layout.stripe_count));
            }
        }
        let mut ret = 0;
        for (option, value) in settings {
            // SAFETY: `opts` is valid.
            ret = unsafe { sys::rbd_image_options_set_uint64(opts, option, value) };
            if ret < 0 {
                break;
            }
        }
        if ret == 0 {
            // SAFETY: the ioctx is alive, the name NUL-terminated, `opts` valid.
            ret = unsafe { sys::rbd_create4(pool.raw(), c_image.as_ptr(), size, opts) };
        }
        // SAFETY: `opts` came from rbd_image_options_create.
        unsafe { sys::rbd_image_options_destroy(opts) };
        check(ret, "create", &path).map_err(|e| e.with_image(path))
    }

    /// `pool[/namespace]/image[@snap]` as opened.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `pool[/namespace]/image`.
    pub fn path(&self) -> &str {
        self.label.split_once('@').map_or(&self.label, |(p, _)| p)
    }

    /// The pool the image is in.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Size, object size and order.
    pub fn info(&self) -> Result<ImageInfo> {
        // SAFETY: all-zero is a valid value of this plain C struct.
        let mut info: sys::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is open; `info` is valid for writes of its own size.
        let ret = unsafe {
            sys::rbd_stat(
                self.raw,
                &mut info,
                std::mem::size_of::<sys::rbd_image_info_t>(),
            )
        };
        check(ret, "stat", &self.label)?;
        let order = u8::try_from(info.order)
            .ok()
            .filter(|&o| (12..=26).contains(&o) && 1u64 << o == info.obj_size)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Other,
                    libc::EINVAL,
                    format!(
                        "stat of {}: librbd reported object size {} and order {}",
                        self.label, info.obj_size, info.order
                    ),
                )
            })?;
        Ok(ImageInfo {
            size: info.size,
            object_size: info.obj_size,
            order,
        })
    }

    fn get_u64(
        &self,
        op: &str,
        f: unsafe extern "C" fn(sys::rbd_image_t, *mut u64) -> c_int,
    ) -> Result<u64> {
        let mut value = 0;
        // SAFETY: `raw` is open; `value` is an out pointer.
        let ret = unsafe { f(self.raw, &mut value) };
        check(ret, op, &self.label)?;
        Ok(value)
    }

    /// Object size, striping and features.
    pub fn layout(&self) -> Result<Layout> {
        Ok(Layout {
            order: self.info()?.order,
            stripe_unit: self.get_u64("read stripe unit", sys::rbd_get_stripe_unit)?,
            stripe_count: self.get_u64("read stripe count", sys::rbd_get_stripe_count)?,
            features: self.features()?,
        })
    }

    /// The image's name, without its pool and namespace.
    pub fn name(&self) -> &str {
        self.path().rsplit('/').next().unwrap_or_default()
    }

    /// The `RBD_FEATURE_*` bits.
    pub fn features(&self) -> Result<u64> {
        self.get_u64("read features", sys::rbd_get_features)
    }

    /// The image's id, which stays the same when it is renamed.
    pub fn id(&self) -> Result<String> {
        let mut buf = [0 as c_char; 64];
        // SAFETY: `raw` is open; the buffer is valid for its length.
        let ret = unsafe { sys::rbd_get_id(self.raw, buf.as_mut_ptr(), buf.len()) };
        check(ret, "read id", &self.label)?;
        // SAFETY: librbd NUL-terminated the id within the buffer.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// The size in bytes (at the snapshot opened, if any).
    pub fn size(&self) -> Result<u64> {
        self.get_u64("get size", sys::rbd_get_size)
    }

    /// The snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut max: c_int = 16;
        loop {
            // Zeroed, so that the entry after the last one filled is a terminator even where
            // librbd writes none (it returns 0 without one when the image vanished).
            let mut buf: Vec<sys::rbd_snap_info_t> = (0..max)
                .map(|_| sys::rbd_snap_info_t {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            // SAFETY: `buf` holds `max` entries; librbd fills at most `max - 1` and a terminator,
            // and returns -ERANGE with the needed count in `max` otherwise.
            let ret = unsafe { sys::rbd_snap_list(self.raw, buf.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE {
                continue;
            }
            check(ret, "list snapshots", &self.label)?;
            let count = usize::try_from(ret).unwrap_or(0).min(buf.len());
            let mut snaps: Vec<Snapshot> = buf[..count]
                .iter()
                .filter(|s| !s.name.is_null())
                .map(|s| Snapshot {
                    id: s.id,
                    // SAFETY: librbd gives NUL-terminated names, valid until snap_list_end.
                    name: unsafe { CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned(),
                    size: s.size,
                })
                .collect();
            if count > 0 {
                // SAFETY: the entries came from rbd_snap_list on this buffer, and a terminator
                // (librbd's, or one of our zeroed entries) follows them within it.
                unsafe { sys::rbd_snap_list_end(buf.as_mut_ptr()) };
            }
            snaps.sort_by_key(|s| s.id);
            return Ok(snaps);
        }
    }

    /// Creates snapshot `name` of HEAD. Without `quiesce`, librbd does not first ask the
    /// image's other clients to quiesce their writes (and wait for their answers, two
    /// notifications through the OSD): for an image that no other client writes, such as a
    /// destination under its exclusive lock.
    pub fn create_snapshot(&self, name: &str, quiesce: bool) -> Result<()> {
        let c_snap = c_name("snapshot name", name)?;
        let flags = if quiesce {
            0
        } else {
            sys::RBD_SNAP_CREATE_SKIP_QUIESCE
        };
        // SAFETY: `raw` is open, the name NUL-terminated; the callback ignores its (null)
        // argument.
        let ret = unsafe {
            sys::rbd_snap_create2(
                self.raw,
                c_snap.as_ptr(),
                flags,
                no_progress,
                ptr::null_mut(),
            )
        };
        if ret == -libc::EEXIST {
            return Err(Error::snap_exists(self.path(), name));
        }
        check(ret, "create snapshot", &format!("{}@{name}", self.label))
    }

    /// Grows or shrinks HEAD to `size` bytes.
    pub fn resize(&self, size: u64) -> Result<()> {
        // SAFETY: `raw` is open; the callback ignores its (null) argument.
        let ret = unsafe { sys::rbd_resize2(self.raw, size, true, no_progress, ptr::null_mut()) };
        check(ret, "resize", &self.label)
    }

    /// Waits until every completed write is on the OSDs (librbd's cache, if on, is written back).
    pub fn flush(&self) -> Result<()> {
        // SAFETY: `raw` is open.
        let ret = unsafe { sys::rbd_flush(self.raw) };
        check(ret, "flush", &self.label)
    }

    /// Calls `f` with each range that differs between `from_snap` (or an empty image, with
    /// `None`) and the snapshot this image was opened at, over `[offset, offset + len)`.
    /// `include_parent` counts a clone's parent data; `whole_object` reports whole objects
    /// (cheaper with fast-diff). `f` returning `false` stops the walk with `ECANCELED`.
    pub fn diff_iterate(
        &self,
        from_snap: Option<&str>,
        offset: u64,
        len: u64,
        include_parent: bool,
        whole_object: bool,
        mut f: impl FnMut(DiffExtent) -> bool,
    ) -> Result<()> {
        // librbd 16.2 asserts in a whole-object diff of an empty range: there is nothing to
        // report anyway.
        if len == 0 {
            return Ok(());
        }
        struct State<'a> {
            f: &'a mut dyn FnMut(DiffExtent) -> bool,
            panic: Option<Box<dyn std::any::Any + Send>>,
        }
        unsafe extern "C" fn trampoline(
            offset: u64,
            len: size_t,
            exists: c_int,
            arg: *mut c_void,
        ) -> c_int {
            // SAFETY: `arg` is the `State` below, alive for the whole rbd_diff_iterate2 call,
            // which calls back on the caller's thread only.
            let state = unsafe { &mut *(arg as *mut State<'_>) };
            let extent = DiffExtent {
                offset,
                len: len as u64,
                exists: exists != 0,
            };
            match catch_unwind(AssertUnwindSafe(|| (state.f)(extent))) {
                Ok(true) => 0,
                Ok(false) => -libc::ECANCELED,
                Err(panic) => {
                    state.panic = Some(panic);
                    -libc::ECANCELED
                }
            }
        }
        let c_from = from_snap.map(|s| c_name("snapshot name", s)).transpose()?;
        let mut state = State {
            f: &mut f,
            panic: None,
        };
        // SAFETY: `raw` is open; `state` outlives the call; the trampoline matches the C type.
        let ret = unsafe {
            sys::rbd_diff_iterate2(
                self.raw,
                c_from.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                offset,
                len,
                include_parent.into(),
                whole_object.into(),
                trampoline,
                &mut state as *mut State<'_> as *mut c_void,
            )
        };
        if let Some(panic) = state.panic {
            resume_unwind(panic);
        }
        let target = match from_snap {
            Some(from) => format!("{} from snapshot {from:?}", self.label),
            None => self.label.clone(),
        };
        check(ret, "diff", &target)
    }

    /// The `RBD_FLAG_*` bits (object map invalid, ...) of the snapshot this image is open at.
    pub fn flags(&self) -> Result<u64> {
        self.get_u64("read flags", sys::rbd_get_flags)
    }

    /// The addresses of the clients holding the exclusive lock (none when it is free).
    pub fn lock_owners(&self) -> Result<Vec<String>> {
        let mut mode: c_int = 0;
        let mut owners: [*mut c_char; 8] = [ptr::null_mut(); 8];
        let mut count: size_t = owners.len();
        // SAFETY: `raw` is open; `owners` holds `count` pointers librbd may fill.
        let ret = unsafe {
            sys::rbd_lock_get_owners(self.raw, &mut mode, owners.as_mut_ptr(), &mut count)
        };
        if ret == -libc::ENOENT {
            return Ok(Vec::new());
        }
        if ret == -libc::EINVAL {
            // An image open read-only has no lock state of its own: the header's lockers.
            return self.lockers();
        }
        check(ret, "read lock owners", &self.label)?;
        let count = count.min(owners.len());
        let names = owners[..count]
            .iter()
            .filter(|p| !p.is_null())
            // SAFETY: librbd gives NUL-terminated strings, valid until the cleanup below.
            .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        // SAFETY: the `count` strings came from rbd_lock_get_owners.
        unsafe { sys::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), count) };
        Ok(names)
    }

    /// The addresses of the clients holding a lock on the image's header (the exclusive lock,
    /// or one taken with `rbd lock add`), as the header says.
    fn lockers(&self) -> Result<Vec<String>> {
        let mut lens: [size_t; 4] = [256; 4];
        loop {
            let mut bufs: Vec<Vec<c_char>> = lens.iter().map(|&n| vec![0; n]).collect();
            let (mut exclusive, mut got) = (0, lens);
            // SAFETY: `raw` is open; each buffer holds the length given beside it, which
            // librbd sets to what it needs and returns -ERANGE when a buffer is too short.
            let ret = unsafe {
                let [tag, clients, cookies, addrs] = &mut bufs[..] else {
                    unreachable!("four buffers")
                };
                let [tag_len, clients_len, cookies_len, addrs_len] = &mut got;
                sys::rbd_list_lockers(
                    self.raw,
                    &mut exclusive,
                    tag.as_mut_ptr(),
                    tag_len,
                    clients.as_mut_ptr(),
                    clients_len,
                    cookies.as_mut_ptr(),
                    cookies_len,
                    addrs.as_mut_ptr(),
                    addrs_len,
                )
            };
            if ret == -(libc::ERANGE as isize) && got.iter().zip(&lens).any(|(g, l)| g > l) {
                lens = got;
                continue;
            }
            if ret < 0 {
                return Err(Error::rbd("list lockers", &self.label, ret as i64));
            }
            let addrs: Vec<u8> = bufs[3].iter().map(|&c| c as u8).collect();
            let used = got[3].min(addrs.len());
            return Ok(addrs[..used]
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .take(ret as usize)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect());
        }
    }

    /// Whether this client holds the image's exclusive lock, as librbd knows it (no round
    /// trip).
    pub fn holds_exclusive_lock(&self) -> Result<bool> {
        let mut owner: c_int = 0;
        // SAFETY: `raw` is open; `owner` is an out pointer.
        let ret = unsafe { sys::rbd_is_exclusive_lock_owner(self.raw, &mut owner) };
        check(ret, "read the lock state of", &self.label)?;
        Ok(owner != 0)
    }

    /// Takes the exclusive lock and keeps it until the image is closed: librbd hands it to no
    /// other client meanwhile. A lock held by a live client in this mode fails with `EROFS`;
    /// one left by a dead client is broken once its watch has expired, which this call waits
    /// for.
    pub fn acquire_exclusive_lock(&self) -> Result<()> {
        // SAFETY: `raw` is open.
        let ret = unsafe { sys::rbd_lock_acquire(self.raw, sys::RBD_LOCK_MODE_EXCLUSIVE) };
        check(ret, "acquire the exclusive lock of", &self.label)
    }

    /// The image's header object, which holds its metadata and its watches.
    fn header_object(&self) -> Result<String> {
        Ok(format!("rbd_header.{}", self.id()?))
    }

    /// Breaks the exclusive lock held by the client at `owner` (librbd blocklists it first,
    /// unless `rbd_blocklist_on_break_lock` is off: the transfer fences it off itself before).
    pub fn break_lock(&self, owner: &str) -> Result<()> {
        let c_owner = c_name("lock owner", owner)?;
        // SAFETY: `raw` is open; the owner is NUL-terminated.
        let ret = unsafe {
            sys::rbd_lock_break(self.raw, sys::RBD_LOCK_MODE_EXCLUSIVE, c_owner.as_ptr())
        };
        check(ret, "break the exclusive lock of", &self.label)
    }

    /// Whether the client at `address`, which has the image open, answers: a notification
    /// to the image's watchers (the empty one librbd takes for "the header changed", which
    /// costs a live client a refresh) is acknowledged by a live client within milliseconds,
    /// and never by one that was killed but whose watch has not expired yet. `None` when no
    /// watch of that client is left.
    pub fn answers(&self, address: &str, timeout: Duration) -> Result<Option<bool>> {
        let watches: Vec<(u64, u64)> = self
            .watchers()?
            .into_iter()
            .filter(|w| w.address == address)
            .map(|w| (w.id as u64, w.cookie))
            .collect();
        if watches.is_empty() {
            return Ok(None);
        }
        let header = self.header_object()?;
        let unanswered = self.pool.unanswered(&header, timeout)?;
        Ok(Some(!watches.iter().any(|w| unanswered.contains(w))))
    }

    /// The clients that have the image open.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let mut max: size_t = 16;
        loop {
            let mut buf: Vec<sys::rbd_image_watcher_t> = (0..max)
                .map(|_| sys::rbd_image_watcher_t {
                    addr: ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut count = max;
            // SAFETY: `buf` holds `count` entries; librbd fills at most that many.
            let ret = unsafe { sys::rbd_watchers_list(self.raw, buf.as_mut_ptr(), &mut count) };
            if ret == -libc::ERANGE && count > max {
                max = count;
                continue;
            }
            check(ret, "list watchers", &self.label)?;
            let count = count.min(buf.len());
            let watchers = buf[..count]
                .iter()
                .map(|w| Watcher {
                    address: if w.addr.is_null() {
                        String::new()
                    } else {
                        // SAFETY: a NUL-terminated string, valid until the cleanup below.
                        unsafe { CStr::from_ptr(w.addr) }
                            .to_string_lossy()
                            .into_owned()
                    },
                    id: w.id,
                    cookie: w.cookie,
                })
                .collect();
            // SAFETY: the `count` entries came from rbd_watchers_list.
            unsafe { sys::rbd_watchers_list_cleanup(buf.as_mut_ptr(), count) };
            return Ok(watchers);
        }
    }

    /// Whether a whole-object diff of this image, at the snapshot it is open at, is read from
    /// its object map: fast-diff on, and neither the object map nor fast-diff flagged invalid
    /// there.
    pub(crate) fn object_map_usable(&self) -> Result<bool> {
        let needed = sys::RBD_FEATURE_OBJECT_MAP | sys::RBD_FEATURE_FAST_DIFF;
        if self.features()? & needed != needed {
            return Ok(false);
        }
        let invalid = sys::RBD_FLAG_OBJECT_MAP_INVALID | sys::RBD_FLAG_FAST_DIFF_INVALID;
        Ok(self.flags()? & invalid == 0)
    }

    /// Whether it has the exclusive-lock feature.
    pub(crate) fn lockable(&self) -> Result<bool> {
        Ok(self.features()? & sys::RBD_FEATURE_EXCLUSIVE_LOCK != 0)
    }

    pub(crate) fn io_error(&self, op: &str, offset: u64, len: u64, ret: i64) -> Error {
        Error::io(op, &self.label, offset, len, ret).with_image(self.path())
    }
}

/// What is called with a request's result (the bytes moved, or a negative errno), once, on
/// one of librbd's threads: it must only hand the result over.
pub(crate) trait OnDone: FnOnce(i64) + Send + 'static {}

impl<F: FnOnce(i64) + Send + 'static> OnDone for F {}

impl Image {
    /// Starts reading `len` bytes at `off` into `buf`; `done` gets the result, unless this
    /// returns `Err` (then the request was not submitted and `done` is dropped uncalled).
    ///
    /// # Safety
    /// `buf` must stay valid for writes of `len` bytes, unread and unmoved, until `done` has
    /// been called.
    pub(crate) unsafe fn aio_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: impl OnDone,
    ) -> Result<()> {
        let c = PendingCompletion::new(done, self)?;
        // SAFETY: the caller keeps `buf` valid; `c` is a fresh completion.
        let ret = unsafe {
            sys::rbd_aio_read2(
                self.raw,
                off,
                len,
                buf.cast(),
                c.raw,
                sys::FADVISE_STREAM_READ,
            )
        };
        c.submitted(ret, || self.io_error("read", off, len as u64, ret.into()))
    }

    /// Starts writing `len` bytes from `buf` at `off`, as [`aio_read`](Self::aio_read).
    ///
    /// # Safety
    /// `buf` must stay valid and unchanged until `done` has been called.
    pub(crate) unsafe fn aio_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: impl OnDone,
    ) -> Result<()> {
        let c = PendingCompletion::new(done, self)?;
        // SAFETY: the caller keeps `buf` valid; `c` is a fresh completion.
        let ret = unsafe {
            sys::rbd_aio_write2(self.raw, off, len, buf.cast(), c.raw, sys::FADVISE_NOCACHE)
        };
        c.submitted(ret, || self.io_error("write", off, len as u64, ret.into()))
    }

    /// Starts making `[off, off + len)` read as zeros, deallocating whole objects.
    pub(crate) fn aio_write_zeroes(&self, off: u64, len: u64, done: impl OnDone) -> Result<()> {
        let size = usize::try_from(len)
            .map_err(|_| self.io_error("write_zeroes", off, len, -(libc::EINVAL as i64)))?;
        let c = PendingCompletion::new(done, self)?;
        // SAFETY: `raw` is open, `c` a fresh completion; no buffer is involved.
        let ret = unsafe { sys::rbd_aio_write_zeroes(self.raw, off, size, c.raw, 0, 0) };
        c.submitted(ret, || self.io_error("write_zeroes", off, len, ret.into()))
    }
}

/// Synchronous I/O and state, for the project's own tests.
#[cfg(feature = "internals")]
impl Image {
    /// Starts a discard of `[off, off + len)`.
    fn aio_discard(&self, off: u64, len: u64, done: impl OnDone) -> Result<()> {
        let c = PendingCompletion::new(done, self)?;
        // SAFETY: `raw` is open, `c` a fresh completion.
        let ret = unsafe { sys::rbd_aio_discard(self.raw, off, len, c.raw) };
        c.submitted(ret, || self.io_error("discard", off, len, ret.into()))
    }

    /// Runs one request started by `start` and waits for its result.
    fn wait_one(
        &self,
        start: impl FnOnce(Box<dyn OnDone>) -> Result<()>,
        op: &str,
        off: u64,
        len: u64,
    ) -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::channel();
        start(Box::new(move |ret| {
            // A receiver that is gone waits for nothing any more.
            let _ = tx.send(ret);
        }))?;
        let ret = rx.recv().expect("a submitted request always completes");
        if ret < 0 {
            return Err(self.io_error(op, off, len, ret));
        }
        Ok(ret as u64)
    }

    /// Reads `buf.len()` bytes at `off`; returns how many were read (fewer at the end).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        let len = buf.len();
        let ptr = buf.as_mut_ptr();
        // SAFETY: `buf` is borrowed until wait_one has received the completion.
        let n = self.wait_one(
            |c| unsafe { self.aio_read(off, len, ptr, c) },
            "read",
            off,
            len as u64,
        )?;
        Ok(n as usize)
    }

    /// Writes `data` at `off`.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        self.wait_one(
            // SAFETY: `data` is borrowed until wait_one has received the completion.
            |c| unsafe { self.aio_write(off, data.len(), data.as_ptr(), c) },
            "write",
            off,
            data.len() as u64,
        )?;
        Ok(())
    }

    /// Makes `[off, off + len)` read as zeros.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.wait_one(
            |c| self.aio_write_zeroes(off, len, c),
            "write_zeroes",
            off,
            len,
        )?;
        Ok(())
    }

    /// Discards `[off, off + len)`.
    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.wait_one(|c| self.aio_discard(off, len, c), "discard", off, len)?;
        Ok(())
    }
}

unsafe extern "C" fn on_complete<F: OnDone>(c: sys::rbd_completion_t, arg: *mut c_void) {
    // Runs on a librbd thread: take the result, hand it over, free what is ours, nothing else.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the box leaked in `PendingCompletion::new`, given back exactly once.
        let done = unsafe { Box::from_raw(arg as *mut F) };
        // SAFETY: `c` is the completion that fired; librbd allows release inside its callback.
        let ret = unsafe { sys::rbd_aio_get_return_value(c) } as i64;
        // SAFETY: nothing else refers to `c` after this callback.
        unsafe { sys::rbd_aio_release(c) };
        done(ret);
    }));
}

/// A librbd completion whose callback hands the result to an [`OnDone`].
struct PendingCompletion<F> {
    raw: sys::rbd_completion_t,
    arg: *mut F,
}

impl<F: OnDone> PendingCompletion<F> {
    fn new(done: F, image: &Image) -> Result<PendingCompletion<F>> {
        let arg = Box::into_raw(Box::new(done));
        let mut raw: sys::rbd_completion_t = ptr::null_mut();
        // SAFETY: `arg` stays valid until the callback frees it; `raw` is an out pointer.
        let ret = unsafe { sys::rbd_aio_create_completion(arg.cast(), on_complete::<F>, &mut raw) };
        if ret < 0 {
            // SAFETY: no completion holds `arg`; dropped without being called, as a request
            // that was not submitted must be.
            drop(unsafe { Box::from_raw(arg) });
            return Err(Error::rbd(
                "create aio completion",
                image.label(),
                ret.into(),
            ));
        }
        Ok(PendingCompletion { raw, arg })
    }

    /// After a submission: on failure librbd will never call back, so free everything here.
    fn submitted(self, ret: c_int, err: impl FnOnce() -> Error) -> Result<()> {
        if ret >= 0 {
            return Ok(());
        }
        // SAFETY: the request was refused, so the callback never runs: both are still ours.
        unsafe {
            sys::rbd_aio_release(self.raw);
            drop(Box::from_raw(self.arg));
        }
        Err(err())
    }
}

/// An image's header object, reached without opening the image (which registers a watch) and
/// without its exclusive lock, which librbd's metadata calls would take first. Metadata is
/// kept in its omap, under `metadata_<key>`, where librbd keeps it.
pub(crate) struct Header {
    pool: Pool,
    object: String,
}

impl Header {
    /// The header of the image `name` in `pool`, found by its id object; `None` if there is
    /// none (no such image, or one of the old format).
    pub(crate) fn find(pool: &Pool, name: &str) -> Result<Option<Header>> {
        let read = pool.read(&format!("rbd_id.{name}"), 256);
        let Some(encoded) = read.map_err(|e| refused(e, pool, name))? else {
            return Ok(None);
        };
        // The id is an encoded string: its length (32 bits, little-endian), then its bytes.
        let id = encoded
            .split_first_chunk::<4>()
            .and_then(|(len, rest)| rest.get(..u32::from_le_bytes(*len) as usize))
            .and_then(|id| std::str::from_utf8(id).ok())
            .filter(|id| !id.is_empty());
        Ok(id.map(|id| Header {
            pool: pool.clone(),
            object: format!("rbd_header.{id}"),
        }))
    }

    /// The metadata values of `keys` (`None` for a missing one), read in one operation.
    pub(crate) fn metadata_get(&self, keys: &[&str]) -> Result<Vec<Option<String>>> {
        let keys: Vec<String> = keys.iter().map(|k| metadata_key(k)).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values = self.pool.omap_get(&self.object, &keys)?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                libc::ENOENT,
                format!("the header {} of the image is gone", self.object),
            )
        })?;
        Ok(values
            .into_iter()
            .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
            .collect())
    }

    /// In one atomic operation on the existing image: if the metadata `guard.0` is `guard.1`
    /// (empty for a missing key), sets `set` and removes `remove`; `Ok(false)`, changing
    /// nothing, if it is not.
    pub(crate) fn metadata_write_if(
        &self,
        guard: (&str, &str),
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<bool> {
        let guard_key = metadata_key(guard.0);
        let set_keys: Vec<String> = set.iter().map(|(k, _)| metadata_key(k)).collect();
        let set: Vec<(&str, &str)> = set_keys
            .iter()
            .zip(set)
            .map(|(k, (_, v))| (k.as_str(), *v))
            .collect();
        let remove: Vec<String> = remove.iter().map(|k| metadata_key(k)).collect();
        let remove: Vec<&str> = remove.iter().map(String::as_str).collect();
        self.pool
            .omap_write_if(&self.object, (&guard_key, guard.1), &set, &remove)
    }
}

/// `e`, the failure of the first read of image `name` in `pool`; when the OSDs refused it, an
/// error that names the image and the caps the client lacks.
fn refused(e: Error, pool: &Pool, name: &str) -> Error {
    if e.kind() != ErrorKind::PermissionDenied {
        return e;
    }
    let path = image_path(pool, name);
    let pool_name = pool.name();
    Error::new(
        ErrorKind::PermissionDenied,
        e.errno(),
        format!(
            "the client may not use pool {pool_name} (for image {path}): its osd caps do not \
             allow it ({}); a client that writes images there needs, for instance, \
             osd 'profile rbd pool={pool_name}' and mon 'profile rbd'",
            code_text(e.errno())
        ),
    )
    .with_image(&path)
}

fn metadata_key(key: &str) -> String {
    format!("metadata_{key}")
}
