"""The start-up re-scan on its own: files on disk against rows in SQL (SQLite file, no network)."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from dicomnode.receive.rescan import rescan
from dicomnode.storage import instance_path, write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import Event, Instance
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.testing.phantoms import make_phantom


def _file_in_place(root: Path, seed: int) -> tuple[str, Path]:
    ds = make_phantom(np.random.default_rng(seed), False, size=64)
    path = instance_path(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    write_atomic(path, buf.getvalue())
    return str(ds.SOPInstanceUID), path


def test_rescan_records_unknown_files_and_reports_rows_without_a_file(tmp_path: Path) -> None:
    root = tmp_path / "instances"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    kept_uid, kept = _file_in_place(root, 1)
    gone_uid, gone = _file_in_place(root, 2)
    (kept.parent / "not-dicom.dcm").write_bytes(b"garbage")  # in a series folder, among real files

    first = rescan(store, root)
    assert (first.files, first.rows, first.recorded, first.unreadable) == (3, 0, 2, 1)
    row = instance_by_sop_uid(store, kept_uid)
    assert row is not None and Path(row.path) == kept

    gone.unlink()
    second = rescan(store, root)
    assert (second.files, second.rows, second.recorded, second.missing) == (2, 2, 0, 1)
    with store.session() as s:
        missing = list(s.scalars(select(Event).where(Event.kind == "instance.file_missing")))
    assert len(missing) == 1 and gone_uid in str(missing[0].detail)
    assert instance_by_sop_uid(store, gone_uid) is not None  # the row stays: the audit trail does too


def test_rescan_leaves_what_is_newer_than_the_start_to_the_handler(tmp_path: Path) -> None:
    """Files written and rows recorded after ``before`` are the live C-STORE handler's: a file the
    handler renamed into place but has not recorded yet is not recorded twice, and a row it just
    recorded is not flagged missing while its file is being replaced."""
    root = tmp_path / "instances"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    old_uid, old = _file_in_place(root, 3)
    os.utime(old, (1_000_000_000, 1_000_000_000))  # a crash leftover of an earlier run
    before = time.time() - 60  # both the newer file and the newer row come after this
    new_uid, new = _file_in_place(root, 4)  # renamed into place by the handler, row not yet written
    recorded_uid, recorded = _file_in_place(root, 5)
    assert rescan(store, root).recorded == 3  # rows now exist for all three, received "now"
    recorded.unlink()  # the handler replacing it (or a row it recorded a moment ago)
    with store.session() as s:  # new's row does not exist yet in the handler's story
        s.execute(delete(Instance).where(Instance.sop_instance_uid == new_uid))
        s.execute(delete(Instance).where(Instance.sop_instance_uid == old_uid))

    report = rescan(store, root, before=before)
    assert (report.files, report.recorded, report.rows, report.missing) == (1, 1, 0, 0)
    assert instance_by_sop_uid(store, old_uid) is not None
    assert instance_by_sop_uid(store, new_uid) is None  # the handler records it
    row = instance_by_sop_uid(store, recorded_uid)
    assert row is not None and row.missing_at is None


def test_a_stopped_rescan_returns_at_once_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "instances"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    uid, _ = _file_in_place(root, 6)
    stop = threading.Event()
    stop.set()  # the node stopping before the first batch
    report = rescan(store, root, stop=stop)
    assert (report.complete, report.files, report.recorded) == (False, 0, 0)
    assert instance_by_sop_uid(store, uid) is None  # the next start records it
