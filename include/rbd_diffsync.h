/*
 * rbd_diffsync.h: the C API of rbd-diffsync, which moves the changes between two snapshots of a
 * Ceph RBD image into another image through librbd: what `rbd export-diff | rbd import-diff`
 * does, checked before anything is written, with a window of parallel I/O, progress and
 * cancellation, and reruns that complete an interrupted transfer.
 *
 * Build with `cc prog.c $(pkg-config --cflags --libs rbd_diffsync)`. To link librbd_diffsync.a
 * instead, name it in place of -lrbd_diffsync and add what `pkg-config --static --libs` adds.
 *
 * USE
 *   rbd_diffsync_cluster holds how to reach a cluster (ceph.conf, client, keyring, options);
 *   rbd_diffsync_transfer holds a transfer: source `pool[/ns]/image@snap`, destination image,
 *   optional base snapshot (`from_snap`, for an incremental), clusters and tuning, all set with
 *   setters. rbd_diffsync_transfer_plan() checks it and says what it would do, writing nothing;
 *   rbd_diffsync_transfer_run() does it, creating the end snapshot on the destination only
 *   after every write succeeded. A transfer may be planned and run any number of times.
 *   rbd_diffsync_verify holds a comparison of two whole images (each at a snapshot or HEAD, on
 *   one cluster or two), set up with the same setters; rbd_diffsync_verify_run() reads both
 *   and fails with -RBD_DIFFSYNC_EMISMATCH, naming the first byte that differs, if they differ.
 *   rbd_diffsync_batch runs many transfers at once: rbd_diffsync_batch_add() takes a copy of a
 *   transfer's settings as they are at that moment (later changes to the transfer do not
 *   reach the batch); rbd_diffsync_batch_run() runs them, at most `parallel` at a time, over
 *   one connection per cluster, within one memory budget, one limit of requests and one rate
 *   limit, and returns 0 when all succeeded or the number of volumes that failed (> 0);
 *   rbd_diffsync_batch_volume_result(), _volume_error_message() and _volume_stats() give each
 *   volume's outcome by its index (from 0, in the order added).
 *
 * OWNERSHIP
 *   - Handles are opaque. Each `*_new(&out)` makes one the caller owns and frees with the
 *     matching `*_free`; every `*_free` accepts NULL and does nothing then.
 *   - Strings passed in are borrowed for the call only (the library copies what it keeps); they
 *     are NUL-terminated UTF-8 (paths may be any bytes).
 *   - Strings returned (last_error, strings in rbd_diffsync_stats, rbd_diffsync_plan and
 *     rbd_diffsync_verify_stats) are owned by the handle they came from: valid until the next
 *     call on that handle that replaces them (a failing call for last_error, but none of the
 *     calls of any thread listed under THREADS; a plan or run for the structs) or its free.
 *     Never free them. rbd_diffsync_version, rbd_diffsync_strerror and rbd_diffsync_code_name
 *     return static strings.
 *   - rbd_diffsync_transfer_set_cluster, rbd_diffsync_verify_set_cluster and their
 *     _set_dest_cluster copy the cluster settings: the cluster handle may be changed or freed
 *     afterwards.
 *   - user_data of a progress callback stays the caller's; the optional finalizer given with it
 *     is called exactly once, with user_data, when the callback is replaced or the transfer or
 *     verify or batch handle is freed (after any run using it returned), on the thread doing
 *     that; never if rbd_diffsync_transfer_set_progress() (_verify_set_progress(),
 *     _batch_set_progress()) failed or was given a NULL callback. A batch does not take the
 *     progress callback of the transfers added to it.
 *
 * STRUCTS THAT GROW
 *   rbd_diffsync_stats, rbd_diffsync_plan, rbd_diffsync_verify_stats and
 *   rbd_diffsync_volume_progress start with
 *   `size_t struct_size`: set it to the struct's sizeof before the call. The library fills in
 *   the fields that both its and your version of the struct have and writes that length back;
 *   fields are only ever added at the end, so a program built with an older header keeps
 *   working (the fields it does not know are not written), as does one built with a newer
 *   header against an older library (check struct_size before reading later fields).
 *   rbd_diffsync_progress and rbd_diffsync_batch_progress, which the library hands to you, say
 *   their own size likewise.
 *   A NULL stats or plan pointer means the caller does not want them.
 *
 * ERRORS
 *   Functions return 0 on success, or a negative code: `-errno` with the exact errno of the
 *   failure (-ENOENT: a pool, image, snapshot or ceph.conf is missing; -EINVAL: a malformed
 *   spec, a setting out of range, a NULL argument; -ESHUTDOWN: this client was fenced off the
 *   cluster (blocklisted) while it ran, a rerun of the transfer having found it unresponsive and
 *   taken the destination over, and nothing of this run was committed; -EEXIST, -EBUSY,
 *   -EACCES, -EPERM, -ECANCELED, -ETIMEDOUT, -ENOSPC, -EDQUOT, -EOPNOTSUPP, -EIO and others as
 *   librbd returns them), or the negation of one of the library's own codes, which start at
 *   RBD_DIFFSYNC_LIBRARY_CODE_BASE (4296, beyond every errno): -RBD_DIFFSYNC_EDESTCHANGED,
 *   the destination changed since from_snap; -RBD_DIFFSYNC_EMISMATCH, a verification found
 *   the images different. New codes may be added.
 *   rbd_diffsync_strerror(code) describes any code and rbd_diffsync_code_name(code) names it
 *   ("ENOENT", "EDESTCHANGED"). The full message of the last failed call on a handle, naming
 *   the cluster, image and snapshot concerned, is rbd_diffsync_cluster_last_error /
 *   rbd_diffsync_transfer_last_error / rbd_diffsync_verify_last_error /
 *   rbd_diffsync_batch_last_error; successes leave it, and so do the calls of any thread
 *   listed under THREADS, whose failures are told by their code alone.
 *   rbd_diffsync_batch_run() is the one function that returns a positive count: the volumes
 *   that failed, each with its own code (rbd_diffsync_batch_volume_result) and message
 *   (rbd_diffsync_batch_volume_error_message), the batch's last error then summing them up.
 *   For a failure that names an offset (-RBD_DIFFSYNC_EMISMATCH: the first byte that
 *   differs), rbd_diffsync_transfer_last_error_offset / _verify_last_error_offset give it,
 *   and -ENODATA otherwise.
 *   Every pointer argument is checked: a NULL handle fails with -EINVAL (no message is kept,
 *   there is no handle to keep it), another NULL argument fails with -EINVAL and a message,
 *   unless the function says what NULL means. No panic crosses into C: a bug caught inside the
 *   library fails the call with -ENOTRECOVERABLE and a message (by the code alone for the
 *   calls of any thread).
 *
 * THREADS
 *   - Different handles may be used on different threads at the same time; a handle may move
 *     between threads.
 *   - Calls on one handle must not overlap, except rbd_diffsync_transfer_cancel(),
 *     rbd_diffsync_verify_cancel(), rbd_diffsync_batch_cancel() and
 *     rbd_diffsync_batch_volume_progress(), which may be called from any thread at any time
 *     while the handle lives, also while another thread is in rbd_diffsync_transfer_run() or
 *     _plan(), rbd_diffsync_verify_run() or rbd_diffsync_batch_run() on it. These four never
 *     touch the handle's last error, which another thread may be reading: a failure of theirs
 *     (-EINVAL, -ERANGE...) is told by the code they return alone. No call may overlap a
 *     handle's `*_free`.
 *   - rbd_diffsync_version, _abi_version, _strerror and _code_name are thread-safe.
 *   - rbd_diffsync_transfer_run(), _plan(), rbd_diffsync_verify_run() and
 *     rbd_diffsync_batch_run() block until done. A batch runs its transfers on threads of its
 *     own; its progress callback runs on the thread that called rbd_diffsync_batch_run().
 *     The progress callback runs on the thread that called them, never on another, before
 *     they return; it is called at most every progress interval (default 200 ms), in every
 *     phase, also while a call to a cluster blocks. It returns 0 to go on; nonzero stops the
 *     transfer or verification, which then fails with -ECANCELED (a batch: every volume not
 *     done). It must not unwind out of the call (no C++ exception, no longjmp), nor call the
 *     library on the same handle except its cancel (and for a batch _volume_progress()).
 *
 * VERSIONS
 *   The shared library's soname carries the ABI version (librbd_diffsync.so.1 for
 *   RBD_DIFFSYNC_ABI_VERSION 1). Within one ABI version functions, constants and struct fields
 *   are only added, never changed or removed; the structs grow as said above. A program may
 *   check rbd_diffsync_abi_version() == RBD_DIFFSYNC_ABI_VERSION at start;
 *   rbd_diffsync_version() gives the release ("0.1.0").
 */


