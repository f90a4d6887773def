# The typed surface of the native module, kept by hand; mypy's stubtest checks it against the
# built module (scripts/test-python.sh).
import builtins
import os
from typing import Callable, Final, Iterable, Literal, Mapping, Optional, Union, final

_Path = Union[str, "os.PathLike[str]"]
_PhaseName = Literal["connecting", "scanning", "copying", "verifying", "committing"]
_VolumeStateName = Literal["queued", "running", "succeeded", "failed"]
_ErrorKindName = Literal[
    "invalid_argument",
    "not_found",
    "exists",
    "permission_denied",
    "busy",
    "fenced",
    "destination_changed",
    "mismatch",
    "cancelled",
    "timeout",
    "no_space",
    "unsupported",
    "io",
    "other",
]

__all__ = [
    "__version__",
    "BatchProgress",
    "BusyError",
    "CancelledError",
    "ClusterSpec",
    "DEFAULT_BATCH_BUDGET",
    "DEFAULT_BATCH_REQUESTS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_OP_TIMEOUT",
    "DEFAULT_PARALLEL",
    "DEFAULT_WINDOW",
    "DESTINATION_CHANGED",
    "DestinationChangedError",
    "DiffTransfer",
    "ERROR_CLASSES",
    "Error",
    "ExistsError",
    "FencedError",
    "InvalidArgumentError",
    "IoError",
    "MISMATCH",
    "MismatchError",
    "NoSpaceError",
    "NotFoundError",
    "OtherError",
    "PanicException",
    "PermissionDeniedError",
    "Plan",
    "Progress",
    "SyncMany",
    "TimedOutError",
    "TransferStats",
    "UnsupportedError",
    "Verify",
    "VerifyStats",
    "VolumeProgress",
    "sync_many",
]

__version__: Final[str]
DEFAULT_CHUNK_SIZE: Final[int]
DEFAULT_WINDOW: Final[int]
DEFAULT_CONNECT_TIMEOUT: Final[float]
DEFAULT_OP_TIMEOUT: Final[float]
DEFAULT_PARALLEL: Final[int]
DEFAULT_BATCH_BUDGET: Final[int]
DEFAULT_BATCH_REQUESTS: Final[int]
DESTINATION_CHANGED: Final[int]
MISMATCH: Final[int]
ERROR_CLASSES: Final[dict[str, type[Error]]]

class Error(OSError):
    """A failed transfer or verification: ``errno`` is the exact system errno, or a code of the
    library's own (:data:`DESTINATION_CHANGED`, :data:`MISMATCH`); ``kind`` names the error
    kind; ``offset`` is the first differing byte of a :class:`MismatchError`, else None."""

    kind: str
    image: Optional[str]
    filename: Optional[str]
    """The image the error concerns, as ``image`` (OSError's own attribute), or None."""
    snap: Optional[str]
    offset: Optional[int]
    results: Optional[list[Union[TransferStats, Error]]]
    """Set on the CancelledError of a cancelled batch (SyncMany.run(), sync_many()): each
    transfer's TransferStats or Error, in the order given; None otherwise."""

class InvalidArgumentError(Error):
    """A malformed spec, a setting out of range or a combination that cannot work (EINVAL)."""

class NotFoundError(Error, FileNotFoundError):
    """A pool, image, snapshot or configuration file does not exist (ENOENT)."""

class ExistsError(Error, FileExistsError):
    """The end snapshot exists on the destination, or a full transfer would overwrite an image
    that holds data (EEXIST)."""

class PermissionDeniedError(Error, PermissionError):
    """The client lacks a capability, or the cluster refused it (EACCES, EPERM)."""

class BusyError(Error):
    """The destination is locked or open by another client (EBUSY)."""

class FencedError(Error, BrokenPipeError):
    """This client was fenced off the cluster (blocklisted) while it ran (ESHUTDOWN): a rerun
    of its transfer found it unresponsive and took the destination over, or an operator
    blocklisted it. Nothing of this run was committed."""

class DestinationChangedError(Error):
    """The destination changed since from_snap, not by an interrupted transfer of the same
    diff (errno DESTINATION_CHANGED)."""

class MismatchError(Error):
    """A verification found the two images different (errno MISMATCH): their content from
    byte ``offset`` on, or their sizes (``offset`` is then the smaller size, unless the content
    differs before it)."""

class CancelledError(Error):
    """cancel(), or a progress callback returning False, stopped the transfer or the batch
    (ECANCELED); ``results`` holds what a cancelled batch had done."""

class TimedOutError(Error, builtins.TimeoutError):
    """A cluster did not answer in time (ETIMEDOUT)."""

TimeoutError = TimedOutError
"""The name TimedOutError had before, which shadowed the builtin; not in ``__all__``."""

class NoSpaceError(Error):
    """The pool or the cluster is full, or a quota is reached (ENOSPC, EDQUOT)."""

class UnsupportedError(Error):
    """The cluster or the image does not support an operation (EOPNOTSUPP, ENOSYS)."""

class IoError(Error):
    """A read, write or zeroing of image data failed (EIO and other errnos of data I/O)."""

