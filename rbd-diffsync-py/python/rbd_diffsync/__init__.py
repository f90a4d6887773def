"""Move the changes between two snapshots of a Ceph RBD image into another image.

What ``rbd export-diff ... - | rbd import-diff - ...`` does, through librbd: checked before
anything is written, with a window of parallel I/O, progress, cancellation, and reruns that
complete what an interrupted transfer left. The destination's end snapshot is created only
after every write succeeded::

    import rbd_diffsync

    cluster = rbd_diffsync.ClusterSpec("/etc/ceph/ceph.conf", id="admin")
    rbd_diffsync.DiffTransfer("rbd/vol@s1", "backups/vol.backup", cluster=cluster).run()
    stats = rbd_diffsync.DiffTransfer(
        "rbd/vol@s2", "backups/vol.backup", from_snap="s1", cluster=cluster
    ).run(progress=lambda p: print(p.phase, p.bytes_done, p.bytes_total))
    print(stats.bytes_written, stats.elapsed)

``DiffTransfer(..., verify=True)`` reads back what it wrote before making the end snapshot, and
:class:`Verify` compares two whole images (``Verify("rbd/vol@s2", "backups/vol.backup@s2",
cluster=cluster).run()``). :func:`sync_many` (or :class:`SyncMany`) runs many transfers at once
and returns each one's :class:`TransferStats` or :class:`Error`, in the order given.

Failures raise :class:`Error`, an :class:`OSError` whose ``errno`` is the exact system errno
(or :data:`DESTINATION_CHANGED`, :data:`MISMATCH`) and whose ``filename`` is the image concerned,
through a subclass per kind, which is also the builtin Python picks for that errno where there is
one (``except FileNotFoundError`` catches :class:`NotFoundError`; :class:`ExistsError` is a
:class:`FileExistsError`, :class:`PermissionDeniedError` a :class:`PermissionError`,
:class:`TimedOutError` a :class:`TimeoutError`, :class:`FencedError` a :class:`BrokenPipeError`):
:class:`NotFoundError`, :class:`ExistsError`, :class:`CancelledError`, :class:`MismatchError`
(whose ``offset`` is the first differing byte), :class:`FencedError` (ESHUTDOWN: this client
was fenced off while it ran, and a rerun took the destination over), ... (``ERROR_CLASSES``
maps each kind's name to its class). A bug of the library raises :class:`PanicException`, a
:class:`BaseException`.

A progress callback's exception, or Ctrl-C, stops a transfer, and is raised once it has
stopped; one that arrives once the end snapshot is being created (phase ``committing``) is
too late to stop it: ``run()`` returns the stats, and the exception goes to
:func:`sys.unraisablehook`. ``rbd_diffsync.cinder`` holds the drop-in for OpenStack cinder's
Ceph backup driver.
"""

from ._native import *  # noqa: F403 (the module's __all__ is the package's)
from ._native import __all__, __version__

# The name TimedOutError had before. Not in __all__: ``from rbd_diffsync import *`` never
# shadows the builtin TimeoutError (which catches TimedOutError too).
from ._native import TimeoutError  # noqa: A004