#ifndef RBD_DIFFSYNC_H
#define RBD_DIFFSYNC_H

/* Generated by cbindgen 0.29.4 from rbd-diffsync-ffi: do not edit (see its cbindgen.toml). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * The ABI version, in the shared library's soname (`librbd_diffsync.so.1`). It changes only
 * when a function or struct changes incompatibly; additions keep it.
 */
#define RBD_DIFFSYNC_ABI_VERSION 1

/**
 * The library's code for a destination changed since `from_snap`, and not by an interrupted
 * transfer of the same diff. Returned negated, as errnos are: `ret == -RBD_DIFFSYNC_EDESTCHANGED`.
 */
#define RBD_DIFFSYNC_EDESTCHANGED 4296

/**
 * The library's code for two images found different by a verification (a transfer's
 * `set_verify`, or `rbd_diffsync_verify_run`): `*_last_error_offset` gives the first byte that
 * differs. Returned negated: `ret == -RBD_DIFFSYNC_EMISMATCH`.
 */
#define RBD_DIFFSYNC_EMISMATCH 4297

/**
 * The first of the library's own codes: a failed call's code `ret` is one of them when
 * `-ret >= RBD_DIFFSYNC_LIBRARY_CODE_BASE`, and `-errno` otherwise. Beyond every errno.
 */
#define RBD_DIFFSYNC_LIBRARY_CODE_BASE 4296

/**
 * Default window of a transfer, in chunks.
 */
#define RBD_DIFFSYNC_DEFAULT_WINDOW 32

/**
 * Default chunk size of a transfer, in bytes (2 MiB).
 */
#define RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE 2097152

/**
 * Default connect timeout, in milliseconds (30 s), where ceph.conf leaves librados' own
 * (`client_mount_timeout`, 300 s): see `rbd_diffsync_cluster_set_connect_timeout_ms`.
 */
#define RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS 30000

/**
 * Default operation timeout, in milliseconds (60 s), where ceph.conf leaves librados' own
 * (`rados_osd_op_timeout` and `rados_mon_op_timeout`, 0: for ever): see
 * `rbd_diffsync_cluster_set_op_timeout_ms`.
 */
#define RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS 60000

/**
 * Volume state in `rbd_diffsync_volume_progress.state`: waiting for its turn.
 */
#define RBD_DIFFSYNC_VOLUME_QUEUED 0

/**
 * Its transfer runs.
 */
#define RBD_DIFFSYNC_VOLUME_RUNNING 1

/**
 * Its transfer succeeded.
 */
#define RBD_DIFFSYNC_VOLUME_SUCCEEDED 2

/**
 * Its transfer failed, or was cancelled before it started.
 */
#define RBD_DIFFSYNC_VOLUME_FAILED 3

/**
 * A state added after this header.
 */
#define RBD_DIFFSYNC_VOLUME_UNKNOWN 4294967295

/**
 * Default number of volumes a batch transfers at once.
 */
#define RBD_DIFFSYNC_DEFAULT_PARALLEL 4

/**
 * Default memory budget of a batch, in bytes (64 MiB): the data all its transfers hold at
 * once.
 */
#define RBD_DIFFSYNC_DEFAULT_BATCH_BUDGET 67108864

/**
 * Default number of requests in flight at once, for all the transfers of a batch.
 */
#define RBD_DIFFSYNC_DEFAULT_BATCH_REQUESTS 256

/**
 * Phase in `rbd_diffsync_progress.phase`: connecting to the clusters and opening the images.
 */
#define RBD_DIFFSYNC_PHASE_CONNECTING 0

/**
 * Checking the images, taking the destination's lock and computing the diff; for a
 * verification, finding the ranges either image has allocated.
 */
#define RBD_DIFFSYNC_PHASE_SCANNING 1

