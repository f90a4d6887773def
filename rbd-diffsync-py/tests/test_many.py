"""sync_many() and SyncMany: many transfers at once, each result in its place, checked against the
rbd CLI; and DiffTransfer's rate_limit."""

from __future__ import annotations

import _thread
import errno
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Union

import pytest

import rbd_diffsync
from rbd_diffsync import ClusterSpec, DiffTransfer, SyncMany, TransferStats, sync_many

from conftest import MiB, Cluster, pattern

Result = Union[TransferStats, rbd_diffsync.Error]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def images(cluster: Cluster) -> Iterator[list[str]]:
    """Where a test lists the images it makes (rbd/... and backups/...): removed after it."""
    made: list[str] = []
    yield made
    for image in made:
        if cluster.exists(image):
            cluster.rbd("snap", "purge", "--no-progress", image)
            cluster.rbd("rm", "--no-progress", image)


def volume(cluster: Cluster, images: list[str], image: str, k: int, size: int = 8 * MiB) -> str:
    """`image` with snapshot s1 (data in a few places) and s2 (more data, a zeroed range)."""
    images += [image, image.replace("rbd/", "backups/")]
    cluster.create(image, size)
    cluster.write(image, data=[(0, pattern(k, MiB)), (5 * MiB, pattern(k + 10, 300 * 1024))])
    cluster.snap(image, "s1")
    cluster.write(image, data=[(3 * MiB, pattern(k + 20, 64 * 1024))], zero=[(5 * MiB, 128 * 1024)])
    cluster.snap(image, "s2")
    return image


def slow_batch(cluster: Cluster, images: list[str], name: str, n: int = 3) -> list[DiffTransfer]:
    """Transfers of 8 MiB of data each in 16 KiB requests, one at a time: seconds long."""
    transfers = []
    for k in range(n):
        image = f"rbd/{name}-{k}"
        images += [image, image.replace("rbd/", "backups/")]
        cluster.create(image, 8 * MiB)
        cluster.write(image, data=[(i * MiB, pattern(i + k, MiB)) for i in range(8)])
        cluster.snap(image, "s1")
        transfers.append(
            DiffTransfer(
                f"{image}@s1",
                image.replace("rbd/", "backups/"),
                cluster=ClusterSpec(cluster.conf),
                chunk_size=16384,
                window=1,
            )
        )
    return transfers


def stats(results: list[Result]) -> list[TransferStats]:
    for r in results:
        assert isinstance(r, TransferStats), repr(r)
    return results  # type: ignore[return-value]


def test_full_then_incremental_of_three_volumes(cluster: Cluster, images: list[str], name: str) -> None:
    sources = [volume(cluster, images, f"rbd/{name}-{k}", k) for k in range(3)]
    dests = [s.replace("rbd/", "backups/") for s in sources]
    conf = ClusterSpec(cluster.conf)

    full = SyncMany([DiffTransfer(f"{s}@s1", d, cluster=conf) for s, d in zip(sources, dests)], parallel=2)
    assert (len(full), full.parallel, full.rate_limit) == (3, 2, None)
    results = stats(full.run())
    assert [r.dest for r in results] == dests, "in the order given"
    assert all(r.created_destination and r.end_snap == "s1" for r in results)

    results = stats(
        sync_many([DiffTransfer(f"{s}@s2", d, from_snap="s1", cluster=conf) for s, d in zip(sources, dests)])
    )
    assert [(r.dest, r.from_snap, r.end_snap) for r in results] == [(d, "s1", "s2") for d in dests]
    for s, d in zip(sources, dests):
        assert cluster.snaps(d) == ["s1", "s2"]
        for snap in ("s1", "s2"):
            assert cluster.md5(f"{d}@{snap}") == cluster.md5(f"{s}@{snap}")


