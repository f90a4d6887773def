"""rbd_diffsync.cinder.rbd_diff_transfer against the pipe cinder runs, on the same inputs.

`pipe()` builds the two command lines exactly as cinder 29.0.0's
`CephBackupDriver._rbd_diff_transfer` does (with its `_ceph_args`) and runs them as its
`_piped_execute` does: export-diff's stdout into import-diff's stdin, both stderr to one file.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
from typing import Optional

import pytest

import rbd_diffsync
from rbd_diffsync import DiffTransfer
from rbd_diffsync.cinder import rbd_diff_transfer

from conftest import MiB, Cluster, pattern


def ceph_args(user: str, conf: Optional[str] = None, pool: Optional[str] = None) -> list[str]:
    assert user, "cinder refuses an empty user"
    args = ["--id", user]
    if conf:
        args.extend(["--conf", conf])
    if pool:
        args.extend(["--pool", pool])
    return args


def pipe(
    src_name: str,
    src_pool: str,
    dest_name: str,
    dest_pool: str,
    src_user: str,
    src_conf: Optional[str],
    dest_user: str,
    dest_conf: Optional[str],
    src_snap: Optional[str] = None,
    from_snap: Optional[str] = None,
) -> tuple[int, bytes]:
    cmd1 = ["rbd", "export-diff"] + ceph_args(src_user, src_conf, pool=src_pool)
    if from_snap is not None:
        cmd1.extend(["--from-snap", from_snap])
    if src_snap:
        path = "%s/%s@%s" % (src_pool, src_name, src_snap)
    else:
        path = "%s/%s" % (src_pool, src_name)
    cmd1.extend([path, "-"])
    cmd2 = ["rbd", "import-diff"] + ceph_args(dest_user, dest_conf, pool=dest_pool)
    cmd2.extend(["-", "%s/%s" % (dest_pool, dest_name)])
    with tempfile.TemporaryFile() as errfile:
        p1 = subprocess.Popen(cmd1, stdout=subprocess.PIPE, stderr=errfile, close_fds=True)
        assert p1.stdout is not None
        flags = fcntl.fcntl(p1.stdout, fcntl.F_GETFL) & (~os.O_NONBLOCK)
        fcntl.fcntl(p1.stdout, fcntl.F_SETFL, flags)
        p2 = subprocess.Popen(cmd2, stdin=p1.stdout, stdout=subprocess.PIPE, stderr=errfile, close_fds=True)
        p1.stdout.close()
        p2.communicate()
        p1.wait()
        errfile.seek(0)
        stderr = errfile.read()
    return p1.returncode or p2.returncode, stderr


def both(cluster: Cluster, dests: dict[str, str], src_image: str, src_snap: Optional[str], from_snap: Optional[str], **users: Optional[str]) -> None:
    """The pipe into dests["pipe"], the function into dests["function"] (either may be
    missing), with cinder's arguments."""
    pool, name = src_image.split("/")
    for how, dest in dests.items():
        dest_pool, dest_name = dest.split("/")
        args = dict(
            src_user=users.get("src_user", "admin"),
            src_conf=users.get("src_conf", cluster.conf),
            dest_user=users.get("dest_user", "admin"),
            dest_conf=users.get("dest_conf", cluster.conf),
            src_snap=src_snap,
            from_snap=from_snap,
        )
        if how == "pipe":
            # The pipe needs a user (cinder's _ceph_args refuses none): admin is the default.
            args["src_user"] = args["src_user"] or "admin"
            args["dest_user"] = args["dest_user"] or "admin"
            ret, stderr = pipe(name, pool, dest_name, dest_pool, **args)  # type: ignore[arg-type]
            assert ret == 0, stderr
        else:
            rbd_diff_transfer(name, pool, dest_name, dest_pool, **args)  # type: ignore[arg-type]


def same(cluster: Cluster, src: str, dests: list[str], snap: Optional[str]) -> None:
    at = f"@{snap}" if snap else ""
    expected = cluster.md5(src + at)
    assert [cluster.md5(d + at) for d in dests] == [expected] * len(dests)
    lists = [cluster.snaps(d) for d in dests]
    assert all(l == lists[0] for l in lists), lists


def test_a_cinder_chain_full_then_incrementals(cluster: Cluster, source: str, name: str) -> None:
    # As _backup_rbd: an empty base image created first, then the transfers into it.
    dests = {"pipe": f"backups/{name}-pipe", "function": f"backups/{name}-fn"}
    for d in dests.values():
        cluster.create(d, 64 * MiB)
    both(cluster, dests, source, "s1", None)
    same(cluster, source, list(dests.values()), "s1")
    both(cluster, dests, source, "s2", "s1")
    same(cluster, source, list(dests.values()), "s2")
    cluster.write(source, data=[(5 * MiB, pattern(7, 3 * MiB))], zero=[(0, MiB)])
    cluster.snap(source, "s3")
    both(cluster, dests, source, "s3", "s2")
    same(cluster, source, list(dests.values()), "s3")
    assert cluster.snaps(dests["function"]) == ["s1", "s2", "s3"]


def test_chains_that_mix_the_pipe_and_the_function(cluster: Cluster, source: str, name: str) -> None:
    mixed = f"backups/{name}-mixed"
    cluster.create(mixed, 64 * MiB)
    both(cluster, {"function": mixed}, source, "s1", None)
    both(cluster, {"pipe": mixed}, source, "s2", "s1")
    cluster.write(source, data=[(30 * MiB, pattern(8, MiB))])
    cluster.snap(source, "s3")
    both(cluster, {"function": mixed}, source, "s3", "s2")
    assert cluster.snaps(mixed) == ["s1", "s2", "s3"]
    for snap in ("s1", "s2", "s3"):
        assert cluster.md5(f"{mixed}@{snap}") == cluster.md5(f"{source}@{snap}")