/**
 * Reading, writing and zeroing.
 */
#define RBD_DIFFSYNC_PHASE_COPYING 2

/**
 * Shrinking the destination if needed, flushing and creating the end snapshot.
 */
#define RBD_DIFFSYNC_PHASE_COMMITTING 3

/**
 * Reading both images and comparing them: a verification, or the check of what a transfer
 * wrote (`rbd_diffsync_transfer_set_verify`); `bytes_done` and `bytes_total` count the bytes
 * compared.
 */
#define RBD_DIFFSYNC_PHASE_VERIFYING 4

/**
 * A phase added after this header: `phase_name` names it.
 */
#define RBD_DIFFSYNC_PHASE_UNKNOWN 4294967295

/**
 * Many transfers run at once: see `rbd_diffsync_batch_new`.
 */
typedef struct rbd_diffsync_batch rbd_diffsync_batch;

/**
 * How to reach a cluster: what the rbd CLI's `-c`, `--id`, `-n`, `--cluster`, `-k`, `-m` and
 * `--<option> <value>` say. Unset, as the rbd CLI with no options: `CEPH_ARGS`, then
 * /etc/ceph/ceph.conf, as `client.admin`. Only settings: nothing connects until a transfer
 * runs.
 */
typedef struct rbd_diffsync_cluster rbd_diffsync_cluster;

/**
 * A transfer of the changes of a source image (at its snapshot, or HEAD) since `from_snap`
 * (or since it was empty) into a destination image: set it up, then plan or run it, as
 * often as wanted.
 */
typedef struct rbd_diffsync_transfer rbd_diffsync_transfer;

/**
 * A comparison of two images, each at a snapshot or HEAD, on one cluster or two: what
 * `rbd export A@S - | md5sum` and `rbd export B@S - | md5sum` tell, with many reads in flight,
 * without reading what neither image has allocated, and naming the first byte that differs.
 * Set it up, then run it, as often as wanted.
 */
typedef struct rbd_diffsync_verify rbd_diffsync_verify;

/**
 * Where a running batch is, as given to its progress callback: the totals of its volumes.
 * Valid only during the call. Fields may be added at the end: `struct_size` is the size the
 * library filled in.
 */
typedef struct rbd_diffsync_batch_progress {
    /**
     * `sizeof` the struct as this library knows it.
     */
    size_t struct_size;
    /**
     * Bytes done, of every volume.
     */
    uint64_t bytes_done;
    /**
     * Bytes in all, of the volumes whose diff is known.
     */
    uint64_t bytes_total;
    /**
     * Volumes waiting for their turn.
     */
    size_t queued;
    /**
     * Volumes whose transfer runs.
     */
    size_t running;
    /**
     * Volumes whose transfer succeeded.
     */
    size_t succeeded;
    /**
     * Volumes whose transfer failed.
     */
    size_t failed;
    /**
     * Nanoseconds since the batch started.
     */
    uint64_t elapsed_ns;
} rbd_diffsync_batch_progress;

/**
 * A batch progress callback: called on the thread running `rbd_diffsync_batch_run`, never on
 * another, at most every progress interval and when a volume ends. Return 0 to go on; any
 * other value cancels the batch as `rbd_diffsync_batch_cancel` would. It must not unwind out
 * of the call; of the library it may call `rbd_diffsync_batch_volume_progress` and
 * `rbd_diffsync_batch_cancel` on the batch, and no other function on it.
 */
typedef int (*rbd_diffsync_batch_progress_cb)(const struct rbd_diffsync_batch_progress *progress,
                                              void *user_data);

/**
 * Releases a callback's `user_data`: called once, when the callback is replaced or the
 * handle freed, and after any run using it has returned, on the thread doing that.
 */
typedef void (*rbd_diffsync_finalizer)(void *user_data);

/**
 * What a finished transfer did, filled in by `rbd_diffsync_transfer_run`. Set `struct_size`
 * to `sizeof(rbd_diffsync_stats)` before the call; the library fills in the fields that fit
 * in both its version of the struct and yours, and sets `struct_size` to the bytes it
 * filled; fields added since ABI version 1 lie beyond `continued_interrupted`, and a caller
 * built with an older header passes the older, smaller size. Its strings are owned by the
 * transfer: valid until its next run or plan, or its free.
 */
typedef struct rbd_diffsync_stats {
    /**
     * In: `sizeof(rbd_diffsync_stats)`; out: the bytes filled in.
     */
    size_t struct_size;
    /**
     * The source, `pool[/namespace]/image[@snap]`, its pool resolved.
     */
    const char *source;
    /**
     * The destination image, `pool[/namespace]/image`, its pool resolved.
     */
    const char *dest;
    /**
     * The base snapshot of an incremental; NULL for a full transfer.
     */
    const char *from_snap;
    /**
     * The snapshot created on the destination; NULL for a source at HEAD.
     */
    const char *end_snap;
    /**
     * Bytes read from the source.
     */
    uint64_t bytes_read;
    /**
     * Bytes written to the destination as data.
     */
    uint64_t bytes_written;
    /**
     * Bytes made to read as zeros on the destination with write_zeroes.
     */
    uint64_t bytes_zeroed;
    /**
     * Zero bytes that needed no request because the destination read zeros there already.
     */
    uint64_t bytes_skipped;
    /**
     * Ranges reported by the source's diff (after merging neighbours of the same kind).
     */
    uint64_t extents;
    /**
     * Size of the diff: the bytes of all those ranges.
     */
    uint64_t diff_bytes;
    /**
     * The source size at the end snapshot, which the destination now has.
     */
    uint64_t image_size;
    /**
     * Wall time of the whole transfer in nanoseconds, checks included.
     */
    uint64_t elapsed_ns;
    /**
     * Of that, the time spent creating the end snapshot (the commit marker).
     */
    uint64_t snapshot_elapsed_ns;
    /**
     * Diff bytes handled per second of wall time.
     */
    double throughput;
    /**
     * Whether the transfer created the destination image.
     */
    bool created_destination;
    /**
     * Whether the destination held the writes of an interrupted transfer of the same diff,
     * which this one completed.
     */
    bool continued_interrupted;
    /**
     * Bytes of the diff that the interrupted transfer of the very same diff had completed
     * (below its checkpoint), and that this one did not do again.
     */
    uint64_t bytes_resumed;
    /**
     * The address of the killed client of an interrupted transfer into the destination that
     * this transfer fenced off (blocklisted, breaking its exclusive lock if it held it)
     * instead of waiting for its watch to expire; NULL if it fenced none.
     */
    const char *broke_lock_of;
    /**
     * Bytes read back from both images and compared after the writes
     * (`rbd_diffsync_transfer_set_verify`); 0 without.
     */
    uint64_t bytes_verified;
    /**
     * Bytes below the checkpoint of an interrupted transfer that this one compared with the
     * source instead of trusting them, because that transfer had let go of the destination
     * before (another client could have written there since); chunks that differed were
     * rewritten.
     */
    uint64_t bytes_rechecked;
} rbd_diffsync_stats;

