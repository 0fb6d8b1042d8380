from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.storage import (
    UnsafeUIDError,
    instance_path,
    move_atomic,
    sha256_of,
    sweep_partial_writes,
    write_atomic,
)


def test_write_atomic_leaves_whole_file_and_no_temp(tmp_path: Path) -> None:
    p = instance_path(tmp_path, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    stored = write_atomic(p, b"DICM" * 1000)
    assert p.read_bytes() == b"DICM" * 1000
    assert stored.sha256 == sha256_of(p) and stored.size_bytes == 4000
    assert [q.name for q in p.parent.iterdir()] == ["1.2.3.4.5.dcm"]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.3/4", "", "1.2.x", "1." + "2" * 70])
def test_malformed_uid_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafeUIDError):
        instance_path(tmp_path, bad, "1.2", "1.3")


def test_move_atomic_moves_without_reading(tmp_path: Path) -> None:
    src = tmp_path / "incoming.dcm"
    src.write_bytes(b"x" * 3_000_000)
    dst = tmp_path / "a" / "b.dcm"
    stored = move_atomic(src, dst)
    assert not src.exists() and dst.read_bytes() == b"x" * 3_000_000
    assert stored.size_bytes == 3_000_000 and stored.sha256 is None


def test_sweep_removes_only_partial_writes(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".x.dcm.123.tmp").write_bytes(b"half")
    (tmp_path / "s" / "x.dcm").write_bytes(b"whole")
    assert sweep_partial_writes(tmp_path) == 1
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.dcm"]
