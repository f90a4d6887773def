"""Live-cluster helpers for the Python suite. The rbd CLI is the oracle: images are written with
`rbd import-diff` of a stream made here, and compared by the md5 of `rbd export`.

$RBD_DIFFSYNC_CONF and $RBD_DIFFSYNC_CONF2 name the ceph.conf of two clusters (pools `rbd` and
`backups`, client.admin in the conf, client.diffsync's keyring beside it); the suite fails,
rather than skips, when they are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import uuid
from pathlib import Path
from typing import Iterable, Optional

import pytest

MiB = 1 << 20


def _conf(var: str) -> str:
    conf = os.environ.get(var)
    if not conf or not Path(conf).is_file():
        pytest.fail(f"${var} must name the ceph.conf of a running test cluster", pytrace=False)
    return conf


class Cluster:
    """One test cluster, driven through the rbd CLI as client.admin."""

    def __init__(self, conf: str) -> None:
        self.conf = conf
        self.dir = Path(conf).parent
        self.diffsync_keyring = str(self.dir / "client.diffsync.keyring")

    def rbd(self, *args: str, input: Optional[bytes] = None) -> bytes:
        out = subprocess.run(
            ["rbd", "-c", self.conf, *args], input=input, capture_output=True, check=False
        )
        if out.returncode != 0:
            raise AssertionError(f"rbd {' '.join(args)}: {out.stderr.decode(errors='replace')}")
        return out.stdout

    def ceph(self, *args: str) -> bytes:
        return subprocess.run(
            ["ceph", "-c", self.conf, *args], capture_output=True, check=True
        ).stdout

    def create(self, image: str, size: int, *extra: str) -> None:
        self.rbd("create", "--size", f"{size}B", *extra, image)

    def write(
        self,
        image: str,
        data: Iterable[tuple[int, bytes]] = (),
        zero: Iterable[tuple[int, int]] = (),
        size: Optional[int] = None,
    ) -> None:
        """Writes `data` at their offsets and makes `zero` ranges read as zeros, in HEAD (and
        resizes to `size`): an rbd diff v1 stream fed to `rbd import-diff`."""
        out = bytearray(b"rbd diff v1\n")
        if size is not None:
            out += b"s" + struct.pack("<Q", size)
        for offset, chunk in data:
            out += b"w" + struct.pack("<QQ", offset, len(chunk)) + chunk
        for offset, length in zero:
            out += b"z" + struct.pack("<QQ", offset, length)
        out += b"e"
        self.rbd("import-diff", "--no-progress", "-", image, input=bytes(out))

    def snap(self, image: str, name: str) -> None:
        self.rbd("snap", "create", f"{image}@{name}")

    def snaps(self, image: str) -> list[str]:
        listed = json.loads(self.rbd("snap", "ls", "--format", "json", image))
        return [s["name"] for s in sorted(listed, key=lambda s: s["id"])]

    def exists(self, image: str) -> bool:
        pool, name = image.split("/", 1)
        return name in json.loads(self.rbd("ls", "--format", "json", pool))

    def md5(self, spec: str) -> str:
        proc = subprocess.Popen(
            ["rbd", "-c", self.conf, "export", "--no-progress", spec, "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        digest = hashlib.md5()
        for block in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            digest.update(block)
        _, err = proc.communicate()
        assert proc.returncode == 0, f"rbd export {spec}: {err.decode(errors='replace')}"
        return digest.hexdigest()


def pattern(seed: int, length: int) -> bytes:
    """Bytes that differ from seed to seed and are never all zero."""
    block = hashlib.sha256(str(seed).encode()).digest()
    return (block * (length // len(block) + 1))[:length]


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return Cluster(_conf("RBD_DIFFSYNC_CONF"))


@pytest.fixture(scope="session")
def cluster2() -> Cluster:
    return Cluster(_conf("RBD_DIFFSYNC_CONF2"))


@pytest.fixture
def name() -> str:
    """A fresh image name for one test."""
    return "py-" + uuid.uuid4().hex[:10]


@pytest.fixture
def source(cluster: Cluster, name: str) -> str:
    """rbd/<name>: 64 MiB, 4 MiB objects, data in a few objects and snapshot s1; then more
    writes, a zeroed range, a grown size and snapshot s2."""
    image = f"rbd/{name}-src"
    cluster.create(image, 64 * MiB, "--object-size", "4M")
    cluster.write(
        image,
        data=[(0, pattern(1, 3 * MiB)), (10 * MiB + 4096, pattern(2, 5000)), (40 * MiB, pattern(3, MiB))],
    )
    cluster.snap(image, "s1")
    cluster.write(
        image,
        data=[(2 * MiB, pattern(4, 2 * MiB)), (70 * MiB, pattern(5, 8192))],
        zero=[(40 * MiB, 512 * 1024)],
        size=72 * MiB,
    )
    cluster.snap(image, "s2")
    return image