class OtherError(Error):
    """Anything else; errno says what."""

class PanicException(BaseException):
    """What a bug of the library (a Rust panic) raises: pyo3's own class, which derives from
    BaseException, not Exception, so that ``except Exception`` does not catch it."""

@final
class ClusterSpec:
    """How to connect to a cluster, as the rbd CLI's global options say it: ``conf`` is
    ``-c``, ``id`` is ``--id`` (or ``name``, ``-n``), ``keyring`` is ``-k``, ``mon_host`` is
    ``-m``, ``options`` are ``--<key> <value>``. What is left unset is taken as the rbd CLI
    takes it: from ``CEPH_ARGS``, then librados' defaults (``client.admin``, and the conf
    search ``$CEPH_CONF``, ``/etc/ceph/ceph.conf``, ...).

    ``connect_timeout`` (seconds) bounds connecting; ``op_timeout`` (seconds, 0 waits for
    ever) fails an operation a stalled OSD or monitor leaves unanswered with TimedOutError
    (librados' ``rados_osd_op_timeout`` and ``rados_mon_op_timeout``). Where ceph.conf leaves
    librados' own defaults (300 s, and for ever), :data:`DEFAULT_CONNECT_TIMEOUT` (30 s) and
    :data:`DEFAULT_OP_TIMEOUT` (60 s) apply."""

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
        op_timeout: Optional[float] = None,
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
    def op_timeout(self) -> Optional[float]: ...
    @property
    def options(self) -> list[tuple[str, str]]: ...

@final
class Progress:
    """Where a running transfer is: its phase, bytes done of bytes in all (0 until the copy
    starts; for a diff of more than about 8192 pieces it grows while the scan runs ahead of the
    copy), seconds since it started, and what it has waited for over a second, if anything."""

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
    """What a finished transfer did; times in seconds, throughput in diff bytes per second.
    ``bytes_verified`` counts the bytes read back and compared (``verify=True``);
    ``bytes_resumed`` the bytes an interrupted run of the same diff had done, below its
    checkpoint, and this one did not do again; ``bytes_rechecked`` the bytes below that
    checkpoint it compared with the source instead of trusting them, because the interrupted
    run had let go of the destination (chunks that differed were rewritten);
    ``broke_lock_of`` names the killed client whose exclusive lock on the destination this
    transfer broke."""

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
    def bytes_verified(self) -> int: ...
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
    def bytes_resumed(self) -> int: ...
    @property
    def bytes_rechecked(self) -> int: ...
    @property
    def broke_lock_of(self) -> Optional[str]: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def snapshot_elapsed(self) -> float: ...
    @property
    def throughput(self) -> float: ...

