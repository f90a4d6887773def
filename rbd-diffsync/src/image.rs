//! An open RBD image that closes itself, and the librbd calls made on it.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::mpsc;

use libc::{c_int, c_void, size_t};

use crate::cluster::Pool;
use crate::engine::{DiffSink, DiffSource};
use crate::error::{Errno, Error, Result};
use crate::spec::ImageSpec;
use crate::sys;

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

/// One range reported by [`Image::diff_iterate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffExtent {
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
    /// `true`: the range holds data to copy; `false`: it must read as zeros.
    pub exists: bool,
}

/// An open image; closed when dropped.
pub struct Image {
    raw: sys::rbd_image_t,
    label: String,
    // The I/O context must outlive the image.
    _pool: Pool,
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
        // SAFETY: `raw` came from rbd_open* and is closed exactly once, here.
        unsafe { sys::rbd_close(self.raw) };
    }
}

fn c_name(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument(format!("{what} {s:?} contains a NUL byte")))
}

fn check(ret: c_int, op: &'static str, target: &str) -> Result<()> {
    if ret < 0 {
        Err(Error::rbd(op, target, ret.into()))
    } else {
        Ok(())
    }
}

impl Image {
    fn open_with(pool: &Pool, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let spec = ImageSpec::new(pool_part(pool), ns_part(pool), name, snap)?;
        let c_image = c_name("image name", name)?;
        let c_snap = snap.map(|s| c_name("snapshot name", s)).transpose()?;
        let snap_ptr = c_snap.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut raw: sys::rbd_image_t = ptr::null_mut();
        // SAFETY: the ioctx is alive (held by `pool`), names are NUL-terminated, `raw` is an out
        // pointer.
        let ret = unsafe {
            if read_only {
                sys::rbd_open_read_only(pool.raw(), c_image.as_ptr(), &mut raw, snap_ptr)
            } else {
                sys::rbd_open(pool.raw(), c_image.as_ptr(), &mut raw, snap_ptr)
            }
        };
        if ret == -libc::ENOENT {
            // Tell a missing snapshot from a missing image.
            if let Some(snap) = snap {
                if Image::open_with(pool, name, None, true).is_ok() {
                    return Err(Error::SnapNotFound {
                        image: spec.image_path(),
                        snap: snap.to_owned(),
                    });
                }
            }
            return Err(Error::ImageNotFound {
                image: spec.image_path(),
            });
        }
        check(ret, "open", &spec.to_string())?;
        Ok(Image {
            raw,
            label: spec.to_string(),
            _pool: pool.clone(),
        })
    }

    /// Opens `name` for reading, at `snap` or at HEAD.
    pub fn open_read_only(pool: &Pool, name: &str, snap: Option<&str>) -> Result<Image> {
        Image::open_with(pool, name, snap, true)
    }

    /// Opens `name` at HEAD for reading and writing.
    pub fn open(pool: &Pool, name: &str) -> Result<Image> {
        Image::open_with(pool, name, None, false)
    }

    /// Creates an image of `size` bytes with objects of `1 << order` bytes (the cluster's
    /// default when `None`) and the cluster's default features.
    pub fn create(pool: &Pool, name: &str, size: u64, order: Option<u8>) -> Result<()> {
        let spec = ImageSpec::new(pool_part(pool), ns_part(pool), name, None)?;
        let c_image = c_name("image name", name)?;
        let mut opts: sys::rbd_image_options_t = ptr::null_mut();
        // SAFETY: `opts` is an out pointer; it is destroyed below on every path.
        unsafe { sys::rbd_image_options_create(&mut opts) };
        let mut ret = 0;
        if let Some(order) = order {
            // SAFETY: `opts` is valid.
            ret = unsafe {
                sys::rbd_image_options_set_uint64(opts, sys::RBD_IMAGE_OPTION_ORDER, order.into())
            };
        }
        if ret == 0 {
            // SAFETY: the ioctx is alive, the name NUL-terminated, `opts` valid.
            ret = unsafe { sys::rbd_create4(pool.raw(), c_image.as_ptr(), size, opts) };
        }
        // SAFETY: `opts` came from rbd_image_options_create.
        unsafe { sys::rbd_image_options_destroy(opts) };
        if ret == -libc::EEXIST {
            return Err(Error::Rbd {
                op: "create",
                target: spec.image_path(),
                errno: Errno(libc::EEXIST),
            });
        }
        check(ret, "create", &spec.image_path())
    }

    /// `pool[/namespace]/image[@snap]` as opened.
    pub fn label(&self) -> &str {
        &self.label
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
        Ok(ImageInfo {
            size: info.size,
            object_size: info.obj_size,
            order: u8::try_from(info.order).unwrap_or(22),
        })
    }

