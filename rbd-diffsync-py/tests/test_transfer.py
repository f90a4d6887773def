"""Transfers through the installed package, checked against the rbd CLI."""

from __future__ import annotations

import errno
import signal
import sys
import threading
import time

import pytest

import rbd_diffsync
from rbd_diffsync import ClusterSpec, DiffTransfer

from conftest import MiB, Cluster, pattern


def spec(cluster: Cluster) -> ClusterSpec:
    return ClusterSpec(cluster.conf)


def test_the_package_is_the_installed_wheel() -> None:
    # The suite runs against what pip installed, never the source tree.
    assert "site-packages" in rbd_diffsync.__file__
    assert rbd_diffsync._native.__file__.endswith(".abi3.so")


def test_full_then_incremental_match_the_source_snapshots(cluster: Cluster, source: str, name: str) -> None:
    dest = f"backups/{name}"
    stats = DiffTransfer(f"{source}@s1", dest, cluster=spec(cluster)).run()
    assert (stats.created_destination, stats.end_snap, stats.from_snap) == (True, "s1", None)
    assert stats.image_size == 64 * MiB
    assert stats.source == f"{source}@s1" and stats.dest == dest
    assert stats.bytes_written > 0 and stats.elapsed > 0
    assert cluster.md5(f"{dest}@s1") == cluster.md5(f"{source}@s1")

    stats = DiffTransfer(f"{source}@s2", dest, from_snap="s1", cluster=spec(cluster)).run()
    assert (stats.created_destination, stats.end_snap, stats.from_snap) == (False, "s2", "s1")
    assert stats.image_size == 72 * MiB
    assert stats.bytes_zeroed + stats.bytes_skipped > 0
    assert cluster.snaps(dest) == ["s1", "s2"]
    assert cluster.md5(f"{dest}@s2") == cluster.md5(f"{source}@s2")
    assert cluster.md5(dest) == cluster.md5(f"{source}@s2")


def test_cross_cluster_full_and_incremental(cluster: Cluster, cluster2: Cluster, source: str, name: str) -> None:
    dest = f"backups/{name}"
    # The destination cluster as client.diffsync, whose keyring ceph.conf does not name.
    other = ClusterSpec(cluster2.conf, id="diffsync", keyring=cluster2.diffsync_keyring)
    for snap, base in (("s1", None), ("s2", "s1")):
        DiffTransfer(f"{source}@{snap}", dest, from_snap=base, cluster=spec(cluster), dest_cluster=other).run()
        assert cluster2.md5(f"{dest}@{snap}") == cluster.md5(f"{source}@{snap}")
    assert cluster2.snaps(dest) == ["s1", "s2"]
    assert not cluster.exists(dest)


def test_head_source_makes_no_snapshot(cluster: Cluster, source: str, name: str) -> None:
    dest = f"backups/{name}"
    stats = DiffTransfer(source, dest, cluster=spec(cluster), whole_object=True).run()
    assert stats.end_snap is None
    assert cluster.snaps(dest) == []
    assert cluster.md5(dest) == cluster.md5(source)


def test_plan_writes_nothing(cluster: Cluster, source: str, name: str) -> None:
    dest = f"backups/{name}"
    plan = DiffTransfer(f"{source}@s1", dest, cluster=spec(cluster)).plan()
    assert (plan.create_destination, plan.dest_size, plan.end_snap) == (True, None, "s1")
    assert plan.source_size == 64 * MiB
    assert plan.data_bytes >= 4 * MiB
    assert not cluster.exists(dest)


def test_progress_rises_to_the_total_through_the_phases(cluster: Cluster, source: str, name: str) -> None:
    seen: list[rbd_diffsync.Progress] = []
    stats = DiffTransfer(f"{source}@s2", f"backups/{name}", cluster=spec(cluster), progress_interval=0.01).run(
        progress=seen.append
    )
    phases = [p.phase for p in seen]
    order = ["connecting", "scanning", "copying", "committing"]
    assert sorted(set(phases), key=order.index) == order
    assert phases == sorted(phases, key=order.index), "phases go forward only"
    done = [p.bytes_done for p in seen]
    assert done == sorted(done), "bytes_done never goes back"
    last = seen[-1]
    assert last.bytes_total > 0 and last.bytes_done == last.bytes_total
    assert stats.diff_bytes > 0
    assert all(isinstance(p.elapsed, float) for p in seen)