/**
 * Where one volume of a batch is, filled in by `rbd_diffsync_batch_volume_progress`; sized
 * as `rbd_diffsync_stats` is (set `struct_size` first).
 */
typedef struct rbd_diffsync_volume_progress {
    /**
     * In: `sizeof(rbd_diffsync_volume_progress)`; out: the bytes filled in.
     */
    size_t struct_size;
    /**
     * One of the `RBD_DIFFSYNC_VOLUME_*` values.
     */
    uint32_t state;
    /**
     * One of the `RBD_DIFFSYNC_PHASE_*` values once its transfer runs;
     * `RBD_DIFFSYNC_PHASE_UNKNOWN` before.
     */
    uint32_t phase;
    /**
     * The phase's name (static), or NULL before its transfer runs.
     */
    const char *phase_name;
    /**
     * Bytes of its transfer done.
     */
    uint64_t bytes_done;
    /**
     * Bytes of its transfer in all, as far as known; 0 until its copy starts.
     */
    uint64_t bytes_total;
} rbd_diffsync_volume_progress;

/**
 * Where a running transfer or verification is, as given to the progress callback. Valid only
 * during the call. Fields may be added at the end: `struct_size` is the size the library
 * filled in.
 */
typedef struct rbd_diffsync_progress {
    /**
     * `sizeof` the struct as this library knows it.
     */
    size_t struct_size;
    /**
     * One of the `RBD_DIFFSYNC_PHASE_*` values.
     */
    uint32_t phase;
    /**
     * `"connecting"`, `"scanning"`, `"copying"`, `"verifying"` or `"committing"`.
     */
    const char *phase_name;
    /**
     * Bytes of the phase done (copied, zeroed or found to need nothing; compared).
     */
    uint64_t bytes_done;
    /**
     * Bytes of the phase in all, as far as known; 0 until known. While copying a diff of
     * more than about 8192 pieces it may grow: the diff is scanned a bounded way ahead.
     */
    uint64_t bytes_total;
    /**
     * Nanoseconds since the transfer or verification started.
     */
    uint64_t elapsed_ns;
    /**
     * What it has been waiting for, for more than a second (a cluster's answer, a lock,
     * requests in flight), or NULL.
     */
    const char *waiting_for;
    /**
     * For how many nanoseconds it has waited for that.
     */
    uint64_t waited_ns;
} rbd_diffsync_progress;

/**
 * A progress callback: called on the thread running `rbd_diffsync_transfer_run`,
 * `rbd_diffsync_transfer_plan` or `rbd_diffsync_verify_run`, never on another. Return 0 to go
 * on; any other value stops the call as a cancel would (it then fails with `-ECANCELED`); the
 * end may still be reported after that. It must not unwind (C++ exceptions, longjmp) out of
 * the call.
 */
typedef int (*rbd_diffsync_progress_cb)(const struct rbd_diffsync_progress *progress,
                                        void *user_data);

/**
 * What a transfer would do, filled in by `rbd_diffsync_transfer_plan`; sized and owned as
 * `rbd_diffsync_stats` is.
 */
typedef struct rbd_diffsync_plan {
    /**
     * In: `sizeof(rbd_diffsync_plan)`; out: the bytes filled in.
     */
    size_t struct_size;
    /**
     * The source, `pool[/namespace]/image[@snap]`, its pool resolved.
     */
    const char *source;
    /**
     * The destination image, `pool[/namespace]/image`, its pool resolved.
     */
    const char *dest;
    /**
     * The base of an incremental; NULL for a full transfer.
     */
    const char *from_snap;
    /**
     * The snapshot the transfer would create on the destination; NULL for a source at HEAD.
     */
    const char *end_snap;
    /**
     * The source size, which the destination will have.
     */
    uint64_t source_size;
    /**
     * The destination's size now; 0 when the transfer creates it.
     */
    uint64_t dest_size;
    /**
     * Ranges of the source's diff (after merging neighbours of the same kind).
     */
    uint64_t extents;
    /**
     * Bytes of those ranges.
     */
    uint64_t diff_bytes;
    /**
     * Bytes to read from the source: the diff's data ranges and ranges of the destination to
     * rewrite (from `resume_from` on).
     */
    uint64_t data_bytes;
    /**
     * Bytes to make read as zeros (some may need no request).
     */
    uint64_t zero_bytes;
    /**
     * Whether the transfer would create the destination.
     */
    bool create_destination;
    /**
     * Whether the destination holds the writes of an interrupted transfer of the same diff,
     * which the transfer would complete.
     */
    bool continues_interrupted;
    /**
     * Whether the transfer would write over data or changes that `set_force` allowed.
     */
    bool overwrites_destination;
    /**
     * Where the transfer would resume: the checkpoint of the interrupted transfer of the very
     * same diff (source image, base and end snapshot), below which it had written
     * everything; 0 when it starts from the beginning.
     */
    uint64_t resume_from;
    /**
     * Bytes of the diff below `resume_from`, done by the interrupted transfer and not again.
     */
    uint64_t bytes_resumed;
} rbd_diffsync_plan;

/**
 * What a verification that found both images equal did, filled in by
 * `rbd_diffsync_verify_run`; sized and owned as `rbd_diffsync_stats` is (its strings by the
 * verify handle).
 */