    /// The size in bytes (at the snapshot opened, if any).
    pub fn size(&self) -> Result<u64> {
        let mut size = 0;
        // SAFETY: `raw` is open; `size` is an out pointer.
        let ret = unsafe { sys::rbd_get_size(self.raw, &mut size) };
        check(ret, "get size", &self.label)?;
        Ok(size)
    }

    /// The snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut max: c_int = 16;
        loop {
            let mut buf: Vec<sys::rbd_snap_info_t> = Vec::with_capacity(max as usize);
            // SAFETY: `buf` has room for `max` entries; librbd fills at most that many and
            // returns -ERANGE with the needed count in `max` otherwise.
            let ret = unsafe { sys::rbd_snap_list(self.raw, buf.as_mut_ptr(), &mut max) };
            if ret == -libc::ERANGE {
                continue;
            }
            check(ret, "list snapshots", &self.label)?;
            // SAFETY: librbd initialised `ret` entries (plus a terminator we do not read).
            unsafe { buf.set_len(ret as usize) };
            let mut snaps: Vec<Snapshot> = buf
                .iter()
                .map(|s| Snapshot {
                    id: s.id,
                    // SAFETY: librbd gives NUL-terminated names, valid until snap_list_end.
                    name: unsafe { CStr::from_ptr(s.name) }
                        .to_string_lossy()
                        .into_owned(),
                    size: s.size,
                })
                .collect();
            // The terminator entry must stay in bounds for rbd_snap_list_end.
            // SAFETY: the entries came from rbd_snap_list on this buffer.
            unsafe { sys::rbd_snap_list_end(buf.as_mut_ptr()) };
            snaps.sort_by_key(|s| s.id);
            return Ok(snaps);
        }
    }

    /// The snapshot called `name`, if any.
    pub fn snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        Ok(self.snapshots()?.into_iter().find(|s| s.name == name))
    }

    /// Creates snapshot `name` of HEAD.
    pub fn create_snapshot(&self, name: &str) -> Result<()> {
        let c_snap = c_name("snapshot name", name)?;
        // SAFETY: `raw` is open, the name NUL-terminated.
        let ret = unsafe { sys::rbd_snap_create(self.raw, c_snap.as_ptr()) };
        if ret == -libc::EEXIST {
            return Err(Error::SnapExists {
                image: self.label.clone(),
                snap: name.to_owned(),
            });
        }
        check(ret, "create snapshot", &format!("{}@{name}", self.label))
    }

    /// Grows or shrinks HEAD to `size` bytes.
    pub fn resize(&self, size: u64) -> Result<()> {
        unsafe extern "C" fn no_progress(_offset: u64, _total: u64, _arg: *mut c_void) -> c_int {
            0
        }
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

    /// Starts a discard of `[off, off + len)`.
    pub(crate) fn aio_discard(
        &self,
        off: u64,
        len: u64,
        done: &Notifier,
        token: u64,
    ) -> Result<()> {
        let c = done.completion(token)?;
        // SAFETY: `raw` is open, `c` a fresh completion.
        let ret = unsafe { sys::rbd_aio_discard(self.raw, off, len, c.raw) };
        c.submitted(ret, || self.io_error("discard", off, len, ret.into()))
    }

    pub(crate) fn io_error(&self, op: &'static str, offset: u64, len: u64, ret: i64) -> Error {
        let errno = Errno::from_ret(ret);
        if errno.0 == libc::EACCES || errno.0 == libc::EPERM {
            return Error::PermissionDenied {
                op,
                target: format!("{} at offset {offset}", self.label),
            };
        }
        Error::Io {
            op,
            image: self.label.clone(),
            offset,
            len,
            errno,
        }
    }

    fn wait_one(
        &self,
        start: impl FnOnce(&Notifier) -> Result<()>,
        op: &'static str,
        off: u64,
        len: u64,
    ) -> Result<u64> {
        let (notifier, rx) = Notifier::new();
        start(&notifier)?;
        let done = rx.recv().expect("the completion callback always sends");
        if done.ret < 0 {
            return Err(self.io_error(op, off, len, done.ret));
        }
        Ok(done.ret as u64)
    }

    /// Reads `buf.len()` bytes at `off`; returns how many were read (fewer at the end).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<usize> {
        let len = buf.len();
        let ptr = buf.as_mut_ptr();
        // SAFETY: `buf` is borrowed until wait_one has received the completion.
        let n = self.wait_one(
            |n| unsafe { self.start_read(off, len, ptr, n, 0) },
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
            |n| unsafe { self.start_write(off, data.len(), data.as_ptr(), n, 0) },
            "write",
            off,
            data.len() as u64,
        )?;
        Ok(())
    }

    /// Makes `[off, off + len)` read as zeros.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.wait_one(
            |n| self.start_zero(off, len, n, 0),
            "write_zeroes",
            off,
            len,
        )?;
        Ok(())
    }

    /// Discards `[off, off + len)`.
    pub fn discard(&self, off: u64, len: u64) -> Result<()> {
        self.wait_one(|n| self.aio_discard(off, len, n, 0), "discard", off, len)?;
        Ok(())
    }
}

