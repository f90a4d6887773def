# The typed surface of the native module, kept by hand; mypy's stubtest checks it against the
# built module (scripts/test-python.sh).
import os
from typing import Callable, Final, Iterable, Literal, Mapping, Optional, Union, final

_Path = Union[str, "os.PathLike[str]"]
_PhaseName = Literal["connecting", "scanning", "copying", "committing"]
_ErrorKindName = Literal[
    "invalid_argument",
    "not_found",
    "exists",
    "permission_denied",
    "busy",
    "destination_changed",
    "cancelled",
    "timeout",
    "no_space",
    "unsupported",
    "io",
    "other",
]

__all__ = [
    "__version__",
    "BusyError",
    "CancelledError",
    "ClusterSpec",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_WINDOW",
    "DESTINATION_CHANGED",
    "DestinationChangedError",
    "DiffTransfer",
    "ERROR_CLASSES",
    "Error",
    "ExistsError",
    "InvalidArgumentError",
    "IoError",
    "NoSpaceError",
    "NotFoundError",
    "OtherError",
    "PermissionDeniedError",
    "Plan",
    "Progress",
    "TimeoutError",
    "TransferStats",
    "UnsupportedError",
]

__version__: Final[str]
DEFAULT_CHUNK_SIZE: Final[int]
DEFAULT_WINDOW: Final[int]
DESTINATION_CHANGED: Final[int]
ERROR_CLASSES: Final[dict[str, type[Error]]]

class Error(OSError):
    """A failed transfer: ``errno`` is the exact system errno, or a code of the library's own
    (:data:`DESTINATION_CHANGED`); ``kind`` names the error kind."""

    kind: str
    image: Optional[str]
    snap: Optional[str]

class InvalidArgumentError(Error):
    """A malformed spec, a setting out of range or a combination that cannot work (EINVAL)."""

class NotFoundError(Error):
    """A pool, image, snapshot or configuration file does not exist (ENOENT)."""

class ExistsError(Error):
    """The end snapshot exists on the destination, or a full transfer would overwrite an image
    that holds data (EEXIST)."""

class PermissionDeniedError(Error):
    """The client lacks a capability, or the cluster refused it (EACCES, EPERM)."""

class BusyError(Error):
    """The destination is locked or open by another client (EBUSY)."""

class DestinationChangedError(Error):
    """The destination changed since from_snap, not by an interrupted transfer of the same
    diff (errno DESTINATION_CHANGED)."""

class CancelledError(Error):
    """cancel(), or a progress callback returning False, stopped the transfer (ECANCELED)."""

class TimeoutError(Error):
    """A cluster did not answer in time (ETIMEDOUT)."""

class NoSpaceError(Error):
    """The pool or the cluster is full, or a quota is reached (ENOSPC, EDQUOT)."""

class UnsupportedError(Error):
    """The cluster or the image does not support an operation (EOPNOTSUPP, ENOSYS)."""

class IoError(Error):
    """A read, write or zeroing of image data failed (EIO and other errnos of data I/O)."""

class OtherError(Error):
    """Anything else; errno says what."""

@final
class ClusterSpec:
    """How to connect to a cluster, as the rbd CLI's global options say it: ``conf`` is
    ``-c``, ``id`` is ``--id`` (or ``name``, ``-n``), ``keyring`` is ``-k``, ``mon_host`` is
    ``-m``, ``options`` are ``--<key> <value>``. What is left unset is taken as the rbd CLI
    takes it: from ``CEPH_ARGS``, then librados' defaults (``client.admin``, and the conf
    search ``$CEPH_CONF``, ``/etc/ceph/ceph.conf``, ...)."""

    def __new__(
        cls,
        conf: Optional[_Path] = None,
        *,
        id: Optional[str] = None,
        name: Optional[str] = None,
        cluster_name: Optional[str] = None,
        keyring: Optional[_Path] = None,
        mon_host: Optional[str] = None,
        connect_timeout: Optional[float] = None,
        options: Union[Mapping[str, str], Iterable[tuple[str, str]], None] = None,
    ) -> ClusterSpec: ...
    @property
    def conf(self) -> Optional[str]: ...
    @property
    def name(self) -> Optional[str]: ...
    @property
    def cluster_name(self) -> Optional[str]: ...
    @property
    def keyring(self) -> Optional[str]: ...
    @property
    def mon_host(self) -> Optional[str]: ...
    @property
    def connect_timeout(self) -> Optional[float]: ...
    @property
    def options(self) -> list[tuple[str, str]]: ...