typedef struct rbd_diffsync_verify_stats {
    /**
     * In: `sizeof(rbd_diffsync_verify_stats)`; out: the bytes filled in.
     */
    size_t struct_size;
    /**
     * The first image, `pool[/namespace]/image[@snap]`, its pool resolved.
     */
    const char *source;
    /**
     * The second image, likewise.
     */
    const char *dest;
    /**
     * The size of both.
     */
    uint64_t image_size;
    /**
     * Bytes read from each image and compared.
     */
    uint64_t bytes_compared;
    /**
     * Bytes allocated on neither image, which read as zeros on both and were not read.
     */
    uint64_t bytes_skipped;
    /**
     * Wall time in nanoseconds, connecting included.
     */
    uint64_t elapsed_ns;
    /**
     * Image bytes verified per second of wall time.
     */
    double throughput;
} rbd_diffsync_verify_stats;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The library's version, such as `"0.1.0"`. Static.
 */
const char *rbd_diffsync_version(void);

/**
 * The ABI version of the library loaded, to compare with `RBD_DIFFSYNC_ABI_VERSION`.
 */
uint32_t rbd_diffsync_abi_version(void);

/**
 * A description of `code` (as returned, negative; a positive errno is taken as well): the
 * system's for an errno (`"No such file or directory"`), the library's for its own codes.
 * Static; thread-safe.
 */
const char *rbd_diffsync_strerror(int code);

/**
 * The symbolic name of `code` (negative or positive), such as `"ENOENT"` or
 * `"EDESTCHANGED"`, or NULL for one the library does not name. Static; thread-safe.
 */
const char *rbd_diffsync_code_name(int code);

/**
 * Makes an empty batch into `*out`, to free with `rbd_diffsync_batch_free`: add transfers
 * with `rbd_diffsync_batch_add`, then run it. At most `parallel` transfers run at once, over
 * one connection per cluster, their data drawn from one memory budget, their requests from
 * one limit and their reads from one rate limit; each is a normal transfer, with every check
 * and guarantee of `rbd_diffsync_transfer_run`, and one that fails does not stop the others.
 */
int rbd_diffsync_batch_new(struct rbd_diffsync_batch **out);

/**
 * Frees a batch, and finalizes its callback's `user_data`. NULL is a no-op. Not while a call
 * on it runs.
 */
void rbd_diffsync_batch_free(struct rbd_diffsync_batch *batch);

/**
 * Adds a volume: a copy of `transfer`'s settings as they are at this moment (source,
 * destination, `from_snap`, clusters, window, chunk size, switches, rate limit, progress
 * interval); changing or freeing `transfer` afterwards does not change the batch. Its
 * progress callback is not taken (the batch has its own), nor does its cancel reach the
 * batch. `-EINVAL` for a NULL `transfer`, or one without a source or a destination; other
 * settings are checked when the batch runs, as that volume's result. Volumes keep the order
 * they were added in, from index 0.
 */
int rbd_diffsync_batch_add(struct rbd_diffsync_batch *batch,
                           const struct rbd_diffsync_transfer *transfer);

/**
 * Volumes transferred at once, 1 to 1024 (default `RBD_DIFFSYNC_DEFAULT_PARALLEL`); the
 * others wait their turn, in the order added. Out of range: `-EINVAL`, and the setting is
 * unchanged.
 */
int rbd_diffsync_batch_set_parallel(struct rbd_diffsync_batch *batch,
                                    uint32_t n);

/**
 * Bytes of data all the transfers of the batch hold at once, librados's receive buffers
 * included (default `RBD_DIFFSYNC_DEFAULT_BATCH_BUDGET`); each transfer's window still bounds
 * what it holds. A request larger than the whole budget still goes, alone. 0: `-EINVAL`, and
 * the setting is unchanged.
 */
int rbd_diffsync_batch_set_memory_budget(struct rbd_diffsync_batch *batch,
                                         uint64_t bytes);

/**
 * Requests in flight at once, for all the transfers of the batch together (default
 * `RBD_DIFFSYNC_DEFAULT_BATCH_REQUESTS`). 0: `-EINVAL`, and the setting is unchanged.
 */
int rbd_diffsync_batch_set_max_requests(struct rbd_diffsync_batch *batch,
                                        uint32_t n);

/**
 * Caps the bytes read by all the transfers of the batch together at `bytes_per_sec` on
 * average; 0 removes the cap (the default). A transfer's own cap
 * (`rbd_diffsync_transfer_set_rate_limit`) applies besides.
 */
int rbd_diffsync_batch_set_rate_limit(struct rbd_diffsync_batch *batch,
                                      uint64_t bytes_per_sec);

/**
 * Calls `callback` with `user_data` during runs of the batch, with the totals of its
 * volumes: on the thread running it only, at most every progress interval (default 200 ms)
 * and when a volume ends. A nonzero return cancels the batch. `finalizer` (may be NULL) is
 * called with `user_data` once the callback is replaced or the batch freed. A NULL `callback`
 * removes the callback; `finalizer` is then not called, nor when this call fails.
 */
int rbd_diffsync_batch_set_progress(struct rbd_diffsync_batch *batch,
                                    rbd_diffsync_batch_progress_cb callback,
                                    void *user_data,
                                    rbd_diffsync_finalizer finalizer);

/**
 * The least time between two calls of the batch's progress callback, in milliseconds
 * (default 200).
 */
int rbd_diffsync_batch_set_progress_interval_ms(struct rbd_diffsync_batch *batch,
                                                uint64_t milliseconds);

/**
 * Runs every volume of the batch, at most `parallel` at a time, and blocks until all have
 * ended. Returns 0 when every volume succeeded (an empty batch too); the number of volumes
 * that failed (> 0) otherwise, the batch's last error then naming the first of them, and
 * `rbd_diffsync_batch_volume_result` giving each one's code; a negative code only when the
 * batch could not run at all (`-EINVAL` for a NULL `batch`). A cancel, or a nonzero return
 * of the progress callback, stops every volume: those running fail with `-ECANCELED` as a
 * cancelled transfer does, those not started with `-ECANCELED` too. A batch may be run again,
 * each volume from its settings as added: a volume cancelled or failed mid-way is then
 * completed, one that succeeded fails with `-EEXIST` (its end snapshot exists).
 */
int rbd_diffsync_batch_run(struct rbd_diffsync_batch *batch);

