"""cinder's own CephBackupDriver code paths with the replacement class, on the live cluster.

Runs where cinder 29.0.0 is installed from PyPI into a venv of Debian's python made with
--system-site-packages (for Debian's python3-rbd and python3-rados); selected with
`-m cinder`, and failing, not skipping, where cinder or librbd's bindings are missing.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import types
import uuid
from typing import Any, Iterator

import pytest

import rbd_diffsync
import rbd_diffsync.cinder

from conftest import MiB, Cluster, pattern

pytestmark = pytest.mark.cinder

GiB = 1 << 30


@pytest.fixture(scope="module")
def ceph_modules() -> tuple[Any, Any]:
    import rados
    import rbd

    return rados, rbd


@pytest.fixture
def driver(cluster: Cluster) -> Any:
    from cinder.backup.drivers import ceph
    from oslo_config import cfg

    conf = cfg.CONF
    for key, value in {
        "backup_ceph_conf": cluster.conf,
        "backup_ceph_user": "admin",
        "backup_ceph_pool": "backups",
        "backup_ceph_max_snapshots": 0,
    }.items():
        conf.set_override(key, value)
    # The driver's base class opens cinder's database; these paths never use it.
    conf.set_override("connection", "sqlite://", group="database")
    cls = rbd_diffsync.cinder.CephBackupDriver
    assert issubclass(cls, ceph.CephBackupDriver) and cls is not ceph.CephBackupDriver
    yield cls(context=None)
    conf.clear_override("backup_ceph_conf")


class Volume:
    """A cinder volume on rbd, open as os-brick's RBDVolumeIOWrapper would hand it over."""

    def __init__(self, cluster: Cluster, modules: tuple[Any, Any], size_gb: int = 1) -> None:
        rados, rbd = modules
        self.id = str(uuid.uuid4())
        self.name = f"volume-{self.id}"
        self.size = size_gb
        cluster.create(f"rbd/{self.name}", size_gb * GiB)
        self.client = rados.Rados(conffile=cluster.conf, rados_id="admin")
        self.client.connect()
        self.ioctx = self.client.open_ioctx("rbd")
        self.file = types.SimpleNamespace(
            rbd_user="admin", rbd_pool="rbd", rbd_conf=cluster.conf, rbd_image=rbd.Image(self.ioctx, self.name)
        )

    def close(self) -> None:
        self.file.rbd_image.close()
        self.ioctx.close()
        self.client.shutdown()


@pytest.fixture
def volumes(cluster: Cluster, ceph_modules: tuple[Any, Any]) -> Iterator[list[Volume]]:
    made: list[Volume] = []
    yield made
    for v in made:
        v.close()


def backup_of(volume: Volume, parent: Any = None) -> Any:
    return types.SimpleNamespace(
        id=str(uuid.uuid4()),
        volume_id=volume.id,
        container="backups",
        parent_id=parent.id if parent else None,
        parent=parent,
        service_metadata=None,
        snapshot_id=None,
    )


def backup_snap(cluster: Cluster, image: str, backup_id: str) -> str:
    found = [s for s in cluster.snaps(image) if s.startswith(f"backup.{backup_id}.snap.")]
    assert len(found) == 1, cluster.snaps(image)
    return found[0]


