"""Every bad input raises the documented exception class with its exact errno."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import textwrap
import time
import signal
from pathlib import Path

import pytest

import rbd_diffsync
from rbd_diffsync import ClusterSpec, DiffTransfer

from conftest import MiB, Cluster, pattern

KINDS = {
    "invalid_argument": (rbd_diffsync.InvalidArgumentError, errno.EINVAL),
    "not_found": (rbd_diffsync.NotFoundError, errno.ENOENT),
    "exists": (rbd_diffsync.ExistsError, errno.EEXIST),
    "permission_denied": (rbd_diffsync.PermissionDeniedError, errno.EACCES),
    "busy": (rbd_diffsync.BusyError, errno.EBUSY),
    "fenced": (rbd_diffsync.FencedError, errno.ESHUTDOWN),
    "destination_changed": (rbd_diffsync.DestinationChangedError, rbd_diffsync.DESTINATION_CHANGED),
    "mismatch": (rbd_diffsync.MismatchError, rbd_diffsync.MISMATCH),
    "cancelled": (rbd_diffsync.CancelledError, errno.ECANCELED),
    "timeout": (rbd_diffsync.TimedOutError, errno.ETIMEDOUT),
    "no_space": (rbd_diffsync.NoSpaceError, errno.ENOSPC),
    "unsupported": (rbd_diffsync.UnsupportedError, errno.EOPNOTSUPP),
    "io": (rbd_diffsync.IoError, errno.EIO),
    "other": (rbd_diffsync.OtherError, errno.EXDEV),
}


def test_one_class_per_kind_of_the_core() -> None:
    assert set(rbd_diffsync.ERROR_CLASSES) == set(KINDS)
    for kind, (cls, code) in KINDS.items():
        assert rbd_diffsync.ERROR_CLASSES[kind] is cls
        assert issubclass(cls, rbd_diffsync.Error) and issubclass(cls, OSError)
        assert cls.kind == kind and cls.__module__ == "rbd_diffsync"
        e = cls(code, "message")
        assert (e.errno, e.strerror, e.kind, e.image, e.snap, e.offset) == (code, "message", kind, None, None, None)
        assert e.filename is None
    assert (rbd_diffsync.DESTINATION_CHANGED, rbd_diffsync.MISMATCH) == (4296, 4297)


# What Python itself makes of OSError(errno, ...) for each kind's errnos, where it makes more
# than an OSError; the other kinds (busy, cancelled, no_space, ...) have no such builtin.
BUILTINS = {
    "not_found": FileNotFoundError,
    "exists": FileExistsError,
    "permission_denied": PermissionError,
    "timeout": TimeoutError,
    "fenced": BrokenPipeError,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_class_is_the_builtin_python_picks_for_its_errno(kind: str) -> None:
    cls, code = KINDS[kind]
    picked = type(OSError(code, "message"))
    assert picked is BUILTINS.get(kind, OSError), picked
    assert issubclass(cls, picked)
    # except <builtin> catches it, with its errno and the image as filename.
    with pytest.raises(picked) as caught:
        raise cls(code, "message")
    assert caught.value.errno == code
    if kind == "permission_denied":
        assert issubclass(cls, PermissionError) and type(OSError(errno.EPERM, "m")) is PermissionError
    if kind == "no_space":
        assert type(OSError(errno.EDQUOT, "m")) is OSError


def test_no_exported_name_shadows_a_builtin() -> None:
    import builtins

    assert set(rbd_diffsync.__all__) & set(dir(builtins)) == set()
    namespace: dict = {}
    exec("from rbd_diffsync import *", namespace)
    assert namespace["TimedOutError"] is rbd_diffsync.TimedOutError
    assert "TimeoutError" not in namespace
    # The class's former name stays an attribute of the package.
    assert rbd_diffsync.TimeoutError is rbd_diffsync.TimedOutError


def test_a_panic_raises_pyo3s_own_panic_exception() -> None:
    # What a bug of the library raises: pyo3's class, which except Exception does not catch.
    cls = rbd_diffsync.PanicException
    assert (cls.__module__, cls.__name__) == ("pyo3_runtime", "PanicException")
    assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
    assert rbd_diffsync._native.PanicException is cls
    assert "PanicException" in rbd_diffsync.__all__


def expect(cls: type, code: int, call: object) -> rbd_diffsync.Error:
    with pytest.raises(cls) as caught:
        call()  # type: ignore[operator]
    e = caught.value
    assert type(e) is cls, type(e)
    assert e.errno == code and e.args[0] == code
    assert e.kind == cls.kind
    assert isinstance(e, OSError)
    # Also the builtin Python picks for its errno (FileNotFoundError for ENOENT...), and its
    # filename is the image it concerns.
    assert isinstance(e, type(OSError(code, "message")))
    assert e.filename == e.image
    return e


@pytest.mark.parametrize(
    "source, dest",
    [("rbd//img@s", "backups/x"), ("rbd/img@", "backups/x"), ("", "backups/x"), ("rbd/img@s", "a/b/c/d")],
)
def test_malformed_specs(source: str, dest: str) -> None:
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, lambda: DiffTransfer(source, dest))


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_size": -1},
        {"window": -3},
        {"progress_interval": -1.0},
        {"progress_interval": float("nan")},
    ],
)
def test_negative_numbers_at_construction(kw: dict) -> None:
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, lambda: DiffTransfer("rbd/a@s", "backups/a", **kw))


def test_cluster_spec_arguments() -> None:
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, lambda: ClusterSpec(connect_timeout=-2))
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, lambda: ClusterSpec(op_timeout=-1))
    assert (rbd_diffsync.DEFAULT_CONNECT_TIMEOUT, rbd_diffsync.DEFAULT_OP_TIMEOUT) == (30.0, 60.0)
    assert (ClusterSpec().op_timeout, ClusterSpec(op_timeout=0).op_timeout, ClusterSpec(op_timeout=7.5).op_timeout) == (
        None,
        0.0,
        7.5,
    )
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, lambda: ClusterSpec(id="a", name="client.b"))
    with pytest.raises(TypeError):
        ClusterSpec(options={"a": 1})  # type: ignore[dict-item]
    c = ClusterSpec("/x.conf", id="backup", keyring="/k", mon_host="h:1", connect_timeout=2.5, options=[("a", "b")])
    assert (c.conf, c.name, c.keyring, c.mon_host, c.connect_timeout, c.options) == (
        "/x.conf",
        "client.backup",
        "/k",
        "h:1",
        2.5,
        [("a", "b")],
    )
    assert c == ClusterSpec("/x.conf", id="client.backup", keyring="/k", mon_host="h:1", connect_timeout=2.5, options={"a": "b"})


@pytest.mark.parametrize(
    "kw",
    [
        {"chunk_size": 1000},
        {"chunk_size": 0},
        {"window": 0},
        {"window": 5000},
        {"from_snap": "s1@x"},
        {"from_snap": "s2"},  # the end snapshot itself
    ],
)
def test_settings_out_of_range_at_run(cluster: Cluster, kw: dict) -> None:
    t = DiffTransfer("rbd/any@s2", "backups/any", cluster=ClusterSpec(cluster.conf), **kw)
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, t.run)
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, t.plan)


def test_a_destination_with_a_snapshot_name(cluster: Cluster) -> None:
    t = DiffTransfer("rbd/any@s1", "backups/any@s1", cluster=ClusterSpec(cluster.conf))
    expect(rbd_diffsync.InvalidArgumentError, errno.EINVAL, t.run)


def test_missing_things(cluster: Cluster, source: str, name: str) -> None:
    c = ClusterSpec(cluster.conf)
    e = expect(rbd_diffsync.NotFoundError, errno.ENOENT, DiffTransfer(f"rbd/{name}-none@s1", "backups/x", cluster=c).run)
    assert e.image is not None and name in e.image
    # As a script would catch it, knowing nothing of this library.
    try:
        DiffTransfer(f"rbd/{name}-none@s1", "backups/x", cluster=c).run()
    except FileNotFoundError as caught:
        assert caught.errno == errno.ENOENT and name in caught.filename, caught
    else:
        raise AssertionError("no FileNotFoundError")
    expect(rbd_diffsync.NotFoundError, errno.ENOENT, DiffTransfer(f"{source}@nope", f"backups/{name}", cluster=c).run)
    expect(rbd_diffsync.NotFoundError, errno.ENOENT, DiffTransfer(f"nopool/{name}@s1", f"backups/{name}", cluster=c).run)
    e = expect(
        rbd_diffsync.NotFoundError,
        errno.ENOENT,
        DiffTransfer(f"{source}@s2", f"backups/{name}", from_snap="s0", cluster=c).run,
    )
    assert e.snap == "s0"
    # An incremental into a destination that lacks the base snapshot.
    cluster.create(f"backups/{name}", 64 * MiB)
    e = expect(
        rbd_diffsync.NotFoundError,
        errno.ENOENT,
        DiffTransfer(f"{source}@s2", f"backups/{name}", from_snap="s1", cluster=c).run,
    )
    assert e.snap == "s1"
    missing_conf = ClusterSpec(cluster.dir / "missing.conf")
    expect(rbd_diffsync.NotFoundError, errno.ENOENT, DiffTransfer(f"{source}@s1", "backups/x", cluster=missing_conf).run)
    assert cluster.snaps(f"backups/{name}") == []


def test_refusals_of_the_destination(cluster: Cluster, source: str, name: str) -> None:
    c = ClusterSpec(cluster.conf)
    dest = f"backups/{name}"
    DiffTransfer(f"{source}@s1", dest, cluster=c).run()
    e = expect(rbd_diffsync.ExistsError, errno.EEXIST, DiffTransfer(f"{source}@s1", dest, cluster=c).run)
    assert e.snap == "s1"
    with pytest.raises(FileExistsError) as exists:
        DiffTransfer(f"{source}@s1", dest, cluster=c).run()
    assert (exists.value.errno, exists.value.filename) == (errno.EEXIST, dest)
    # Someone else writes to the destination: an incremental on top would corrupt the chain.
    cluster.write(dest, data=[(8 * MiB, pattern(9, 4096))])
    e = expect(
        rbd_diffsync.DestinationChangedError,
        rbd_diffsync.DESTINATION_CHANGED,
        DiffTransfer(f"{source}@s2", dest, from_snap="s1", cluster=c).run,
    )
    assert "[Errno 4296]" in str(e)
    assert cluster.snaps(dest) == ["s1"]
    # force rewrites what changed, from the source.
    DiffTransfer(f"{source}@s2", dest, from_snap="s1", cluster=c, force=True).run()
    assert cluster.md5(f"{dest}@s2") == cluster.md5(f"{source}@s2")


WRONG_KEY = "[client.diffsync]\n\tkey = AQBnpSxlAAAAABAAk1yQ8Z6ZpQ7B5xL5nF5Zxw==\n"


@pytest.mark.parametrize(
    "failure, cls, code",
    [
        ("unreachable monitor", rbd_diffsync.TimedOutError, errno.ETIMEDOUT),
        ("wrong key", rbd_diffsync.PermissionDeniedError, errno.EACCES),
    ],
)
def test_a_failed_connection_ends_within_seconds(
    cluster: Cluster, tmp_path: Path, failure: str, cls: type, code: int
) -> None:
    if failure == "unreachable monitor":
        c = ClusterSpec(cluster.conf, mon_host="127.0.0.1:1", connect_timeout=2, op_timeout=5)
    else:
        keyring = tmp_path / "client.diffsync.keyring"
        keyring.write_text(WRONG_KEY)
        c = ClusterSpec(cluster.conf, id="diffsync", keyring=keyring)
    e = expect(cls, code, DiffTransfer("rbd/any@s1", "backups/any", cluster=c).run)
    # The builtin a script would catch: TimeoutError, PermissionError.
    assert isinstance(e, TimeoutError if failure == "unreachable monitor" else PermissionError)
    if failure == "unreachable monitor":
        # The connect timeout given ended it, not librados' own (300 s).
        assert "within the connect timeout (2 s)" in str(e), str(e)
    else:
        # Refused as such (PermissionDeniedError), not timed out at the connect timeout
        # (DEFAULT_CONNECT_TIMEOUT, 30 s), which would raise TimeoutError.
        assert "refuse its key" in str(e), str(e)


def test_a_read_only_user_is_refused(cluster: Cluster, source: str, name: str) -> None:
    keyring = cluster.dir / "client.py-readonly.keyring"
    keyring.write_bytes(
        cluster.ceph(
            "auth", "get-or-create", "client.py-readonly", "mon", "profile rbd", "osd", "profile rbd-read-only"
        )
    )
    reader = ClusterSpec(cluster.conf, id="py-readonly", keyring=keyring)
    e = expect(
        rbd_diffsync.PermissionDeniedError,
        errno.EPERM,
        DiffTransfer(f"{source}@s1", f"backups/{name}", cluster=reader).run,
    )
    assert e.kind == "permission_denied"


SIGINT_CHILD = textwrap.dedent(
    """
    import sys, time
    import rbd_diffsync
    conf, image, phase = sys.argv[1:]
    cluster = rbd_diffsync.ClusterSpec(conf)
    if phase == "connecting":
        # Nothing listens there (the test monitor is on 127.0.0.1): connecting blocks.
        cluster = rbd_diffsync.ClusterSpec(conf, mon_host="127.0.0.2:6786", connect_timeout=60)
    t = rbd_diffsync.DiffTransfer(image + "@s1", image.replace("rbd/", "backups/"),
                                  cluster=cluster, chunk_size=16384, window=1)
    def progress(p):
        if p.phase == phase and (phase != "copying" or p.bytes_done > 0):
            print(phase, flush=True)
    try:
        t.run(progress=progress)
    except KeyboardInterrupt:
        print("interrupted %.6f" % time.time(), flush=True)
        sys.exit(3)
    print("completed", flush=True)
    """
)


@pytest.mark.parametrize("phase", ["connecting", "copying"])
def test_sigint_raises_keyboard_interrupt_promptly_and_leaves_no_snapshot(cluster: Cluster, name: str, phase: str) -> None:
    image = f"rbd/{name}"
    cluster.create(image, 8 * MiB)
    cluster.write(image, data=[(i * MiB, pattern(i, MiB)) for i in range(8)])
    cluster.snap(image, "s1")
    child = subprocess.Popen(
        [sys.executable, "-c", SIGINT_CHILD, cluster.conf, image, phase], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == phase
    if phase == "connecting":
        time.sleep(1.0)  # well inside the blocking connect
    sent = time.time()
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=60)
    exited = time.time()
    assert child.returncode == 3, out
    # The interrupt may land inside the callback's print, between "connecting" and its newline.
    found = re.search(r"interrupted (\d+\.\d+)", out)
    assert found, out
    latency = float(found.group(1)) - sent
    print(f"SIGINT in {phase} to KeyboardInterrupt: {latency * 1000:.0f} ms, process gone after {(exited - sent) * 1000:.0f} ms")
    # The interrupt stopped the run where it was: the connection attempt (which would have
    # gone on for its 60 s and then raised TimeoutError) or the copy (which would have
    # completed and made the end snapshot).
    assert "completed" not in out, out
    assert not cluster.exists(f"backups/{name}") or cluster.snaps(f"backups/{name}") == []