/**
 * Cancels the run in progress on `batch`, or if none is, the next one to start: every
 * volume stops, those running as `rbd_diffsync_transfer_cancel` stops a transfer, those not
 * started fail with `-ECANCELED` at once. Returns at once; callable from any thread, also
 * while another thread runs the batch, and from its progress callback. It never touches the
 * batch's last error.
 */
int rbd_diffsync_batch_cancel(const struct rbd_diffsync_batch *batch);

/**
 * The number of volumes added to `batch`; 0 for NULL.
 */
size_t rbd_diffsync_batch_volume_count(const struct rbd_diffsync_batch *batch);

/**
 * How volume `index` (from 0, in the order added) ended in the last run: 0 if its transfer
 * succeeded, its negative code if it failed (its message is
 * `rbd_diffsync_batch_volume_error_message`). `-ENODATA` for a volume added since the last
 * run, or before any run; `-ERANGE` for an index beyond the volumes; `-EINVAL` for a NULL
 * batch.
 */
int rbd_diffsync_batch_volume_result(const struct rbd_diffsync_batch *batch,
                                     size_t index);

/**
 * Fills in `*stats` (set `stats->struct_size` first) with what the transfer of volume
 * `index` did in the last run, when it succeeded: 0. Its strings are owned by the batch,
 * valid until its next run or its free. `-ENODATA` when the volume failed or has not run;
 * `-ERANGE` for an index beyond the volumes; `-EINVAL` for a NULL `batch` or `stats`.
 */
int rbd_diffsync_batch_volume_stats(const struct rbd_diffsync_batch *batch,
                                    size_t index,
                                    struct rbd_diffsync_stats *stats);

/**
 * The message of volume `index`'s failure in the last run, naming the cluster, image and
 * snapshot concerned; "" if it succeeded; NULL for a NULL `batch`, an index beyond the
 * volumes or a volume that has not run. Owned by the batch: valid until its next run or its
 * free.
 */
const char *rbd_diffsync_batch_volume_error_message(const struct rbd_diffsync_batch *batch,
                                                    size_t index);

/**
 * Where volume `index` is: during a run as last reported (also from the batch's progress
 * callback, and from any thread), and after it how it ended. Fills in `*out` (set
 * `out->struct_size` first) and returns 0; before any run a volume is queued. `-ERANGE` for
 * an index beyond the volumes; `-EINVAL` for a NULL `batch` or `out`, or an
 * `out->struct_size` too small. A failure is told by the code alone: this function never
 * touches the batch's last error, whose string another thread may be reading (it keeps the
 * message of the batch's last failed call, as it was).
 */
int rbd_diffsync_batch_volume_progress(const struct rbd_diffsync_batch *batch,
                                       size_t index,
                                       struct rbd_diffsync_volume_progress *out);

/**
 * The message of the last call on `batch` that failed (other than with a NULL handle), or ""
 * if none did; after a run with failed volumes, a summary naming the first of them. Owned by
 * `batch`: valid until its next failing call or its free.
 */
const char *rbd_diffsync_batch_last_error(const struct rbd_diffsync_batch *batch);

/**
 * Makes cluster settings with nothing set into `*out`, to free with
 * `rbd_diffsync_cluster_free`.
 */
int rbd_diffsync_cluster_new(struct rbd_diffsync_cluster **out);

/**
 * Frees cluster settings. NULL is a no-op. Transfers given them keep their own copy.
 */
void rbd_diffsync_cluster_free(struct rbd_diffsync_cluster *cluster);

/**
 * Reads this ceph.conf instead of searching for one (`rbd -c`).
 */
int rbd_diffsync_cluster_set_conf(struct rbd_diffsync_cluster *cluster,
                                  const char *path);

/**
 * Connects as `client.<id>` (`rbd --id`); a leading `client.` is accepted.
 */
int rbd_diffsync_cluster_set_id(struct rbd_diffsync_cluster *cluster,
                                const char *id);

/**
 * Connects as this entity, `type.id` such as `client.backup` (`rbd -n`).
 */
int rbd_diffsync_cluster_set_name(struct rbd_diffsync_cluster *cluster,
                                  const char *name);

/**
 * The cluster's name (`rbd --cluster`), which selects /etc/ceph/<name>.conf when no
 * ceph.conf is set; `ceph` by default.
 */
int rbd_diffsync_cluster_set_cluster_name(struct rbd_diffsync_cluster *cluster,
                                          const char *cluster_name);

/**
 * Uses this keyring instead of the one ceph.conf names (`rbd -k`).
 */
int rbd_diffsync_cluster_set_keyring(struct rbd_diffsync_cluster *cluster,
                                     const char *path);

/**
 * Connects to these monitors (`rbd -m`), a comma-separated list of `host[:port]`, instead of
 * those ceph.conf names.
 */
int rbd_diffsync_cluster_set_mon_host(struct rbd_diffsync_cluster *cluster,
                                      const char *addresses);

/**
 * Gives up connecting after this many milliseconds (librados' `client_mount_timeout`):
 * `RBD_DIFFSYNC_DEFAULT_CONNECT_TIMEOUT_MS` unless ceph.conf sets another value than librados'
 * own default (300 s). An unreachable monitor fails then, with `-ETIMEDOUT`; a key the
 * monitors refuse fails within seconds. 0 is refused (`-EINVAL`) by the run that uses it.
 */
int rbd_diffsync_cluster_set_connect_timeout_ms(struct rbd_diffsync_cluster *cluster,
                                                uint64_t milliseconds);

/**
 * Fails an operation that the cluster has not answered after this many milliseconds with
 * `-ETIMEDOUT`, instead of waiting for a stalled OSD or monitor for ever (librados'
 * `rados_osd_op_timeout` and `rados_mon_op_timeout`): `RBD_DIFFSYNC_DEFAULT_OP_TIMEOUT_MS`
 * unless ceph.conf sets them; 0 waits for ever. A transfer that times out leaves no end
 * snapshot, and running it again resumes it.
 */
int rbd_diffsync_cluster_set_op_timeout_ms(struct rbd_diffsync_cluster *cluster,
                                           uint64_t milliseconds);

/**
 * Sets a librados or librbd option (`rbd --<key> <value>`), such as `rbd_default_pool` to
 * `volumes`. Later settings of the same key win.
 */
int rbd_diffsync_cluster_set_option(struct rbd_diffsync_cluster *cluster,
                                    const char *key,
                                    const char *value);

