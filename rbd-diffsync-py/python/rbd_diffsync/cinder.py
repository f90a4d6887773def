"""OpenStack cinder's Ceph backup driver on rbd_diffsync instead of the rbd CLI pipe.

cinder's ``CephBackupDriver._rbd_diff_transfer`` runs ``rbd export-diff ... - | rbd import-diff
- ...``; :func:`rbd_diff_transfer` does the same transfer through librbd, with the same
arguments and the same outcome, and raises ``cinder.exception.BackupRBDOperationFailed`` on
failure so that the driver's fallback and clean-up paths keep working.

Switch a cinder-backup service over with one line of cinder.conf::

    backup_driver = rbd_diffsync.cinder.CephBackupDriver

(and back with ``cinder.backup.drivers.ceph.CephBackupDriver``), or, where that line cannot
change, call :func:`install` before the driver runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional

from ._native import ClusterSpec, DiffTransfer, Error, TransferStats

__all__ = ["rbd_diff_transfer", "install", "uninstall"]

LOG = logging.getLogger(__name__)

# What the driver lets through as it is: how Python and eventlet stop a thread of their own
# accord (Ctrl-C, exit, the end of a generator or of a green thread), no failure of the
# transfer. Anything else the native call raises fails the backup.
_LET_THROUGH: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)
try:
    from greenlet import GreenletExit
except ImportError:  # no eventlet either, which needs greenlet
    pass
else:
    _LET_THROUGH += (GreenletExit,)


def _cluster(user: Optional[str], conf: Optional[str]) -> ClusterSpec:
    # As the rbd CLI without --id/--conf: CEPH_ARGS, then client.admin and librados' search
    # for a ceph.conf ($CEPH_CONF, /etc/ceph/ceph.conf, ...). The library's timeouts are kept
    # on purpose (DEFAULT_CONNECT_TIMEOUT, DEFAULT_OP_TIMEOUT, where ceph.conf sets none): a
    # stalled cluster then fails the backup, and cinder's fallback and clean-up run, instead
    # of the backup hanging for ever as the pipe does.
    return ClusterSpec(conf or None, id=user or None)


def _failure(error: BaseException, detail: str) -> BaseException:
    """cinder's BackupRBDOperationFailed saying ``detail`` where cinder is importable, else
    ``error`` itself."""
    try:
        from cinder import exception
    except ImportError:
        return error
    return exception.BackupRBDOperationFailed("RBD diff op failed - (%s)" % detail)


class _Carried(Exception):
    """A failure of the native call that is no Exception (pyo3's PanicException, a
    BaseException), carried back from eventlet's pool of threads: the pool hands an
    Exception back to the green thread waiting for it, but any other BaseException ends its
    worker thread and leaves that green thread waiting for ever."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _carrying(run: Callable[[], TransferStats]) -> TransferStats:
    try:
        return run()
    except Exception:
        raise
    except _LET_THROUGH:
        raise
    except BaseException as e:
        raise _Carried(e) from e


def _run(transfer: DiffTransfer) -> TransferStats:
    # Under eventlet (cinder-backup's default concurrency) a blocking call stalls every green
    # thread, heartbeats included: run the transfer on eventlet's pool of native threads, as
    # cinder does its other librbd calls.
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        from eventlet import tpool

        try:
            stats: TransferStats = tpool.execute(_carrying, transfer.run)
            return stats
        except _Carried as carried:
            error = carried.error
        # Raised here, out of the handler, as run() raised it.
        raise error
    return transfer.run()