def test_head_source_and_default_conf(cluster: Cluster, source: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A conf of None means what rbd uses without --conf: librados' search, which starts with
    # $CEPH_CONF. Both the rbd CLI (a child of this process) and the library read that
    # variable; no /etc/ceph/ceph.conf is involved. A user of None is client.admin.
    monkeypatch.setenv("CEPH_CONF", cluster.conf)
    dests = {"pipe": f"backups/{name}-pipe", "function": f"backups/{name}-fn"}
    for d in dests.values():
        cluster.create(d, 64 * MiB)
    both(cluster, dests, source, None, None, src_conf=None, dest_conf=None, src_user=None, dest_user=None)
    same(cluster, source, list(dests.values()), None)
    assert cluster.snaps(dests["function"]) == []
    # Empty confs are no confs; an empty from_snap is none: cinder passes `--from-snap ''`,
    # which rbd export-diff takes for a full diff.
    both(cluster, dests, source, "s2", "", src_conf="", dest_conf="")
    same(cluster, source, list(dests.values()), "s2")


def test_cross_cluster_as_in_cinder(cluster: Cluster, cluster2: Cluster, source: str, name: str) -> None:
    dests = {"pipe": f"backups/{name}-pipe", "function": f"backups/{name}-fn"}
    for d in dests.values():
        cluster2.create(d, 64 * MiB)
    for snap, base in (("s1", None), ("s2", "s1")):
        both(cluster, dests, source, snap, base, dest_conf=cluster2.conf)
        assert [cluster2.md5(f"{d}@{snap}") for d in dests.values()] == [cluster.md5(f"{source}@{snap}")] * 2
    assert [cluster2.snaps(d) for d in dests.values()] == [["s1", "s2"]] * 2


def interrupt_pipe(cluster: Cluster, source: str, dest: str, snap: str, base: str) -> None:
    """An export-diff | import-diff that dies half way: import-diff of a cut stream."""
    stream = cluster.rbd("export-diff", "--no-progress", "--from-snap", base, f"{source}@{snap}", "-")
    cut = subprocess.run(
        ["rbd", "-c", cluster.conf, "import-diff", "--no-progress", "-", dest],
        input=stream[: len(stream) // 2],
        capture_output=True,
    )
    assert cut.returncode != 0


def interrupt_function(cluster: Cluster, source: str, dest: str, snap: str, base: str) -> None:
    """A transfer stopped half way through its copying."""
    t = DiffTransfer(
        f"{source}@{snap}",
        dest,
        from_snap=base,
        cluster=rbd_diffsync.ClusterSpec(cluster.conf),
        chunk_size=65536,
        window=1,
        progress_interval=0,  # a call at every step: it sees the half
    )

    def progress(p: rbd_diffsync.Progress) -> bool:
        return not (p.phase == "copying" and p.bytes_done * 2 >= p.bytes_total > 0)

    with pytest.raises(rbd_diffsync.CancelledError):
        t.run(progress=progress)


@pytest.mark.parametrize(
    "interrupted_by, then", [("pipe", "pipe"), ("function", "function"), ("pipe", "function"), ("function", "pipe")]
)
def test_an_incremental_after_an_interrupted_one(cluster: Cluster, source: str, name: str, interrupted_by: str, then: str) -> None:
    # What cinder does after a failed incremental: it deletes the new source snapshot, and the
    # next backup makes another and transfers from the same base.
    dest = f"backups/{name}"
    cluster.create(dest, 64 * MiB)
    both(cluster, {then: dest}, source, "s1", None)
    interrupt = interrupt_pipe if interrupted_by == "pipe" else interrupt_function
    interrupt(cluster, source, dest, "s2", "s1")
    assert cluster.snaps(dest) == ["s1"]
    cluster.rbd("snap", "rm", f"{source}@s2")
    cluster.write(source, data=[(20 * MiB, pattern(11, MiB))])
    cluster.snap(source, "s3")
    both(cluster, {then: dest}, source, "s3", "s1")
    assert cluster.snaps(dest) == ["s1", "s3"]
    assert cluster.md5(f"{dest}@s3") == cluster.md5(f"{source}@s3")


def test_failures_raise_rbd_diffsync_errors_without_cinder(cluster: Cluster, source: str, name: str) -> None:
    try:
        import cinder  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.fail("this test runs where cinder is not installed")
    pool, image = source.split("/")
    with pytest.raises(rbd_diffsync.NotFoundError):
        rbd_diff_transfer(image, pool, name, "backups", "admin", cluster.conf, "admin", cluster.conf, src_snap="s1", from_snap="s0")
    # Like import-diff, an end snapshot already on the destination fails.
    rbd_diff_transfer(image, pool, name, "backups", "admin", cluster.conf, "admin", cluster.conf, src_snap="s1")
    with pytest.raises(rbd_diffsync.ExistsError):
        rbd_diff_transfer(image, pool, name, "backups", "admin", cluster.conf, "admin", cluster.conf, src_snap="s1")
    ret, _ = pipe(image, pool, name, "backups", "admin", cluster.conf, "admin", cluster.conf, src_snap="s1")
    assert ret != 0