/**
 * The message of the last call on `cluster` that failed (other than with a NULL handle), or
 * "" if none did. Owned by `cluster`: valid until its next failing call or its free.
 */
const char *rbd_diffsync_cluster_last_error(const struct rbd_diffsync_cluster *cluster);

/**
 * Makes an empty transfer into `*out`, to free with `rbd_diffsync_transfer_free`. Set at
 * least its source and destination before planning or running it.
 */
int rbd_diffsync_transfer_new(struct rbd_diffsync_transfer **out);

/**
 * Frees a transfer, and finalizes its callback's `user_data`. NULL is a no-op. Not while a
 * call on it runs.
 */
void rbd_diffsync_transfer_free(struct rbd_diffsync_transfer *transfer);

/**
 * The source, `[pool[/namespace]/]image[@snap]`. Without `@snap` the transfer reads HEAD and
 * creates no snapshot on the destination. `-EINVAL` for a malformed spec.
 */
int rbd_diffsync_transfer_set_source(struct rbd_diffsync_transfer *transfer,
                                     const char *spec);

/**
 * The destination image, `[pool[/namespace]/]image` (no snapshot: the one created is named
 * after the source's). `-EINVAL` for a malformed spec.
 */
int rbd_diffsync_transfer_set_dest(struct rbd_diffsync_transfer *transfer,
                                   const char *spec);

/**
 * Transfers only what changed since this snapshot, which must exist on both images: an
 * incremental. NULL makes the transfer full again (the default).
 */
int rbd_diffsync_transfer_set_from_snap(struct rbd_diffsync_transfer *transfer,
                                        const char *snap);

/**
 * The source's cluster, and the destination's unless `rbd_diffsync_transfer_set_dest_cluster`
 * says otherwise. The settings are copied: `cluster` may be changed or freed afterwards.
 */
int rbd_diffsync_transfer_set_cluster(struct rbd_diffsync_transfer *transfer,
                                      const struct rbd_diffsync_cluster *cluster);

/**
 * The destination's cluster, when it is not the source's; NULL for the source's again. The
 * settings are copied.
 */
int rbd_diffsync_transfer_set_dest_cluster(struct rbd_diffsync_transfer *transfer,
                                           const struct rbd_diffsync_cluster *cluster);

/**
 * The window of I/O in flight, in chunks (default `RBD_DIFFSYNC_DEFAULT_WINDOW`, at most
 * 1024): the transfer holds at most window × chunk size bytes of data at once. Checked when
 * the transfer is planned or run (`-EINVAL`).
 */
int rbd_diffsync_transfer_set_window(struct rbd_diffsync_transfer *transfer,
                                     uint32_t chunks);

/**
 * The largest data request in bytes (default `RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE`): a multiple
 * of 4 KiB between 4 KiB and 1 GiB. Checked when the transfer is planned or run (`-EINVAL`).
 */
int rbd_diffsync_transfer_set_chunk_size(struct rbd_diffsync_transfer *transfer,
                                         uint64_t bytes);

/**
 * Diffs by whole objects, as `rbd export-diff --whole-object`: cheaper to compute with
 * fast-diff, more data to read. Off by default.
 */
int rbd_diffsync_transfer_set_whole_object(struct rbd_diffsync_transfer *transfer,
                                           bool on);

/**
 * Allows writing over what the destination holds (the command line's `--force`): a full
 * transfer into an image that has snapshots, holds data or is open by another client, and an
 * incremental into an image changed since `from_snap` (the changed ranges are rewritten from
 * the source). Off by default: those are refused with `-EEXIST`, `-EBUSY` or
 * `-RBD_DIFFSYNC_EDESTCHANGED`.
 */
int rbd_diffsync_transfer_set_force(struct rbd_diffsync_transfer *transfer,
                                    bool on);

/**
 * After the writes, before the end snapshot, reads back every range the run wrote or zeroed
 * from both images (the source at its end snapshot, the destination at HEAD) and compares
 * them (the command line's `--verify`; `stats->bytes_verified`). A difference fails the run
 * with `-RBD_DIFFSYNC_EMISMATCH`, `rbd_diffsync_transfer_last_error_offset` giving the first
 * differing byte, and no end snapshot is created: running it again rewrites those ranges.
 * Off by default.
 */
int rbd_diffsync_transfer_set_verify(struct rbd_diffsync_transfer *transfer,
                                     bool on);

/**
 * Caps the bytes the transfer reads from the source at `bytes_per_sec` on average (the
 * command line's `--max-rate`); 0 removes the cap (the default). Only data counts: ranges
 * made to read as zeros are not held back. While it waits for the cap the transfer still
 * reports progress and can be cancelled. In a batch (`rbd_diffsync_batch_add`) its own cap
 * applies besides the batch's. With verification on, its reads of the source are held back
 * by the cap too.
 */
int rbd_diffsync_transfer_set_rate_limit(struct rbd_diffsync_transfer *transfer,
                                         uint64_t bytes_per_sec);

/**
 * Calls `callback` with `user_data` during plans and runs: on their thread only, at most
 * every progress interval (default 200 ms) in every phase, also while a call to the cluster
 * blocks, and at every change of phase and at the end. A nonzero return stops the transfer.
 * `finalizer` (may be NULL) is called with `user_data` once the callback is replaced or the
 * transfer freed. A NULL `callback` removes the callback; `finalizer` is then not called, nor
 * when this call fails: `user_data` stays the caller's.
 */
int rbd_diffsync_transfer_set_progress(struct rbd_diffsync_transfer *transfer,
                                       rbd_diffsync_progress_cb callback,
                                       void *user_data,
                                       rbd_diffsync_finalizer finalizer);

/**
 * The least time between two progress calls, in milliseconds (default 200).
 */
int rbd_diffsync_transfer_set_progress_interval_ms(struct rbd_diffsync_transfer *transfer,
                                                   uint64_t milliseconds);

/**
 * Runs every check and computes the diff, writing nothing (the destination is opened
 * read-only and not locked): what a run would do now. Fills in `*plan` unless it is NULL;
 * set `plan->struct_size` first.
 */
int rbd_diffsync_transfer_plan(struct rbd_diffsync_transfer *transfer,
                               struct rbd_diffsync_plan *plan);