def test_a_failing_volume_fails_alone_and_progress_adds_up(cluster: Cluster, images: list[str], name: str) -> None:
    sources = [volume(cluster, images, f"rbd/{name}-{k}", k) for k in range(3)]
    conf = ClusterSpec(cluster.conf)
    transfers = [DiffTransfer(f"{s}@s1", s.replace("rbd/", "backups/"), cluster=conf) for s in sources]
    # The middle one's source snapshot does not exist.
    transfers[1] = DiffTransfer(f"{sources[1]}@nosuch", sources[1].replace("rbd/", "backups/"), cluster=conf)
    seen: list[rbd_diffsync.BatchProgress] = []

    results = sync_many(transfers, parallel=3, progress=seen.append, progress_interval=0.01)

    assert isinstance(results[0], TransferStats) and isinstance(results[2], TransferStats)
    failed = results[1]
    assert isinstance(failed, rbd_diffsync.NotFoundError), repr(failed)
    assert (failed.errno, failed.kind, failed.snap) == (errno.ENOENT, "not_found", "nosuch")
    assert not cluster.exists(sources[1].replace("rbd/", "backups/"))
    for s in (sources[0], sources[2]):
        assert cluster.md5(f"{s.replace('rbd/', 'backups/')}@s1") == cluster.md5(f"{s}@s1")

    assert seen, "the callback was called"
    for p in seen:
        assert len(p.volumes) == 3
        assert p.queued + p.running + p.succeeded + p.failed == 3
        assert p.bytes_done == sum(v.bytes_done for v in p.volumes)
        assert p.bytes_total == sum(v.bytes_total for v in p.volumes)
        assert p.bytes_done <= p.bytes_total or p.bytes_total == 0
    last = seen[-1]
    assert (last.queued, last.running, last.succeeded, last.failed) == (0, 0, 2, 1)
    assert [v.state for v in last.volumes] == ["succeeded", "failed", "succeeded"]
    assert [v.source for v in last.volumes] == [t.source for t in transfers]
    done = [results[0], results[2]]
    assert sum(v.bytes_done for v in last.volumes) == sum(r.diff_bytes for r in done)  # type: ignore[union-attr]
    assert last.volumes[0].phase == "committing" and last.elapsed > 0


def test_a_callback_returning_false_cancels_the_batch(cluster: Cluster, images: list[str], name: str) -> None:
    transfers = slow_batch(cluster, images, name)
    calls = 0

    def progress(p: rbd_diffsync.BatchProgress) -> bool:
        nonlocal calls
        calls += 1
        return p.bytes_done == 0

    with pytest.raises(rbd_diffsync.CancelledError) as caught:
        sync_many(transfers, parallel=2, progress=progress, progress_interval=0.01)
    e = caught.value
    assert (e.errno, e.kind) == (errno.ECANCELED, "cancelled")
    assert calls >= 1
    assert e.results is not None and len(e.results) == 3
    assert all(isinstance(r, rbd_diffsync.CancelledError) for r in e.results), e.results
    for t in transfers:
        assert not cluster.exists(t.dest) or cluster.snaps(t.dest) == []
        assert not t.cancelled, "the DiffTransfer objects are not cancelled for later runs"


def test_ctrl_c_and_cancel_stop_the_whole_batch_promptly(cluster: Cluster, images: list[str], name: str) -> None:
    transfers = slow_batch(cluster, images, name)
    copying = threading.Event()

    def progress(p: rbd_diffsync.BatchProgress) -> None:
        if p.bytes_done > 0:
            copying.set()

    def after_copying(action: object) -> threading.Thread:
        def run() -> None:
            if copying.wait(30):
                sent.append(time.monotonic())
                action()  # type: ignore[operator]

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    # Ctrl-C: interrupt_main() is what the SIGINT handler does.
    sent: list[float] = []
    thread = after_copying(_thread.interrupt_main)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        sync_many(transfers, parallel=3, progress=progress)
    thread.join()
    assert len(sent) == 1, "interrupted while copying"
    # What each volume did comes with it: here none completed, each stopped where it was
    # (they would take seconds more to complete).
    results = interrupted.value.results  # type: ignore[attr-defined]
    assert len(results) == 3 and all(isinstance(r, rbd_diffsync.CancelledError) for r in results), results

    batch = SyncMany(transfers, parallel=3)
    copying.clear()
    sent.clear()
    thread = after_copying(batch.cancel)
    with pytest.raises(rbd_diffsync.CancelledError) as caught:
        batch.run(progress=progress)
    thread.join()
    assert len(sent) == 1, "cancelled while copying"
    assert batch.cancelled and caught.value.results is not None
    results = caught.value.results
    assert len(results) == 3 and all(isinstance(r, rbd_diffsync.CancelledError) for r in results), results
    for t in transfers:
        assert not cluster.exists(t.dest) or cluster.snaps(t.dest) == []
    with pytest.raises(rbd_diffsync.CancelledError):
        batch.run()  # cancel() holds for later runs of the same object