def slow(cluster: Cluster, image: str, **kw: object) -> DiffTransfer:
    """A transfer of 8 MiB of data in 16 KiB requests, one at a time: seconds long."""
    cluster.create(image, 8 * MiB)
    cluster.write(image, data=[(i * MiB, pattern(i, MiB)) for i in range(8)])
    cluster.snap(image, "s1")
    return DiffTransfer(
        f"{image}@s1", image.replace("rbd/", "backups/"), cluster=spec(cluster), chunk_size=16384, window=1, **kw
    )


def test_other_threads_run_during_a_transfer(cluster: Cluster, name: str) -> None:
    transfer = slow(cluster, f"rbd/{name}")
    ticks = 0
    stop = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.002)

    # The ticks counted at each progress report of the copy. The callback runs with the GIL
    # on the calling thread; between two reports the transfer runs in Rust: had it kept the
    # GIL there, the ticker could not have counted anything between them. (With a switch
    # interval this long, the GIL passes from one thread to another only when the one holding
    # it lets it go, not every 5 ms, which could be in the middle of a callback.)
    seen: list[int] = []

    def progress(p: rbd_diffsync.Progress) -> None:
        if p.phase == "copying":
            seen.append(ticks)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        started = time.monotonic()
        transfer.run(progress=progress)
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    grew = sum(b > a for a, b in zip(seen, seen[1:]))
    print(f"{ticks} ticks in {took:.2f} s; the ticker ran between {grew} of {len(seen) - 1} pairs of copy reports")
    assert len(seen) >= 2, "the copy was too short to tell"
    assert grew >= 1, seen


def test_cancel_from_another_thread_stops_and_a_rerun_completes(cluster: Cluster, name: str) -> None:
    transfer = slow(cluster, f"rbd/{name}")
    dest = f"backups/{name}"
    copying = threading.Event()

    def progress(p: rbd_diffsync.Progress) -> None:
        if p.phase == "copying" and p.bytes_done > 0:
            copying.set()

    canceller = threading.Thread(target=lambda: (copying.wait(30), transfer.cancel()))
    canceller.start()
    with pytest.raises(rbd_diffsync.CancelledError) as caught:
        transfer.run(progress=progress)
    canceller.join()
    assert caught.value.errno == errno.ECANCELED and caught.value.kind == "cancelled"
    assert transfer.cancelled
    assert cluster.snaps(dest) == []
    with pytest.raises(rbd_diffsync.CancelledError):
        transfer.run()  # cancel() holds for later runs of the same object
    stats = DiffTransfer(f"rbd/{name}@s1", dest, cluster=spec(cluster)).run()
    assert stats.continued_interrupted
    assert cluster.md5(f"{dest}@s1") == cluster.md5(f"rbd/{name}@s1")


def test_a_rerun_after_a_cancel_compares_what_the_cancelled_run_had_done(cluster: Cluster, name: str) -> None:
    # Held back to 2 MiB/s: its 8 MiB take 4 s at least, and it records a checkpoint (done=)
    # in the destination's in-progress record every second.
    transfer = slow(cluster, f"rbd/{name}", rate_limit=2 * MiB)
    dest = f"backups/{name}"

    def checkpoint() -> int:
        try:
            record = cluster.rbd("image-meta", "get", dest, "rbd_diffsync.in_progress").decode()
        except AssertionError:  # no destination or no record yet
            return 0
        return next((int(f[5:]) for f in record.split() if f.startswith("done=")), 0)

    # The record is read (rbd image-meta get opens the image) only once the transfer copies:
    # earlier, its open could make the transfer find the destination open by another client.
    copying = threading.Event()

    def progress(p: rbd_diffsync.Progress) -> None:
        if p.phase == "copying":
            copying.set()

    def cancel_once_checkpointed() -> None:
        copying.wait(60)
        for _ in range(600):  # a minute at most: the copy takes seconds
            if checkpoint() > 0:
                break
            time.sleep(0.1)
        transfer.cancel()

    canceller = threading.Thread(target=cancel_once_checkpointed)
    canceller.start()
    with pytest.raises(rbd_diffsync.CancelledError):
        transfer.run(progress=progress)
    canceller.join()
    assert checkpoint() > 0 and cluster.snaps(dest) == []
    # The cancelled run let go of the destination before the rerun took it: what lies below
    # its checkpoint is compared with the source, not trusted.
    stats = DiffTransfer(f"rbd/{name}@s1", dest, cluster=spec(cluster)).run()
    assert stats.continued_interrupted and stats.bytes_resumed > 0, stats
    assert stats.bytes_rechecked > 0, stats
    assert cluster.md5(f"{dest}@s1") == cluster.md5(f"rbd/{name}@s1")