def test_backup_full_then_incremental_then_diff_restore(
    cluster: Cluster, driver: Any, volumes: list[Volume], ceph_modules: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = Volume(cluster, ceph_modules)
    volumes.append(vol)
    src = f"rbd/{vol.name}"
    cluster.write(src, data=[(0, pattern(1, 2 * MiB)), (300 * MiB, pattern(2, MiB))])

    full = backup_of(vol)
    updates = driver._backup_rbd(full, vol.file, vol.name, vol.size * GiB)
    full.service_metadata = updates["service_metadata"]
    base = "backups/" + json.loads(full.service_metadata)["base"]
    assert base == f"backups/volume-{vol.id}.backup.{full.id}"
    snap1 = backup_snap(cluster, base, full.id)
    assert cluster.md5(f"{base}@{snap1}") == cluster.md5(f"{src}@{snap1}")

    cluster.write(src, data=[(MiB, pattern(3, 3 * MiB)), (700 * MiB, pattern(4, 4096))], zero=[(300 * MiB, MiB)])
    incr = backup_of(vol, parent=full)
    updates = driver._backup_rbd(incr, vol.file, vol.name, vol.size * GiB)
    incr.service_metadata = updates["service_metadata"]
    assert json.loads(incr.service_metadata)["base"] == base.split("/")[1], "the incremental continues the chain"
    snap2 = backup_snap(cluster, base, incr.id)
    assert cluster.snaps(base) == [snap1, snap2]
    assert cluster.md5(f"{base}@{snap2}") == cluster.md5(f"{src}@{snap2}")

    # The diff restore of the incremental onto a new, empty volume.
    target = Volume(cluster, ceph_modules)
    volumes.append(target)

    def no_full_restore(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the differential restore fell back to a full restore")

    monkeypatch.setattr(driver, "_full_restore", no_full_restore)
    driver._restore_volume(incr, target, target.file, True)
    assert cluster.md5(f"rbd/{target.name}") == cluster.md5(f"{src}@{snap2}")
    # As import-diff does, the restored volume got the backup's snapshot.
    assert cluster.snaps(f"rbd/{target.name}") == [snap2]


def test_a_failed_transfer_triggers_cinders_clean_up(
    cluster: Cluster, driver: Any, volumes: list[Volume], ceph_modules: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cinder import exception

    vol = Volume(cluster, ceph_modules)
    volumes.append(vol)
    src = f"rbd/{vol.name}"
    cluster.write(src, data=[(i * 8 * MiB, pattern(i, MiB)) for i in range(16)])

    def stopped_half_way(transfer: rbd_diffsync.DiffTransfer) -> rbd_diffsync.TransferStats:
        # The failure: the transfer stops as its copying starts.
        return transfer.run(progress=lambda p: p.phase != "copying")

    monkeypatch.setattr(rbd_diffsync.cinder, "_run", stopped_half_way)
    full = backup_of(vol)
    with pytest.raises(exception.BackupRBDOperationFailed) as caught:
        driver._backup_rbd(full, vol.file, vol.name, vol.size * GiB)
    assert isinstance(caught.value.__cause__, rbd_diffsync.CancelledError)
    # cinder's clean-up ran: the base image it created and the source snapshot are gone.
    assert not cluster.exists(f"backups/volume-{vol.id}.backup.{full.id}")
    assert cluster.snaps(src) == []


class PanickingTransfer:
    """The genuine DiffTransfer, whose run() pyo3's own PanicException stops as its copying
    starts: the native call raises it as it would for a panic of the library."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.transfer = rbd_diffsync.DiffTransfer(*args, **kwargs)

    def run(self) -> rbd_diffsync.TransferStats:
        def progress(p: rbd_diffsync.Progress) -> None:
            if p.phase == "copying":
                raise rbd_diffsync.PanicException("a bug")

        return self.transfer.run(progress=progress)


def test_a_panic_fails_the_backup_and_cinders_clean_up_runs(
    cluster: Cluster, driver: Any, volumes: list[Volume], ceph_modules: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cinder import exception

    # A BaseException, which cinder's handlers would let through, clean-up undone.
    assert not issubclass(rbd_diffsync.PanicException, Exception)
    vol = Volume(cluster, ceph_modules)
    volumes.append(vol)
    src = f"rbd/{vol.name}"
    cluster.write(src, data=[(i * 8 * MiB, pattern(i, MiB)) for i in range(16)])
    monkeypatch.setattr(rbd_diffsync.cinder, "DiffTransfer", PanickingTransfer)
    full = backup_of(vol)
    with pytest.raises(exception.BackupRBDOperationFailed) as caught:
        driver._backup_rbd(full, vol.file, vol.name, vol.size * GiB)
    cause = caught.value.__cause__
    assert type(cause) is rbd_diffsync.PanicException and str(cause) == "a bug", repr(cause)
    assert "RBD diff op failed - (PanicException: a bug)" in str(caught.value)
    # cinder's clean-up ran: the base image it created and the source snapshot are gone.
    assert not cluster.exists(f"backups/volume-{vol.id}.backup.{full.id}")
    assert cluster.snaps(src) == []


@pytest.mark.parametrize("cls", [rbd_diffsync.OtherError, rbd_diffsync.IoError])
def test_a_thread_that_cannot_start_fails_the_backup_and_cinders_clean_up_runs(
    cluster: Cluster,
    driver: Any,
    volumes: list[Volume],
    ceph_modules: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
    cls: type[rbd_diffsync.Error],
) -> None:
    from cinder import exception

    # What the library raises when it cannot start a thread: an error of its own, EAGAIN.
    error = cls(errno.EAGAIN, "cannot start a thread: Resource temporarily unavailable")

    class NoThread:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def run(self) -> rbd_diffsync.TransferStats:
            raise error

    vol = Volume(cluster, ceph_modules)
    volumes.append(vol)
    src = f"rbd/{vol.name}"
    cluster.write(src, data=[(0, pattern(1, MiB))])
    monkeypatch.setattr(rbd_diffsync.cinder, "DiffTransfer", NoThread)
    full = backup_of(vol)
    with pytest.raises(exception.BackupRBDOperationFailed) as caught:
        driver._backup_rbd(full, vol.file, vol.name, vol.size * GiB)
    assert caught.value.__cause__ is error
    assert "errno=%d kind=%s: cannot start a thread" % (errno.EAGAIN, cls.kind) in str(caught.value)
    assert not cluster.exists(f"backups/volume-{vol.id}.backup.{full.id}")
    assert cluster.snaps(src) == []


EVENTLET_PANIC_CHILD = """
import eventlet
eventlet.monkey_patch()
import sys
import rbd_diffsync, rbd_diffsync.cinder
from cinder import exception
conf, pool, image, dest = sys.argv[1:]

class PanickingTransfer:
    def __init__(self, *args, **kwargs):
        self.transfer = rbd_diffsync.DiffTransfer(*args, **kwargs)
    def run(self):
        def progress(p):
            if p.phase == "copying":
                raise rbd_diffsync.PanicException("a bug")
        return self.transfer.run(progress=progress)

rbd_diffsync.cinder.DiffTransfer = PanickingTransfer
try:
    rbd_diffsync.cinder.rbd_diff_transfer(image, pool, dest, "backups", "admin", conf, "admin", conf,
                                          src_snap="s1")
except exception.BackupRBDOperationFailed as e:
    print(type(e.__cause__).__module__, type(e.__cause__).__name__)
"""


def test_a_panic_under_eventlet_comes_back_from_its_pool_of_threads(cluster: Cluster, name: str) -> None:
    # Under eventlet the transfer runs on eventlet's pool of native threads, which hands back
    # an Exception only: any other BaseException ends the pool's thread and leaves the green
    # thread waiting for it for ever (the timeout only ends such a hang).
    image = f"rbd/{name}"
    cluster.create(image, 16 * MiB)
    cluster.write(image, data=[(i * MiB, pattern(i, MiB)) for i in range(8)])
    cluster.snap(image, "s1")
    out = subprocess.run(
        [sys.executable, "-c", EVENTLET_PANIC_CHILD, cluster.conf, "rbd", name, name],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pyo3_runtime", "PanicException"], (out.stdout, out.stderr)
    assert cluster.snaps(f"backups/{name}") == []


def test_install_patches_the_stock_class_and_uninstall_restores_it() -> None:
    from cinder.backup.drivers import ceph
    from oslo_utils import importutils

    stock = ceph.CephBackupDriver._rbd_diff_transfer
    assert importutils.import_class("rbd_diffsync.cinder.CephBackupDriver") is rbd_diffsync.cinder.CephBackupDriver
    rbd_diffsync.cinder.install()
    rbd_diffsync.cinder.install()
    try:
        assert ceph.CephBackupDriver._rbd_diff_transfer is rbd_diffsync.cinder.CephBackupDriver._rbd_diff_transfer
    finally:
        rbd_diffsync.cinder.uninstall()
    assert ceph.CephBackupDriver._rbd_diff_transfer is stock


def test_failures_raise_cinders_exception(cluster: Cluster, name: str) -> None:
    from cinder import exception

    with pytest.raises(exception.BackupRBDOperationFailed) as caught:
        rbd_diffsync.cinder.rbd_diff_transfer(
            name, "rbd", name, "backups", "admin", cluster.conf, "admin", cluster.conf, src_snap="s1"
        )
    assert isinstance(caught.value.__cause__, rbd_diffsync.NotFoundError)
    assert "RBD diff op failed" in str(caught.value)


EVENTLET_CHILD = """
import eventlet
eventlet.monkey_patch()
import sys, time
import rbd_diffsync.cinder
conf, pool, image, dest = sys.argv[1:]
ticks = []
def ticker():
    while True:
        ticks.append(time.monotonic())
        eventlet.sleep(0.01)
eventlet.spawn(ticker)
eventlet.sleep(0.05)
start = time.monotonic()
rbd_diffsync.cinder.rbd_diff_transfer(image, pool, dest, "backups", "admin", conf, "admin", conf,
                                      src_snap="s1")
end = time.monotonic()
during = [t for t in ticks if start <= t <= end]
gaps = [b - a for a, b in zip(during, during[1:])]
print(end - start, len(during), max(gaps, default=end - start))
"""


def test_green_threads_run_during_a_transfer_under_eventlet(cluster: Cluster, name: str) -> None:
    # cinder-backup runs under eventlet: a transfer must not stall its other green threads.
    import subprocess
    import sys

    image = f"rbd/{name}"
    cluster.create(image, 64 * MiB)
    cluster.write(image, data=[(i * 2 * MiB, pattern(i, 2 * MiB)) for i in range(24)])
    cluster.snap(image, "s1")
    out = subprocess.run(
        [sys.executable, "-c", EVENTLET_CHILD, cluster.conf, "rbd", name, name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    elapsed, ticks, gap = (float(x) for x in out.split())
    print(f"{ticks:.0f} ticks of the other green thread in {elapsed:.2f} s, longest gap {gap:.3f} s")
    # Had the call blocked eventlet's hub, the other green thread could not have run before
    # it returned: no tick would fall within the transfer.
    assert ticks >= 2, out
    assert cluster.md5(f"backups/{name}@s1") == cluster.md5(f"{image}@s1")