def rbd_diff_transfer(
    src_name: str,
    src_pool: str,
    dest_name: str,
    dest_pool: str,
    src_user: Optional[str],
    src_conf: Optional[str],
    dest_user: Optional[str],
    dest_conf: Optional[str],
    src_snap: Optional[str] = None,
    from_snap: Optional[str] = None,
) -> TransferStats:
    """Transfers what changed in ``src_pool/src_name`` since ``from_snap`` (or since it was
    empty) into ``dest_pool/dest_name``: what cinder's ``_rbd_diff_transfer`` does with
    ``rbd export-diff | rbd import-diff``.

    ``src_snap`` is the end point: without it the image's HEAD, and no snapshot is made on the
    destination; with it the destination gets that snapshot, once every write has succeeded.
    A user or a conf of None or empty means what the rbd CLI would use without ``--id`` or
    ``--conf``; the library's timeouts apply (an operation unanswered for
    ``DEFAULT_OP_TIMEOUT``, 60 s, unless ceph.conf says otherwise, fails the transfer). Like import-diff, the transfer writes over what the destination holds (the
    empty base image cinder creates for a full backup, a volume being restored, the writes of
    an interrupted transfer); unlike it, it also rewrites from the source whatever the
    destination changed since ``from_snap``, so that the destination reads as the source.

    Raises ``cinder.exception.BackupRBDOperationFailed`` when cinder is importable, and
    :class:`rbd_diffsync.Error` otherwise; the rbd_diffsync error is the ``__cause__`` of the
    cinder one. Anything else the call raises (a bug: :class:`rbd_diffsync.PanicException`,
    a BaseException that cinder's handlers and eventlet's pool of threads would let through,
    leaving the backup hanging and its clean-up undone) fails the backup the same way, and is
    logged with its traceback; only KeyboardInterrupt, SystemExit, GeneratorExit and greenlet's
    GreenletExit pass as they are. Returns what the transfer did.
    """
    source = "%s/%s" % (src_pool, src_name)
    if src_snap:
        source += "@%s" % src_snap
    dest = "%s/%s" % (dest_pool, dest_name)
    LOG.debug(
        "Performing differential transfer from '%(src)s' to '%(dest)s' with rbd_diffsync",
        {"src": source, "dest": dest},
    )
    try:
        transfer = DiffTransfer(
            source,
            dest,
            # rbd export-diff takes an empty --from-snap as none.
            from_snap=from_snap or None,
            cluster=_cluster(src_user, src_conf),
            dest_cluster=_cluster(dest_user, dest_conf),
            force=True,
        )
        stats = _run(transfer)
    except Error as e:
        LOG.info(
            "RBD diff op failed - (errno=%(errno)s kind=%(kind)s: %(msg)s)",
            {"errno": e.errno, "kind": e.kind, "msg": e.strerror},
        )
        failure = _failure(e, "errno=%s kind=%s: %s" % (e.errno, e.kind, e.strerror))
        if failure is e:
            raise
        raise failure from e
    except _LET_THROUGH:
        raise
    except BaseException as e:
        detail = "%s: %s" % (type(e).__name__, e)
        LOG.error("RBD diff op failed - (%(detail)s)", {"detail": detail}, exc_info=True)
        failure = _failure(e, detail)
        if failure is e:
            raise
        raise failure from e
    if stats.broke_lock_of:
        LOG.info(
            "Broke the exclusive lock on '%(dest)s' of the killed client %(client)s",
            {"dest": dest, "client": stats.broke_lock_of},
        )
    LOG.debug(
        "Differential transfer to '%(dest)s' done: %(diff)d bytes of diff, %(written)d written, "
        "%(zeroed)d zeroed, %(resumed)d resumed from an interrupted transfer, in %(secs).3fs",
        {
            "dest": dest,
            "diff": stats.diff_bytes,
            "written": stats.bytes_written,
            "zeroed": stats.bytes_zeroed,
            "resumed": stats.bytes_resumed,
            "secs": stats.elapsed,
        },
    )
    return stats


def _driver_rbd_diff_transfer(self: Any, *args: Any, **kwargs: Any) -> None:
    """Copy only extents changed between two points, with rbd_diffsync: cinder's arguments, as
    :func:`rbd_diffsync.cinder.rbd_diff_transfer` takes them."""
    rbd_diff_transfer(*args, **kwargs)


_stock: Optional[Callable[..., None]] = None


def install() -> None:
    """Makes cinder's own ``cinder.backup.drivers.ceph.CephBackupDriver`` transfer with
    rbd_diffsync, in this process, for deployments whose ``backup_driver`` cannot change.
    Calling it again does nothing; :func:`uninstall` undoes it."""
    global _stock
    from cinder.backup.drivers import ceph

    if _stock is None:
        _stock = ceph.CephBackupDriver._rbd_diff_transfer
        ceph.CephBackupDriver._rbd_diff_transfer = _driver_rbd_diff_transfer  # type: ignore[method-assign]


def uninstall() -> None:
    """Gives cinder's ``CephBackupDriver`` back its own ``_rbd_diff_transfer`` (the pipe)."""
    global _stock
    from cinder.backup.drivers import ceph

    if _stock is not None:
        ceph.CephBackupDriver._rbd_diff_transfer = _stock  # type: ignore[method-assign]
        _stock = None


def _make_driver() -> type:
    from cinder.backup.drivers import ceph

    class CephBackupDriver(ceph.CephBackupDriver):  # type: ignore[misc]
        """cinder's Ceph backup driver, transferring with rbd_diffsync instead of the
        ``rbd export-diff | rbd import-diff`` pipe; everything else is cinder's own."""

        _rbd_diff_transfer = _driver_rbd_diff_transfer

    CephBackupDriver.__module__ = __name__
    return CephBackupDriver


def __getattr__(name: str) -> Any:
    # The driver class subclasses cinder's, so it exists only where cinder can be imported,
    # and only once asked for: importing this module needs no cinder.
    if name == "CephBackupDriver":
        cls = _make_driver()
        globals()[name] = cls
        return cls
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
