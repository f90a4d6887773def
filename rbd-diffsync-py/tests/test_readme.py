"""The README's Python example runs as written, on a test image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import Cluster

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs(cluster: Cluster, source: str, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    section = README.read_text().split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    code = (
        code.replace("/etc/ceph/ceph.conf", cluster.conf)
        .replace("rbd/vol@", f"{source}@")
        .replace("backups/vol.backup", f"backups/{name}")
    )
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "bytes to copy" in out and "copying" in out and "bytes written" in out
    assert cluster.snaps(f"backups/{name}") == ["s1", "s2"]
    assert cluster.md5(f"backups/{name}@s2") == cluster.md5(f"{source}@s2")