@final
class Progress:
    """Where a running transfer is: its phase, bytes done of bytes in all (0 until the diff is
    known), seconds since it started, and what it has waited for over a second, if anything."""

    @property
    def phase(self) -> _PhaseName: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def waiting_for(self) -> Optional[str]: ...
    @property
    def waited(self) -> float: ...

@final
class TransferStats:
    """What a finished transfer did; times in seconds, throughput in diff bytes per second."""

    @property
    def source(self) -> str: ...
    @property
    def dest(self) -> str: ...
    @property
    def from_snap(self) -> Optional[str]: ...
    @property
    def end_snap(self) -> Optional[str]: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...
    @property
    def bytes_zeroed(self) -> int: ...
    @property
    def bytes_skipped(self) -> int: ...
    @property
    def extents(self) -> int: ...
    @property
    def diff_bytes(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def created_destination(self) -> bool: ...
    @property
    def continued_interrupted(self) -> bool: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def snapshot_elapsed(self) -> float: ...
    @property
    def throughput(self) -> float: ...

@final
class Plan:
    """What a transfer would do now, found by DiffTransfer.plan() without writing anything."""

    @property
    def source(self) -> str: ...
    @property
    def dest(self) -> str: ...
    @property
    def from_snap(self) -> Optional[str]: ...
    @property
    def end_snap(self) -> Optional[str]: ...
    @property
    def source_size(self) -> int: ...
    @property
    def dest_size(self) -> Optional[int]: ...
    @property
    def create_destination(self) -> bool: ...
    @property
    def continues_interrupted(self) -> bool: ...
    @property
    def overwrites_destination(self) -> bool: ...
    @property
    def extents(self) -> int: ...
    @property
    def diff_bytes(self) -> int: ...
    @property
    def data_bytes(self) -> int: ...
    @property
    def zero_bytes(self) -> int: ...

_ProgressCallback = Callable[[Progress], Optional[bool]]

@final
class DiffTransfer:
    """A transfer of ``source`` (``pool[/ns]/image[@snap]``; without ``@snap`` its HEAD, and
    then no snapshot is made on the destination) into the image ``dest``
    (``pool[/ns]/image``), of what changed since ``from_snap`` (an incremental) or since the
    image was empty (a full transfer).

    ``cluster`` is the source's cluster, and the destination's unless ``dest_cluster`` is
    given. ``chunk_size`` (bytes, a multiple of 4096) and ``window`` (chunks in flight) bound
    the memory used; ``whole_object`` diffs by whole objects; ``force`` allows writing over
    what the destination holds (a full transfer into an image with data or snapshots, an
    incremental into an image changed since ``from_snap``). Malformed specs and negative
    numbers raise InvalidArgumentError here; other settings out of range, from plan()/run().
    """

    def __new__(
        cls,
        source: str,
        dest: str,
        *,
        from_snap: Optional[str] = None,
        cluster: Optional[ClusterSpec] = None,
        dest_cluster: Optional[ClusterSpec] = None,
        chunk_size: int = 2097152,
        window: int = 16,
        whole_object: bool = False,
        force: bool = False,
        progress_interval: float = 0.2,
    ) -> DiffTransfer: ...
    def plan(self, progress: Optional[_ProgressCallback] = None) -> Plan:
        """Runs every check and computes the diff, writing nothing: what run() would do now."""
    def run(self, progress: Optional[_ProgressCallback] = None) -> TransferStats:
        """Checks everything, then transfers, with the GIL released. ``progress`` is called
        on this thread at every change of phase, when the total is reached, and otherwise at
        most every ``progress_interval`` seconds. Returning False stops the transfer
        (CancelledError); an exception it raises, or a KeyboardInterrupt (Ctrl-C), stops it too
        and is raised once the transfer has stopped. A stopped transfer leaves no end snapshot
        on the destination, and running it again completes it."""
    def cancel(self) -> None:
        """Stops the running transfer, from any thread, and every later run() of this object:
        run() raises CancelledError."""
    @property
    def cancelled(self) -> bool: ...
    @property
    def source(self) -> str: ...
    @property
    def dest(self) -> str: ...
    @property
    def from_snap(self) -> Optional[str]: ...