def test_an_exception_once_every_volume_commits_is_too_late_run_returns_the_results(
    cluster: Cluster, images: list[str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [volume(cluster, images, f"rbd/{name}-{k}", k) for k in range(2)]
    dests = [s.replace("rbd/", "backups/") for s in sources]
    conf = ClusterSpec(cluster.conf)

    class Stop(Exception):
        pass

    raised = Stop()
    seen: list[list[tuple[str, object]]] = []

    def progress(p: rbd_diffsync.BatchProgress) -> None:
        # Every volume is creating its end snapshot or done (the last call, when every volume
        # has ended, at the latest): none can stop any more.
        if all(v.state == "succeeded" or v.phase == "committing" for v in p.volumes):
            seen.append([(v.state, v.phase) for v in p.volumes])
            raise raised

    ignored: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    transfers = [DiffTransfer(f"{s}@s1", d, cluster=conf) for s, d in zip(sources, dests)]
    results = stats(sync_many(transfers, parallel=2, progress=progress, progress_interval=0.01))
    assert len(seen) == 1, "no call after the exception"
    assert [(u.exc_value, u.object) for u in ignored] == [(raised, progress)]  # type: ignore[attr-defined]
    assert [r.dest for r in results] == dests
    for s, d in zip(sources, dests):
        assert cluster.snaps(d) == ["s1"]
        assert cluster.md5(f"{d}@s1") == cluster.md5(f"{s}@s1")


def test_rate_limit_of_one_transfer(cluster: Cluster, images: list[str], name: str) -> None:
    image = f"rbd/{name}"
    images += [image, f"backups/{name}"]
    cluster.create(image, 4 * MiB)
    cluster.write(image, data=[(0, pattern(1, MiB))])
    cluster.snap(image, "s1")
    rate, piece = 512 * 1024, 64 * 1024
    transfer = DiffTransfer(
        f"{image}@s1", f"backups/{name}", cluster=ClusterSpec(cluster.conf), chunk_size=piece, rate_limit=rate
    )
    assert transfer.rate_limit == rate
    started = time.monotonic()
    result = transfer.run()
    took = time.monotonic() - started
    # Each piece waits for the bytes of those before it: 1 MiB in 64 KiB pieces at 512 KiB/s,
    # less the first burst (50 ms of the rate, at least 64 KiB) and the last piece.
    assert took >= (MiB - 64 * 1024 - piece) / rate - 0.05, took
    assert result.bytes_read == MiB
    assert cluster.md5(f"backups/{name}@s1") == cluster.md5(f"{image}@s1")


def test_bad_arguments_raise() -> None:
    t = [DiffTransfer("rbd/a@s", "backups/a"), DiffTransfer("rbd/b@s", "backups/b")]
    for kw in ({"parallel": 0}, {"parallel": 1025}, {"memory_budget": 0}, {"max_requests": -1}, {"rate_limit": -1}):
        with pytest.raises(rbd_diffsync.InvalidArgumentError) as caught:
            sync_many(t, **kw)  # type: ignore[arg-type]
        assert caught.value.errno == errno.EINVAL
    with pytest.raises(rbd_diffsync.InvalidArgumentError, match="same destination"):
        SyncMany([t[0], DiffTransfer("rbd/c@s", "backups/a")])
    with pytest.raises(TypeError):
        SyncMany(["rbd/a@s"])  # type: ignore[list-item]
    with pytest.raises(rbd_diffsync.InvalidArgumentError):
        DiffTransfer("rbd/a@s", "backups/a", rate_limit=-5)
    assert DiffTransfer("rbd/a@s", "backups/a", rate_limit=0).rate_limit is None
    assert sync_many([]) == []
    batch = SyncMany(t, rate_limit=100)
    assert (batch.rate_limit, batch.memory_budget, batch.max_requests) == (
        100,
        rbd_diffsync.DEFAULT_BATCH_BUDGET,
        rbd_diffsync.DEFAULT_BATCH_REQUESTS,
    )
    assert batch.parallel == rbd_diffsync.DEFAULT_PARALLEL and [x.dest for x in batch.transfers] == ["backups/a", "backups/b"]


def test_the_readme_sync_many_example_runs(
    cluster: Cluster, images: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    vols = [f"{name}-{k}" for k in range(3)]
    for k, vol in enumerate(vols):
        volume(cluster, images, f"rbd/{vol}", k)
        DiffTransfer(f"rbd/{vol}@s1", f"backups/{vol}", cluster=ClusterSpec(cluster.conf)).run()
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]
    assert "sync_many" in code
    code = code.replace("/etc/ceph/ceph.conf", cluster.conf).replace('["vol-1", "vol-2", "vol-3"]', repr(vols))
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "3/3 volumes done" in out and out.count("bytes written") == 3, out
    for vol in vols:
        assert cluster.snaps(f"backups/{vol}") == ["s1", "s2"]
        assert cluster.md5(f"backups/{vol}@s2") == cluster.md5(f"rbd/{vol}@s2")
