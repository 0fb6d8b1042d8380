"""Start-up re-scan: disk and SQL agree again before the SCP listens, and left-over work is re-queued.

The crash windows are reproduced by hand (a file renamed into place but never recorded, a row whose
file vanished, half-written temp files, a study complete but never analysed) and a node is started
on that storage.
"""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.storage import instance_path, sha256_of
from dicomnode.store.db import Store
from dicomnode.store.models import Event, StudyState
from dicomnode.store.queries import study_instances, study_state
from dicomnode.store.records import set_study_state
from dicomnode.testing.phantoms import make_phantom


class RecordingRunner:
    """A task runner that only remembers what it was given."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        self.submitted.append(study_uid)

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        pass

    def factory(self, settings: Settings, store: Store) -> RecordingRunner:
        return self


def _settings(tmp_path: Path, quiet: float = 3600) -> Settings:
    return Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=quiet)


def _events(node: Node, kind: str) -> list[Event]:
    assert node.store is not None
    with node.store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


def test_restart_records_unrecorded_files_and_reports_missing_ones(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    sent = make_phantom(np.random.default_rng(31), False, size=64)
    f = tmp_path / "sent.dcm"
    sent.save_as(f, enforce_file_format=True)
    node = Node(settings, RecordingRunner().factory).start()
    try:
        assert push_files([f], "127.0.0.1", node.port)[0].status == status.SUCCESS
    finally:
        node.stop()
    [sent_file] = list(settings.instances_dir.rglob("*.dcm"))

    # crash between rename and commit: a whole file in place, no row
    orphan = make_phantom(np.random.default_rng(32), True, size=64)
    orphan_path = instance_path(
        settings.instances_dir, orphan.StudyInstanceUID, orphan.SeriesInstanceUID, orphan.SOPInstanceUID
    )
    orphan_path.parent.mkdir(parents=True)
    orphan.save_as(orphan_path, enforce_file_format=True)
    # a row whose file is gone; a half-written temp file; a receive buffer of a dead association
    shutil.move(sent_file, tmp_path / "lost.dcm")
    (orphan_path.parent / f".{orphan_path.name}.999.tmp").write_bytes(b"half")
    (settings.storage_dir / "incoming").mkdir(exist_ok=True)
    (settings.storage_dir / "incoming" / "rx-dead.dcm").write_bytes(b"partial")

    node = Node(settings, RecordingRunner().factory).start()
    try:
        report = node.wait_rescan(60)
        assert report is not None
        assert (report.files, report.recorded, report.missing, report.unreadable) == (1, 1, 1, 0)
        assert node.store is not None
        [row] = study_instances(node.store, orphan.StudyInstanceUID)
        assert row.path == str(orphan_path.resolve()) and row.sha256 == sha256_of(orphan_path)
        assert row.sop_class_uid == orphan.SOPClassUID and row.calling_ae is None
        assert study_state(node.store, orphan.StudyInstanceUID) is StudyState.RECEIVING
        [recovered] = _events(node, "instance.recovered")
        assert recovered.detail["sop_instance_uid"] == orphan.SOPInstanceUID
        [missing] = _events(node, "instance.file_missing")
        assert missing.detail["sop_instance_uid"] == sent.SOPInstanceUID
        assert not list(settings.instances_dir.rglob("*.tmp"))
        assert list((settings.storage_dir / "incoming").iterdir()) == []
        # the lost instance is stored again when its sender re-sends it
        assert push_files([f], "127.0.0.1", node.port)[0].status == status.SUCCESS
        assert pydicom.dcmread(sent_file).SOPInstanceUID == sent.SOPInstanceUID
    finally:
        node.stop()


def test_restart_requeues_complete_studies_and_rearms_receiving_ones(tmp_path: Path) -> None:
    settings = _settings(tmp_path, quiet=0.3)
    files = []
    for seed in (41, 42):
        ds = make_phantom(np.random.default_rng(seed), False, size=64)
        files.append((ds.StudyInstanceUID, tmp_path / f"{seed}.dcm"))
        ds.save_as(files[-1][1], enforce_file_format=True)
    (complete_uid, f1), (receiving_uid, f2) = files
    first = Node(settings.with_overrides(quiet_seconds=3600), RecordingRunner().factory).start()
    try:
        assert [r.status for r in push_files([f1, f2], "127.0.0.1", first.port)] == [0, 0]
        assert first.store is not None and first.flush_records()
        # the first run handed one study on and died before it was analysed
        assert set_study_state(first.store, complete_uid, StudyState.COMPLETE)
    finally:
        first.stop()

    runner = RecordingRunner()
    node = Node(settings, runner.factory).start()
    try:
        assert runner.submitted[:1] == [complete_uid]  # re-queued at start
        deadline = time.monotonic() + 5
        while receiving_uid not in runner.submitted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(runner.submitted) == sorted([complete_uid, receiving_uid])  # each once
    finally:
        node.stop()
