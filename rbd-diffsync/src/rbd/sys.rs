//! Hand-written declarations of the part of librados's and librbd's C APIs
//! (`rados/librados.h`, `rbd/librbd.h`, as in Ceph 16.2: librados 3.0, librbd 1.16) that this
//! crate calls, and nothing else.
//!
//! Everything here is private: the safe owners are in `cluster` and `image`.

#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_void, size_t, ssize_t};

pub(crate) type rados_t = *mut c_void;
pub(crate) type rados_ioctx_t = *mut c_void;
pub(crate) type rados_omap_iter_t = *mut c_void;
pub(crate) type rados_write_op_t = *mut c_void;
pub(crate) type rados_read_op_t = *mut c_void;

pub(crate) type rbd_image_t = *mut c_void;
pub(crate) type rbd_completion_t = *mut c_void;
pub(crate) type rbd_image_options_t = *mut c_void;
pub(crate) type rbd_callback_t = unsafe extern "C" fn(cb: rbd_completion_t, arg: *mut c_void);
/// librbd calls it without a NULL check: pass a real function.
pub(crate) type librbd_progress_fn_t =
    unsafe extern "C" fn(offset: u64, total: u64, ptr: *mut c_void) -> c_int;
pub(crate) type rbd_diff_cb_t =
    unsafe extern "C" fn(offset: u64, len: size_t, exists: c_int, arg: *mut c_void) -> c_int;

pub(crate) const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
pub(crate) const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;
pub(crate) const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
pub(crate) const RBD_IMAGE_OPTION_ORDER: c_int = 2;
pub(crate) const RBD_IMAGE_OPTION_STRIPE_UNIT: c_int = 3;
pub(crate) const RBD_IMAGE_OPTION_STRIPE_COUNT: c_int = 4;
pub(crate) const RBD_LOCK_MODE_EXCLUSIVE: c_int = 0;
/// `rbd_snap_create2` flag: no quiesce notification to the image's watchers first.
pub(crate) const RBD_SNAP_CREATE_SKIP_QUIESCE: u32 = 1 << 0;

// features.h
pub(crate) const RBD_FEATURE_LAYERING: u64 = 1 << 0;
pub(crate) const RBD_FEATURE_STRIPINGV2: u64 = 1 << 1;
pub(crate) const RBD_FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
pub(crate) const RBD_FEATURE_OBJECT_MAP: u64 = 1 << 3;
pub(crate) const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
pub(crate) const RBD_FEATURE_DEEP_FLATTEN: u64 = 1 << 5;
pub(crate) const RBD_FEATURE_JOURNALING: u64 = 1 << 6;

// RBD_FLAG_* (librbd.h): what rbd_get_flags reports of the snapshot an image is open at.
pub(crate) const RBD_FLAG_OBJECT_MAP_INVALID: u64 = 1 << 0;
pub(crate) const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;

// librados.h op flags, as the rbd CLI passes them: export reads sequentially without filling
// the OSD's cache, import writes without caching.
const LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL: c_int = 0x8;
const LIBRADOS_OP_FLAG_FADVISE_NOCACHE: c_int = 0x40;
pub(crate) const FADVISE_STREAM_READ: c_int =
    LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | LIBRADOS_OP_FLAG_FADVISE_NOCACHE;
pub(crate) const FADVISE_NOCACHE: c_int = LIBRADOS_OP_FLAG_FADVISE_NOCACHE;

#[repr(C)]
pub(crate) struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

#[repr(C)]
pub(crate) struct rbd_image_watcher_t {
    pub addr: *mut c_char,
    pub id: i64,
    pub cookie: u64,
}

#[repr(C)]
pub(crate) struct rbd_snap_info_t {
    pub id: u64,
    pub size: u64,
    pub name: *const c_char,
}

#[repr(C)]
pub(crate) struct notify_ack_t {
    pub notifier_id: u64,
    pub cookie: u64,
    pub payload: *mut c_char,
    pub payload_len: u64,
}

#[repr(C)]
pub(crate) struct notify_timeout_t {
    pub notifier_id: u64,
    pub cookie: u64,
}

