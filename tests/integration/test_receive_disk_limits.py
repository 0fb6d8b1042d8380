"""The disk is shared by every sender: a full disk, an over-sized data set or free space below the
watermark each get 0xA700 (out of resources: retry later) rather than an A-ABORT, nothing of the
refused data set is kept, and the association goes on with the next instance.

The full disk is real: a small tmpfs mounted for the test (root only; skipped where mount(8) is
not permitted)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.testing.phantoms import make_phantom


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: a real filesystem that fills up (ENOSPC)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _phantom_file(tmp_path: Path, seed: int, size: int) -> tuple[Path, str]:
    ds = make_phantom(np.random.default_rng(seed), False, size=size)
    f = tmp_path / f"phantom-{seed}.dcm"
    ds.save_as(f, enforce_file_format=True)
    return f, str(ds.SOPInstanceUID)


def _settings(tmp_path: Path, storage: Path, **changes: Any) -> Settings:
    # SQL outside the small disk: what fills up is the instance storage
    return Settings(
        host="127.0.0.1",
        port=0,
        storage_dir=storage,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        quiet_seconds=3600,
        **changes,
    )


def _kept_files(storage: Path) -> list[Path]:
    return [p for p in storage.rglob("*") if p.is_file()]


def test_disk_full_answers_a700_and_the_association_goes_on(
    tmp_path: Path, small_disk: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = node_factory(_settings(tmp_path, small_disk, min_free_bytes=0))
    big, big_uid = _phantom_file(tmp_path, 51, 2200)  # about 9.7 MB: more than the disk holds
    small, small_uid = _phantom_file(tmp_path, 52, 64)
    results = push_files([big, small], "127.0.0.1", node.port)
    assert [r.status for r in results] == [status.OUT_OF_RESOURCES, status.SUCCESS]
    assert node.flush_records() and node.store is not None
    assert instance_by_sop_uid(node.store, big_uid) is None
    assert instance_by_sop_uid(node.store, small_uid) is not None
    assert list((small_disk / "incoming").iterdir()) == [] or all(
        p.stat().st_size == 0 for p in (small_disk / "incoming").iterdir()  # the association's spare
    )
    assert shutil.disk_usage(small_disk).used < 1 << 20  # the partial file is gone
    [refused] = [e for e in logs if e["event"] == "store.refused"]
    assert refused["status"] == status.OUT_OF_RESOURCES and "ENOSPC" in refused["reason"]


def test_data_set_over_max_dataset_bytes_is_refused_and_nothing_kept(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    storage = tmp_path / "node"
    node = node_factory(_settings(tmp_path, storage, max_dataset_bytes=200_000))
    big, big_uid = _phantom_file(tmp_path, 53, 512)  # about 520 KB of pixel data
    small, small_uid = _phantom_file(tmp_path, 54, 64)
    results = push_files([big, small, big], "127.0.0.1", node.port)
    assert [r.status for r in results] == [status.OUT_OF_RESOURCES, status.SUCCESS, status.OUT_OF_RESOURCES]
    assert node.flush_records() and node.store is not None
    assert instance_by_sop_uid(node.store, big_uid) is None
    kept = [p for p in _kept_files(storage) if p.suffix == ".dcm" and p.stat().st_size > 0]
    assert [p.name for p in kept if "instances" in p.parts] == [f"{small_uid}.dcm"]
    assert all("incoming" not in p.parts for p in kept)


def test_free_space_below_the_watermark_refuses_new_instances_before_writing(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    storage = tmp_path / "node"
    free = shutil.disk_usage(tmp_path).free
    node = node_factory(_settings(tmp_path, storage, min_free_bytes=free + (1 << 40)))
    f, uid = _phantom_file(tmp_path, 55, 64)
    assert [r.status for r in push_files([f, f], "127.0.0.1", node.port)] == [status.OUT_OF_RESOURCES] * 2
    assert node.flush_records() and node.store is not None
    assert instance_by_sop_uid(node.store, uid) is None
    assert not [p for p in _kept_files(storage) if "instances" in p.parts]
