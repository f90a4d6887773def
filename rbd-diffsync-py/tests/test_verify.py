"""Verification: a transfer's read-back (verify=True) and whole-image comparisons (Verify)."""

from __future__ import annotations

import _thread
import errno
import threading

import pytest

import rbd_diffsync
from rbd_diffsync import ClusterSpec, DiffTransfer, Verify

from conftest import MiB, Cluster, pattern


def test_a_transfer_with_verify_reads_back_what_it_wrote(cluster: Cluster, source: str, name: str) -> None:
    phases: list[str] = []
    stats = DiffTransfer(f"{source}@s1", f"backups/{name}", cluster=ClusterSpec(cluster.conf), verify=True).run(
        progress=lambda p: phases.append(p.phase)
    )
    assert stats.bytes_verified > 0 and stats.bytes_resumed == 0 and stats.broke_lock_of is None
    assert stats.bytes_rechecked == 0
    assert "verifying" in phases and phases.index("verifying") < phases.index("committing")


def test_equal_images_then_a_difference_at_a_known_offset(cluster: Cluster, cluster2: Cluster, source: str, name: str) -> None:
    dest = f"backups/{name}"
    c, c2 = ClusterSpec(cluster.conf), ClusterSpec(cluster2.conf)
    DiffTransfer(f"{source}@s1", dest, cluster=c, dest_cluster=c2).run()
    stats = Verify(f"{source}@s1", f"{dest}@s1", cluster=c, dest_cluster=c2).run()
    assert (stats.source, stats.dest, stats.image_size) == (f"{source}@s1", f"{dest}@s1", 64 * MiB)
    assert stats.bytes_compared >= 4 * MiB and stats.bytes_compared + stats.bytes_skipped == 64 * MiB

    # One byte where the source reads zeros, in a snapshot of the destination.
    offset = 20 * MiB + 4097
    cluster2.write(dest, data=[(offset, b"\x01")])
    cluster2.snap(dest, "changed")
    with pytest.raises(rbd_diffsync.MismatchError) as caught:
        Verify(f"{source}@s1", f"{dest}@changed", cluster=c, dest_cluster=c2).run()
    e = caught.value
    assert (e.errno, e.kind, e.offset) == (rbd_diffsync.MISMATCH, "mismatch", offset)
    assert e.image is not None and name in e.image


def slow_verify(cluster: Cluster, image: str) -> Verify:
    """An 8 MiB image compared with itself in 4 KiB reads, one at a time: over a second."""
    cluster.create(image, 8 * MiB)
    cluster.write(image, data=[(i * MiB, pattern(i, MiB)) for i in range(8)])
    cluster.snap(image, "s1")
    return Verify(
        f"{image}@s1", f"{image}@s1", cluster=ClusterSpec(cluster.conf), chunk_size=4096, window=1, progress_interval=0.01
    )


def test_cancel_and_ctrl_c_stop_a_verification(cluster: Cluster, name: str) -> None:
    verify = slow_verify(cluster, f"rbd/{name}")
    verifying = threading.Event()

    def progress(p: rbd_diffsync.Progress) -> None:
        if p.phase == "verifying" and p.bytes_done > 0:
            verifying.set()

    # Ctrl-C: interrupt_main() is what the SIGINT handler does.
    interrupter = threading.Thread(target=lambda: verifying.wait(30) and _thread.interrupt_main())
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        verify.run(progress=progress)
    interrupter.join()

    verifying.clear()
    canceller = threading.Thread(target=lambda: verifying.wait(30) and verify.cancel())
    canceller.start()
    with pytest.raises(rbd_diffsync.CancelledError) as caught:
        verify.run(progress=progress)
    canceller.join()
    assert caught.value.errno == errno.ECANCELED and verify.cancelled