#[link(name = "rados")]
extern "C" {
    pub(crate) fn rados_create2(
        pcluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    pub(crate) fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub(crate) fn rados_conf_parse_env(cluster: rados_t, var: *const c_char) -> c_int;
    pub(crate) fn rados_conf_set(
        cluster: rados_t,
        option: *const c_char,
        value: *const c_char,
    ) -> c_int;
    pub(crate) fn rados_conf_get(
        cluster: rados_t,
        option: *const c_char,
        buf: *mut c_char,
        len: size_t,
    ) -> c_int;
    pub(crate) fn rados_connect(cluster: rados_t) -> c_int;
    pub(crate) fn rados_shutdown(cluster: rados_t);
    pub(crate) fn rados_cluster_fsid(cluster: rados_t, buf: *mut c_char, len: size_t) -> c_int;
    pub(crate) fn rados_wait_for_latest_osdmap(cluster: rados_t) -> c_int;
    pub(crate) fn rados_mon_command(
        cluster: rados_t,
        cmd: *mut *const c_char,
        cmdlen: size_t,
        inbuf: *const c_char,
        inbuflen: size_t,
        outbuf: *mut *mut c_char,
        outbuflen: *mut size_t,
        outs: *mut *mut c_char,
        outslen: *mut size_t,
    ) -> c_int;
    pub(crate) fn rados_buffer_free(buf: *mut c_char);
    pub(crate) fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub(crate) fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub(crate) fn rados_ioctx_get_id(io: rados_ioctx_t) -> i64;
    pub(crate) fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    pub(crate) fn rados_read(
        io: rados_ioctx_t,
        oid: *const c_char,
        buf: *mut c_char,
        len: size_t,
        off: u64,
    ) -> c_int;
    pub(crate) fn rados_notify2(
        io: rados_ioctx_t,
        o: *const c_char,
        buf: *const c_char,
        buf_len: c_int,
        timeout_ms: u64,
        reply_buffer: *mut *mut c_char,
        reply_buffer_len: *mut size_t,
    ) -> c_int;
    pub(crate) fn rados_create_write_op() -> rados_write_op_t;
    pub(crate) fn rados_release_write_op(write_op: rados_write_op_t);
    pub(crate) fn rados_write_op_assert_exists(write_op: rados_write_op_t);
    pub(crate) fn rados_write_op_omap_cmp(
        write_op: rados_write_op_t,
        key: *const c_char,
        comparison_operator: u8,
        val: *const c_char,
        val_len: size_t,
        prval: *mut c_int,
    );
    pub(crate) fn rados_write_op_omap_set(
        write_op: rados_write_op_t,
        keys: *const *const c_char,
        vals: *const *const c_char,
        lens: *const size_t,
        num: size_t,
    );
    pub(crate) fn rados_write_op_omap_rm_keys(
        write_op: rados_write_op_t,
        keys: *const *const c_char,
        keys_len: size_t,
    );
    pub(crate) fn rados_write_op_operate(
        write_op: rados_write_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        mtime: *mut libc::time_t,
        flags: c_int,
    ) -> c_int;
    pub(crate) fn rados_create_read_op() -> rados_read_op_t;
    pub(crate) fn rados_release_read_op(read_op: rados_read_op_t);
    pub(crate) fn rados_read_op_omap_get_vals_by_keys(
        read_op: rados_read_op_t,
        keys: *const *const c_char,
        keys_len: size_t,
        iter: *mut rados_omap_iter_t,
        prval: *mut c_int,
    );
    pub(crate) fn rados_read_op_operate(
        read_op: rados_read_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        flags: c_int,
    ) -> c_int;
    pub(crate) fn rados_omap_get_next(
        iter: rados_omap_iter_t,
        key: *mut *mut c_char,
        val: *mut *mut c_char,
        len: *mut size_t,
    ) -> c_int;
    pub(crate) fn rados_omap_get_end(iter: rados_omap_iter_t);
    /// The string is freed with `rados_buffer_free`.
    pub(crate) fn rados_getaddrs(cluster: rados_t, addrs: *mut *mut c_char) -> c_int;
    pub(crate) fn rados_decode_notify_response(
        reply_buffer: *mut c_char,
        reply_buffer_len: size_t,
        acks: *mut *mut notify_ack_t,
        nr_acks: *mut size_t,
        timeouts: *mut *mut notify_timeout_t,
        nr_timeouts: *mut size_t,
    ) -> c_int;
    pub(crate) fn rados_blocklist_add(
        cluster: rados_t,
        client_address: *mut c_char,
        expire_seconds: u32,
    ) -> c_int;
    pub(crate) fn rados_free_notify_response(
        acks: *mut notify_ack_t,
        nr_acks: size_t,
        timeouts: *mut notify_timeout_t,
    );
}

#[link(name = "rbd")]
extern "C" {
    pub(crate) fn rbd_image_options_create(opts: *mut rbd_image_options_t);
    pub(crate) fn rbd_image_options_destroy(opts: rbd_image_options_t);
    pub(crate) fn rbd_image_options_set_uint64(
        opts: rbd_image_options_t,
        optname: c_int,
        optval: u64,
    ) -> c_int;
    pub(crate) fn rbd_create4(
        io: rados_ioctx_t,
        name: *const c_char,
        size: u64,
        opts: rbd_image_options_t,
    ) -> c_int;

    pub(crate) fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub(crate) fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub(crate) fn rbd_close(image: rbd_image_t) -> c_int;

    pub(crate) fn rbd_stat(
        image: rbd_image_t,
        info: *mut rbd_image_info_t,
        infosize: size_t,
    ) -> c_int;
    pub(crate) fn rbd_get_size(image: rbd_image_t, size: *mut u64) -> c_int;
    pub(crate) fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    pub(crate) fn rbd_get_flags(image: rbd_image_t, flags: *mut u64) -> c_int;
    pub(crate) fn rbd_get_stripe_unit(image: rbd_image_t, stripe_unit: *mut u64) -> c_int;
    pub(crate) fn rbd_get_stripe_count(image: rbd_image_t, stripe_count: *mut u64) -> c_int;
    pub(crate) fn rbd_get_id(image: rbd_image_t, id: *mut c_char, id_len: size_t) -> c_int;

    pub(crate) fn rbd_lock_acquire(image: rbd_image_t, lock_mode: c_int) -> c_int;
    pub(crate) fn rbd_is_exclusive_lock_owner(image: rbd_image_t, is_owner: *mut c_int) -> c_int;
    pub(crate) fn rbd_lock_break(
        image: rbd_image_t,
        lock_mode: c_int,
        lock_owner: *const c_char,
    ) -> c_int;
    pub(crate) fn rbd_lock_get_owners(
        image: rbd_image_t,
        lock_mode: *mut c_int,
        lock_owners: *mut *mut c_char,
        max_lock_owners: *mut size_t,
    ) -> c_int;
    pub(crate) fn rbd_list_lockers(
        image: rbd_image_t,
        exclusive: *mut c_int,
        tag: *mut c_char,
        tag_len: *mut size_t,
        clients: *mut c_char,
        clients_len: *mut size_t,
        cookies: *mut c_char,
        cookies_len: *mut size_t,
        addrs: *mut c_char,
        addrs_len: *mut size_t,
    ) -> ssize_t;
    pub(crate) fn rbd_lock_get_owners_cleanup(lock_owners: *mut *mut c_char, count: size_t);
    pub(crate) fn rbd_watchers_list(
        image: rbd_image_t,
        watchers: *mut rbd_image_watcher_t,
        max_watchers: *mut size_t,
    ) -> c_int;
    pub(crate) fn rbd_watchers_list_cleanup(watchers: *mut rbd_image_watcher_t, count: size_t);

    pub(crate) fn rbd_resize2(
        image: rbd_image_t,
        size: u64,
        allow_shrink: bool,
        cb: librbd_progress_fn_t,
        cbdata: *mut c_void,
    ) -> c_int;
    pub(crate) fn rbd_flush(image: rbd_image_t) -> c_int;

    pub(crate) fn rbd_snap_list(
        image: rbd_image_t,
        snaps: *mut rbd_snap_info_t,
        max_snaps: *mut c_int,
    ) -> c_int;
    pub(crate) fn rbd_snap_list_end(snaps: *mut rbd_snap_info_t);
    pub(crate) fn rbd_snap_create2(
        image: rbd_image_t,
        snapname: *const c_char,
        flags: u32,
        cb: librbd_progress_fn_t,
        cbdata: *mut c_void,
    ) -> c_int;
    pub(crate) fn rbd_snap_set(image: rbd_image_t, snapname: *const c_char) -> c_int;

    pub(crate) fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: rbd_diff_cb_t,
        arg: *mut c_void,
    ) -> c_int;

    pub(crate) fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub(crate) fn rbd_aio_get_return_value(c: rbd_completion_t) -> ssize_t;
    pub(crate) fn rbd_aio_release(c: rbd_completion_t);
    pub(crate) fn rbd_aio_read2(
        image: rbd_image_t,
        off: u64,
        len: size_t,
        buf: *mut c_char,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub(crate) fn rbd_aio_write2(
        image: rbd_image_t,
        off: u64,
        len: size_t,
        buf: *const c_char,
        c: rbd_completion_t,
        op_flags: c_int,
    ) -> c_int;
    pub(crate) fn rbd_aio_write_zeroes(
        image: rbd_image_t,
        off: u64,
        len: size_t,
        c: rbd_completion_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    #[cfg(feature = "internals")]
    pub(crate) fn rbd_aio_discard(
        image: rbd_image_t,
        off: u64,
        len: u64,
        c: rbd_completion_t,
    ) -> c_int;
}
