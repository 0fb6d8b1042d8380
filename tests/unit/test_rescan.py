"""The start-up re-scan on its own: files on disk against rows in SQL (SQLite file, no network)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from sqlalchemy import select

from dicomnode.receive.rescan import rescan
from dicomnode.storage import instance_path, write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import Event
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