impl DiffSource for Image {
    unsafe fn start_read(
        &self,
        off: u64,
        len: usize,
        buf: *mut u8,
        done: &Notifier,
        token: u64,
    ) -> Result<()> {
        let c = done.completion(token)?;
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

    fn read_error(&self, off: u64, len: u64, ret: i64) -> Error {
        self.io_error("read", off, len, ret)
    }
}

impl DiffSink for Image {
    unsafe fn start_write(
        &self,
        off: u64,
        len: usize,
        buf: *const u8,
        done: &Notifier,
        token: u64,
    ) -> Result<()> {
        let c = done.completion(token)?;
        // SAFETY: the caller keeps `buf` valid; `c` is a fresh completion.
        let ret = unsafe {
            sys::rbd_aio_write2(self.raw, off, len, buf.cast(), c.raw, sys::FADVISE_NOCACHE)
        };
        c.submitted(ret, || self.io_error("write", off, len as u64, ret.into()))
    }

    /// Starts making `[off, off + len)` read as zeros, deallocating whole objects.
    fn start_zero(&self, off: u64, len: u64, done: &Notifier, token: u64) -> Result<()> {
        let c = done.completion(token)?;
        let size = usize::try_from(len)
            .map_err(|_| self.io_error("write_zeroes", off, len, -(libc::EINVAL as i64)))?;
        // SAFETY: `raw` is open, `c` a fresh completion; no buffer is involved.
        let ret = unsafe { sys::rbd_aio_write_zeroes(self.raw, off, size, c.raw, 0, 0) };
        c.submitted(ret, || self.io_error("write_zeroes", off, len, ret.into()))
    }

    fn write_error(&self, op: &'static str, off: u64, len: u64, ret: i64) -> Error {
        self.io_error(op, off, len, ret)
    }
}

fn pool_part(pool: &Pool) -> &str {
    pool.name().split_once('/').map_or(pool.name(), |(p, _)| p)
}

fn ns_part(pool: &Pool) -> Option<&str> {
    pool.name().split_once('/').map(|(_, ns)| ns)
}

/// A finished aio request: the token given at submission and librbd's return value.
#[derive(Debug)]
pub(crate) struct Done {
    pub token: u64,
    pub ret: i64,
}

/// Hands librbd completions over to the one thread that waits on the paired receiver.
#[derive(Clone, Debug)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<Done>,
}

struct CallbackArg {
    tx: mpsc::Sender<Done>,
    token: u64,
}

unsafe extern "C" fn on_complete(c: sys::rbd_completion_t, arg: *mut c_void) {
    // Runs on a librbd thread: take the result, pass it on, free what is ours, nothing else.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the box leaked in `Notifier::completion`, given back exactly once.
        let arg = unsafe { Box::from_raw(arg as *mut CallbackArg) };
        // SAFETY: `c` is the completion that fired; librbd allows release inside its callback.
        let ret = unsafe { sys::rbd_aio_get_return_value(c) } as i64;
        // SAFETY: nothing else refers to `c` after this callback.
        unsafe { sys::rbd_aio_release(c) };
        // A closed receiver means nobody waits any more; the result has no one to go to.
        let _ = arg.tx.send(Done {
            token: arg.token,
            ret,
        });
    }));
}

struct PendingCompletion {
    raw: sys::rbd_completion_t,
    arg: *mut CallbackArg,
}

impl PendingCompletion {
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

impl Notifier {
    pub(crate) fn new() -> (Notifier, mpsc::Receiver<Done>) {
        let (tx, rx) = mpsc::channel();
        (Notifier { tx }, rx)
    }

    fn completion(&self, token: u64) -> Result<PendingCompletion> {
        let arg = Box::into_raw(Box::new(CallbackArg {
            tx: self.tx.clone(),
            token,
        }));
        let mut raw: sys::rbd_completion_t = ptr::null_mut();
        // SAFETY: `arg` stays valid until the callback frees it; `raw` is an out pointer.
        let ret = unsafe { sys::rbd_aio_create_completion(arg.cast(), on_complete, &mut raw) };
        if ret < 0 {
            // SAFETY: no completion holds `arg`.
            drop(unsafe { Box::from_raw(arg) });
            return Err(Error::rbd("create aio completion", "librbd", ret.into()));
        }
        Ok(PendingCompletion { raw, arg })
    }
}
