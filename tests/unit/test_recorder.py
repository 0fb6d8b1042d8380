"""The instance recorder on its own: rows commit in batches off the C-STORE path, each record's
callback runs after its row committed, ``flush`` waits for them (SQLite file, no network)."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import func, select

from dicomnode.receive.recorder import InstanceRecorder
from dicomnode.store.db import Store
from dicomnode.store.models import Instance, Study, StudyState
from dicomnode.store.queries import study_state
from dicomnode.store.records import InstanceOutcome, InstanceRecord


def _record(study: int, n: int, tmp_path: Path) -> InstanceRecord:
    return InstanceRecord(
        study_uid=f"1.2.826.0.1.{study}",
        series_uid=f"1.2.826.0.1.{study}.1",
        sop_instance_uid=f"1.2.826.0.1.{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX",
        path=str(tmp_path / f"{study}-{n}.dcm"),
        size_bytes=1000 + n,
        sha256=None,
        calling_ae="MODALITY",
    )


def test_every_submitted_record_commits_and_is_called_back_after_its_row(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    seen: list[tuple[str, bool, bool]] = []
    rows_at_callback: list[int] = []
    lock = threading.Lock()

    def on_recorded(rec: InstanceRecord, outcome: InstanceOutcome) -> None:
        with store.session() as s:  # the row is visible to another session: it has committed
            rows_at_callback.append(
                s.scalar(select(func.count()).where(Instance.sop_instance_uid == rec.sop_instance_uid)) or 0
            )
        with lock:
            seen.append((rec.sop_instance_uid, outcome.duplicate, outcome.reopened))

    recorder = InstanceRecorder(store, on_recorded).start()
    try:
        records = [_record(study, n, tmp_path) for study in (1, 2) for n in range(5)]
        assert all(recorder.submit(r) for r in records)
        assert recorder.submit(_record(1, 0, tmp_path))  # the same instance again
        assert recorder.flush(10)
    finally:
        recorder.stop()

    assert rows_at_callback == [1] * 11
    assert sorted(uid for uid, _, _ in seen[:10]) == sorted(r.sop_instance_uid for r in records)
    assert seen[10] == ("1.2.826.0.1.1.1.0", True, False)  # a duplicate, not a new row
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 10
        assert s.scalar(select(func.count()).select_from(Study)) == 2
    assert study_state(store, "1.2.826.0.1.1") == StudyState.RECEIVING


def test_a_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    recorder = InstanceRecorder(store, lambda rec, outcome: None, max_queue=2)  # thread not started
    assert recorder.submit(_record(1, 0, tmp_path))
    assert recorder.submit(_record(1, 1, tmp_path))
    assert not recorder.submit(_record(1, 2, tmp_path))
    assert recorder.pending_path("1.2.826.0.1.1.1.2") is None  # a refused record leaves nothing behind
    assert recorder.pending_path("1.2.826.0.1.1.1.0") == str(tmp_path / "1-0.dcm")
