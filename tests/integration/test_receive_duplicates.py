"""A SOP Instance UID that is already stored, under DICOMNODE_DUPLICATE_POLICY=overwrite and =ignore.

Both answer Success (the sender did nothing wrong by re-sending) and record an event; overwrite
replaces the file atomically, ignore keeps the first bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.storage import sha256_of
from dicomnode.store.models import Event
from dicomnode.store.queries import study_instances
from dicomnode.testing.phantoms import make_phantom
from tests.support import fingerprint_of


def _node(tmp_path: Path, factory: Callable[[Settings], Node], policy: str) -> Node:
    return factory(
        Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            quiet_seconds=3600,
            duplicate_policy=policy,
        )
    )


def _versions(tmp_path: Path) -> tuple[Dataset, Path, Path]:
    """Two files of the same instance with different content (a corrected re-send)."""
    ds = make_phantom(np.random.default_rng(21), False, size=64)
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    ds.SeriesDescription = "first"
    ds.save_as(first, enforce_file_format=True)
    ds.SeriesDescription = "second"
    ds.save_as(second, enforce_file_format=True)
    return ds, first, second


def _events(node: Node, kind: str) -> list[Event]:
    assert node.store is not None
    with node.store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


def _send(node: Node, f: Path) -> int | None:
    [res] = push_files([f], "127.0.0.1", node.port)
    return res.status


@pytest.mark.parametrize("policy", ["overwrite", "ignore"])
def test_duplicate_instance_is_answered_success_and_stored_once(
    policy: str, tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, policy)
    ds, first, second = _versions(tmp_path)
    assert _send(node, first) == status.SUCCESS
    assert _send(node, second) == status.SUCCESS
    files = [p for p in node.settings.instances_dir.rglob("*") if p.is_file()]
    assert len(files) == 1
    assert node.store is not None
    assert node.flush_records()
    [row] = study_instances(node.store, ds.StudyInstanceUID)
    kept = "second" if policy == "overwrite" else "first"
    assert pydicom.dcmread(files[0]).SeriesDescription == kept
    assert row.path == str(files[0])
    assert fingerprint_of(node.store, ds.SOPInstanceUID) == sha256_of(files[0])
    kind = "instance.duplicate" if policy == "overwrite" else "instance.duplicate_ignored"
    [event] = _events(node, kind)
    assert event.study_uid == ds.StudyInstanceUID and event.detail["sop_instance_uid"] == ds.SOPInstanceUID


def test_overwrite_that_moves_an_instance_to_another_study_removes_the_old_file(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, "overwrite")
    ds, first, _ = _versions(tmp_path)
    assert _send(node, first) == status.SUCCESS
    ds.StudyInstanceUID = pydicom.uid.generate_uid()  # the modality corrected the study
    moved = tmp_path / "moved.dcm"
    ds.save_as(moved, enforce_file_format=True)
    assert _send(node, moved) == status.SUCCESS
    assert node.flush_records()  # the old file goes once the moved row has committed
    [only] = [p for p in node.settings.instances_dir.rglob("*.dcm")]
    assert ds.StudyInstanceUID in only.parts
    assert node.store is not None
    [row] = study_instances(node.store, ds.StudyInstanceUID)
    assert row.path == str(only)


def test_ignore_policy_stores_again_when_the_first_file_is_gone(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, "ignore")
    ds, first, second = _versions(tmp_path)
    assert _send(node, first) == status.SUCCESS
    [stored] = [p for p in node.settings.instances_dir.rglob("*.dcm")]
    stored.unlink()  # lost behind the node's back: a re-send must heal it, not be ignored
    assert _send(node, second) == status.SUCCESS
    assert pydicom.dcmread(stored).SeriesDescription == "second"
    assert _events(node, "instance.duplicate_ignored") == []