/**
 * Checks everything, then transfers. Nothing is written unless every check passed; the
 * destination's end snapshot is created only after every write succeeded, so a failed,
 * cancelled or killed run leaves none, and running it again completes it. Blocks until done.
 * Fills in `*stats` unless it is NULL; set `stats->struct_size` first.
 */
int rbd_diffsync_transfer_run(struct rbd_diffsync_transfer *transfer,
                              struct rbd_diffsync_stats *stats);

/**
 * Stops the run or plan in progress on `transfer`, or if none is, the next one to start: it
 * then fails with `-ECANCELED`, requests in flight drained, no end snapshot created. Once the
 * end snapshot is being created it is too late: the run completes. Returns at once; callable
 * from any thread, also while another thread runs the transfer. It never touches the
 * transfer's last error.
 */
int rbd_diffsync_transfer_cancel(const struct rbd_diffsync_transfer *transfer);

/**
 * The message of the last call on `transfer` that failed (other than with a NULL handle),
 * naming the cluster, image and snapshot concerned, or "" if none did. Owned by `transfer`:
 * valid until its next failing call or its free.
 */
const char *rbd_diffsync_transfer_last_error(const struct rbd_diffsync_transfer *transfer);

/**
 * The offset that the last call on `transfer` that failed named: for
 * `-RBD_DIFFSYNC_EMISMATCH`, the first byte at which the images differ. Writes it into `*out`
 * and returns 0; `-ENODATA` if that failure named no offset, or no call failed; `-EINVAL` for
 * a NULL `transfer` or `out`.
 */
int rbd_diffsync_transfer_last_error_offset(const struct rbd_diffsync_transfer *transfer,
                                            uint64_t *out);

/**
 * Makes an empty verification into `*out`, to free with `rbd_diffsync_verify_free`. Set its
 * two images before running it.
 */
int rbd_diffsync_verify_new(struct rbd_diffsync_verify **out);

/**
 * Frees a verification, and finalizes its callback's `user_data`. NULL is a no-op. Not while
 * a call on it runs.
 */
void rbd_diffsync_verify_free(struct rbd_diffsync_verify *verify);

/**
 * The first image, `[pool[/namespace]/]image[@snap]`; without `@snap`, HEAD. `-EINVAL` for a
 * malformed spec.
 */
int rbd_diffsync_verify_set_source(struct rbd_diffsync_verify *verify,
                                   const char *spec);

/**
 * The second image, `[pool[/namespace]/]image[@snap]`; without `@snap`, HEAD. `-EINVAL` for
 * a malformed spec.
 */
int rbd_diffsync_verify_set_dest(struct rbd_diffsync_verify *verify,
                                 const char *spec);

/**
 * The first image's cluster, and the second's unless `rbd_diffsync_verify_set_dest_cluster`
 * says otherwise. The settings are copied: `cluster` may be changed or freed afterwards.
 */
int rbd_diffsync_verify_set_cluster(struct rbd_diffsync_verify *verify,
                                    const struct rbd_diffsync_cluster *cluster);

/**
 * The second image's cluster, when it is not the first's; NULL for the first's again. The
 * settings are copied.
 */
int rbd_diffsync_verify_set_dest_cluster(struct rbd_diffsync_verify *verify,
                                         const struct rbd_diffsync_cluster *cluster);

/**
 * The window of reads in flight, in chunks (default `RBD_DIFFSYNC_DEFAULT_WINDOW`, at most
 * 1024): at most window × chunk size bytes are held at once. Checked when run (`-EINVAL`).
 */
int rbd_diffsync_verify_set_window(struct rbd_diffsync_verify *verify,
                                   uint32_t chunks);

/**
 * The largest read in bytes (default `RBD_DIFFSYNC_DEFAULT_CHUNK_SIZE`): a multiple of 4 KiB
 * between 4 KiB and 1 GiB. Checked when run (`-EINVAL`).
 */
int rbd_diffsync_verify_set_chunk_size(struct rbd_diffsync_verify *verify,
                                       uint64_t bytes);

/**
 * Calls `callback` with `user_data` during runs, as `rbd_diffsync_transfer_set_progress`
 * does (same rules, same `finalizer`): the phases are connecting, scanning and verifying.
 */
int rbd_diffsync_verify_set_progress(struct rbd_diffsync_verify *verify,
                                     rbd_diffsync_progress_cb callback,
                                     void *user_data,
                                     rbd_diffsync_finalizer finalizer);

/**
 * The least time between two progress calls, in milliseconds (default 200).
 */
int rbd_diffsync_verify_set_progress_interval_ms(struct rbd_diffsync_verify *verify,
                                                 uint64_t milliseconds);

/**
 * Compares the two images, writing nothing; blocks until done. 0 when they are equal,
 * filling in `*stats` unless it is NULL (set `stats->struct_size` first);
 * `-RBD_DIFFSYNC_EMISMATCH` when they differ, in content or size, with
 * `rbd_diffsync_verify_last_error_offset` giving the first byte that differs (for sizes that
 * differ, the smaller size unless the content differs before). An image read at HEAD while
 * another client writes it may of course differ.
 */
int rbd_diffsync_verify_run(struct rbd_diffsync_verify *verify,
                            struct rbd_diffsync_verify_stats *stats);

/**
 * Stops the run in progress on `verify`, or if none is, the next one to start: it then fails
 * with `-ECANCELED`. Returns at once; callable from any thread, also while another thread
 * runs the verification. It never touches the verification's last error.
 */
int rbd_diffsync_verify_cancel(const struct rbd_diffsync_verify *verify);

/**
 * The message of the last call on `verify` that failed (other than with a NULL handle), or ""
 * if none did. Owned by `verify`: valid until its next failing call or its free.
 */
const char *rbd_diffsync_verify_last_error(const struct rbd_diffsync_verify *verify);

/**
 * The offset that the last call on `verify` that failed named: for `-RBD_DIFFSYNC_EMISMATCH`,
 * the first byte at which the images differ. Writes it into `*out` and returns 0; `-ENODATA`
 * if that failure named no offset, or no call failed; `-EINVAL` for a NULL `verify` or `out`.
 */
int rbd_diffsync_verify_last_error_offset(const struct rbd_diffsync_verify *verify,
                                          uint64_t *out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* RBD_DIFFSYNC_H */
