"""The start-up re-scan never stops the node from starting over one file: a file whose row the
database refuses goes to the quarantine folder with an event (UIDs only), and the re-scan goes on
(SQLite file, no network; the refusal is a real trigger in the real database)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import structlog
from sqlalchemy import select, text

from dicomnode.receive.rescan import rescan
from dicomnode.storage import instance_path, write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import Event
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.testing.phantoms import make_phantom

REFUSED_ACCESSION = "REFUSE-ME-0042"


def _file_in_place(root: Path, seed: int, accession: str) -> tuple[str, str, Path]:
    ds = make_phantom(np.random.default_rng(seed), False, size=64)
    ds.AccessionNumber = accession
    path = instance_path(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    write_atomic(path, buf.getvalue())
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), path


def test_rescan_quarantines_a_file_sql_refuses_and_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "storage" / "instances"
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    with store.engine.begin() as conn:  # the database refuses this one study's row, whatever the code does
        conn.execute(
            text(
                "CREATE TRIGGER refuse_study BEFORE INSERT ON studies "
                f"WHEN NEW.accession_number = '{REFUSED_ACCESSION}' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    study_uid, refused_uid, refused = _file_in_place(root, 1, REFUSED_ACCESSION)
    _, kept_uid, kept = _file_in_place(root, 2, "ACC2")

    with structlog.testing.capture_logs() as logs:
        report = rescan(store, root)
    assert (report.files, report.recorded, report.quarantined) == (2, 1, 1)
    assert instance_by_sop_uid(store, kept_uid) is not None and kept.is_file()
    assert instance_by_sop_uid(store, refused_uid) is None
    moved = tmp_path / "storage" / "quarantine" / refused.relative_to(root)
    assert moved.is_file() and not refused.exists()
    with store.session() as s:
        [event] = s.scalars(select(Event).where(Event.kind == "instance.quarantined"))
    assert event.study_uid == study_uid
    assert event.detail == {"sop_instance_uid": refused_uid, "error": "IntegrityError", "path": str(moved)}
    assert REFUSED_ACCESSION not in repr(logs) and REFUSED_ACCESSION not in repr(event.detail)

    # the next start finds the instances folder clean: nothing refused, nothing to quarantine
    again = rescan(store, root)
    assert (again.files, again.recorded, again.quarantined) == (1, 0, 0)