@final
class Plan:
    """What a transfer would do now, found by DiffTransfer.plan() without writing anything;
    ``resume_from`` is the checkpoint of an interrupted run of the same diff it would resume
    from (0: from the beginning), ``bytes_resumed`` the diff bytes below it."""

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
    def resume_from(self) -> int: ...
    @property
    def bytes_resumed(self) -> int: ...
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
    given. ``rate_limit`` caps the bytes read from the source at that many per second on
    average (None or 0: no cap), the verification's reads of the source included; zeroed
    ranges cost nothing. ``chunk_size`` (bytes, a multiple of 4096) and ``window`` (chunks in flight) bound
    the memory used; ``whole_object`` diffs by whole objects; ``force`` allows writing over
    what the destination holds (a full transfer into an image with data or snapshots, an
    incremental into an image changed since ``from_snap``); ``verify`` reads back every range
    written or zeroed, from both images, before the end snapshot is made, and raises
    MismatchError (no end snapshot) if they differ. Malformed specs and negative
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
        window: int = 32,
        whole_object: bool = False,
        force: bool = False,
        verify: bool = False,
        rate_limit: Optional[int] = None,
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
        on the destination, and running it again completes it. A Ctrl-C or callback exception
        that arrives once the end snapshot is being created (phase ``committing``) is too late
        to stop it: run() returns the stats, as the transfer completed, and the exception goes
        to ``sys.unraisablehook``."""
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
    @property
    def rate_limit(self) -> Optional[int]:
        """The cap in bytes per second, or None."""

@final
class VerifyStats:
    """What a verification that found both images equal did: ``bytes_compared`` read from each
    and compared, ``bytes_skipped`` allocated on neither (zeros on both, not read); times in
    seconds, throughput in image bytes per second."""

    @property
    def source(self) -> str: ...
    @property
    def dest(self) -> str: ...
    @property
    def image_size(self) -> int: ...
    @property
    def bytes_compared(self) -> int: ...
    @property
    def bytes_skipped(self) -> int: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def throughput(self) -> float: ...

@final
class Verify:
    """A comparison of the whole images ``a`` and ``b`` (``pool[/ns]/image[@snap]``; without
    ``@snap``, HEAD), on ``cluster``, or ``b`` on ``dest_cluster`` when given: what comparing
    the md5 of two ``rbd export`` tells, with ``window`` reads of at most ``chunk_size`` bytes
    in flight, without reading what neither image has allocated. Malformed specs and
    negative numbers raise InvalidArgumentError here."""

    def __new__(
        cls,
        a: str,
        b: str,
        *,
        cluster: Optional[ClusterSpec] = None,
        dest_cluster: Optional[ClusterSpec] = None,
        chunk_size: int = 2097152,
        window: int = 32,
        progress_interval: float = 0.2,
    ) -> Verify: ...
    def run(self, progress: Optional[_ProgressCallback] = None) -> VerifyStats:
        """Compares the images, with the GIL released; returns when they are equal, raises
        MismatchError (``offset``: the first differing byte) when they are not. ``progress``,
        a False it returns, an exception it raises and KeyboardInterrupt act as in
        DiffTransfer.run(): one that arrives too late to stop the comparison, which then
        completed, goes to ``sys.unraisablehook`` and run() returns the result."""
    def cancel(self) -> None:
        """Stops the running verification, from any thread, and every later run() of this
        object: run() raises CancelledError."""
    @property
    def cancelled(self) -> bool: ...
    @property
    def a(self) -> str: ...
    @property
    def b(self) -> str: ...

@final
class VolumeProgress:
    """Where one volume of a batch is: its source and destination as given, its ``state``,
    the ``phase`` of its transfer once it runs (else None), the bytes of its transfer done and
    in all (as far as known; 0 until its copy starts), and what it has waited for over a
    second, if anything."""

    @property
    def source(self) -> str: ...
    @property
    def dest(self) -> str: ...
    @property
    def state(self) -> _VolumeStateName: ...
    @property
    def phase(self) -> Optional[_PhaseName]: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...
    @property
    def waiting_for(self) -> Optional[str]: ...

@final
class BatchProgress:
    """Where a batch is: each volume in the order given, the bytes done of every volume, the
    bytes in all of the volumes whose diff is known, how many volumes are queued, running,
    succeeded and failed, and the seconds since the batch started."""

    @property
    def volumes(self) -> list[VolumeProgress]: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def running(self) -> int: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def elapsed(self) -> float: ...

_BatchProgressCallback = Callable[[BatchProgress], Optional[bool]]
_BatchResult = Union[TransferStats, Error]

@final
class SyncMany:
    """Many transfers at once (``rbd-diffsync sync-many``): at most ``parallel`` of them run
    at a time, the others wait their turn in the order given, over one connection per
    cluster; together they hold at most ``memory_budget`` bytes of data and ``max_requests``
    requests in flight, and read at most ``rate_limit`` bytes per second (None or 0: no cap).
    Each transfer keeps its own settings (window, chunk size, its own rate limit...) and every
    check and guarantee of DiffTransfer.run(). The transfers must be DiffTransfer objects
    writing different destinations; that, a count out of range and negative numbers raise
    InvalidArgumentError here."""

    def __new__(
        cls,
        transfers: Iterable[DiffTransfer],
        *,
        parallel: int = 4,
        memory_budget: int = 67108864,
        max_requests: int = 256,
        rate_limit: Optional[int] = None,
        progress_interval: float = 0.2,
    ) -> SyncMany: ...
    def run(self, progress: Optional[_BatchProgressCallback] = None) -> list[_BatchResult]:
        """Runs the transfers with the GIL released and returns, in the order given, each
        one's TransferStats, or the Error that failed it: one that fails does not stop the
        others, and nothing is raised for it. Raised are only: CancelledError when cancel(),
        or ``progress`` returning False, stopped the batch before every transfer ended (its
        ``results`` hold the list run() would have returned); and, as they are once every
        transfer has stopped, an exception ``progress`` raises and KeyboardInterrupt (Ctrl-C,
        noticed within 50 ms), with that list as their ``results`` attribute too. One that
        stopped no transfer (every volume was creating its end snapshot, or done: too late to
        stop them) is not raised: run() returns the list, and the exception goes to
        ``sys.unraisablehook``.
        ``progress`` is called on this thread with a BatchProgress
        whenever a volume starts or ends, and otherwise at most every ``progress_interval``
        seconds. The cancel() of a DiffTransfer of the batch stops that transfer only (a
        CancelledError in its place)."""
    def cancel(self) -> None:
        """Stops the running batch, from any thread, and every later run() of this object:
        run() raises CancelledError."""
    @property
    def cancelled(self) -> bool: ...
    @property
    def transfers(self) -> list[DiffTransfer]: ...
    @property
    def parallel(self) -> int: ...
    @property
    def memory_budget(self) -> int: ...
    @property
    def max_requests(self) -> int: ...
    @property
    def rate_limit(self) -> Optional[int]: ...
    @property
    def progress_interval(self) -> float: ...
    def __len__(self) -> int: ...

def sync_many(
    transfers: Iterable[DiffTransfer],
    *,
    parallel: int = 4,
    memory_budget: int = 67108864,
    max_requests: int = 256,
    rate_limit: Optional[int] = None,
    progress: Optional[_BatchProgressCallback] = None,
    progress_interval: float = 0.2,
) -> list[_BatchResult]:
    """``SyncMany(transfers, ...).run(progress)``: each transfer's TransferStats or Error, in
    the order given."""