@pytest.mark.parametrize("phase", ["connecting", "scanning", "copying"])
def test_an_exception_in_the_callback_stops_the_transfer_in_every_phase(
    cluster: Cluster, name: str, phase: str
) -> None:
    transfer = slow(cluster, f"rbd/{name}")
    dest = f"backups/{name}"

    class Stop(Exception):
        pass

    raised = Stop(phase)
    calls: list[str] = []

    def progress(p: rbd_diffsync.Progress) -> None:
        calls.append(p.phase)
        if p.phase == phase:
            raise raised

    with pytest.raises(Stop) as caught:
        transfer.run(progress=progress)
    assert caught.value is raised
    assert calls[-1] == phase and calls.count(phase) == 1, "no call after the exception"
    assert not cluster.exists(dest) or cluster.snaps(dest) == []
    DiffTransfer(f"rbd/{name}@s1", dest, cluster=spec(cluster)).run()
    assert cluster.md5(f"{dest}@s1") == cluster.md5(f"rbd/{name}@s1")


def test_an_exception_in_the_callback_while_committing_is_too_late_run_returns_the_stats(
    cluster: Cluster, source: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = f"backups/{name}"

    class Stop(Exception):
        pass

    raised = Stop("committing")
    calls: list[str] = []

    def progress(p: rbd_diffsync.Progress) -> None:
        calls.append(p.phase)
        if p.phase == "committing":
            raise raised

    ignored: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    # Once the end snapshot is being created, the transfer can no longer stop: run() returns
    # what it did, as the cluster holds it, and the exception goes where Python sends those it
    # cannot raise.
    stats = DiffTransfer(f"{source}@s2", dest, cluster=spec(cluster), progress_interval=0.01).run(progress=progress)
    assert (stats.dest, stats.end_snap) == (dest, "s2")
    assert calls[-1] == "committing" and calls.count("committing") == 1, "no call after the exception"
    assert [(u.exc_value, u.object) for u in ignored] == [(raised, progress)]  # type: ignore[attr-defined]
    assert cluster.snaps(dest) == ["s2"]
    assert cluster.md5(f"{dest}@s2") == cluster.md5(f"{source}@s2")
    # The next incremental continues from it.
    cluster.write(source, data=[(MiB, pattern(12, 4096))])
    cluster.snap(source, "s3")
    DiffTransfer(f"{source}@s3", dest, from_snap="s2", cluster=spec(cluster)).run()
    assert cluster.md5(f"{dest}@s3") == cluster.md5(f"{source}@s3")


def test_ctrl_c_while_committing_is_too_late_run_returns_the_stats(
    cluster: Cluster, source: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = f"backups/{name}"
    sent: list[str] = []

    def progress(p: rbd_diffsync.Progress) -> None:
        if p.phase == "committing" and not sent:
            sent.append(p.phase)
            # A real SIGINT to this (the main) thread, as Ctrl-C sends it.
            signal.raise_signal(signal.SIGINT)

    ignored: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stats = DiffTransfer(f"{source}@s1", dest, cluster=spec(cluster)).run(progress=progress)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert sent == ["committing"]
    assert (stats.dest, stats.end_snap, stats.created_destination) == (dest, "s1", True)
    assert [type(u.exc_value) for u in ignored] == [KeyboardInterrupt]  # type: ignore[attr-defined]
    assert cluster.snaps(dest) == ["s1"]
    assert cluster.md5(f"{dest}@s1") == cluster.md5(f"{source}@s1")


def test_a_callback_returning_false_cancels(cluster: Cluster, name: str) -> None:
    transfer = slow(cluster, f"rbd/{name}")
    calls: list[str] = []

    def progress(p: rbd_diffsync.Progress) -> bool:
        calls.append(p.phase)
        return p.phase != "copying"

    with pytest.raises(rbd_diffsync.CancelledError) as caught:
        transfer.run(progress=progress)
    assert caught.value.errno == errno.ECANCELED
    assert calls[-1] == "copying" and calls.count("copying") == 1, "no call after False"
    assert not transfer.cancelled
    assert cluster.snaps(f"backups/{name}") == []
