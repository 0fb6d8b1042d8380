"""CSV exports (``dicomnode audit`` and ``dicomnode worklist``) open safely in a spreadsheet.

Calling AE titles and accession numbers come from senders; a cell starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return would be read as a formula (OWASP, "CSV Injection"), so
such text is written with a leading ``'``. Read from a SQLite store, through the real queries.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dicomnode.ops.audit import AuditFilter, studies
from dicomnode.ops.tables import csv_cell, render_rows
from dicomnode.ops.worklist import entries_from_store, render
from dicomnode.results import reading_order
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState

HOSTILE_AE = '=HYPERLINK("x")'  # 15 characters: a valid AE title
HOSTILE_ACCESSION = "@SUM(1+1)*cmd|"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'csv.sqlite3'}")
    with s.session() as sess:
        sess.add_all(
            [
                Study(
                    study_uid="1.2.3.1",
                    accession_number=HOSTILE_ACCESSION,
                    calling_ae=HOSTILE_AE,
                    state=StudyState.COMPLETE.value,
                ),
                Study(
                    study_uid="1.2.3.2",
                    accession_number="ACC2",
                    calling_ae="MODALITY",
                    state=StudyState.COMPLETE.value,
                ),
            ]
        )
    yield s
    s.dispose()


def test_audit_csv_escapes_a_formula_in_calling_ae_and_accession_number(store: Store) -> None:
    rows = {
        r["study_uid"]: r
        for r in csv.DictReader(io.StringIO(render_rows(studies(store, AuditFilter()), "csv")))
    }
    assert rows["1.2.3.1"]["calling_ae"] == "'" + HOSTILE_AE
    assert rows["1.2.3.1"]["accession_number"] == "'" + HOSTILE_ACCESSION
    assert rows["1.2.3.2"]["calling_ae"] == "MODALITY"  # harmless text is left as it is


def test_worklist_csv_escapes_a_formula_in_the_accession_number(store: Store) -> None:
    now = datetime.now(timezone.utc) + timedelta(minutes=5)
    ranked = reading_order(entries_from_store(store), now=now, max_wait=timedelta(hours=1))
    rows = {r["study_uid"]: r for r in csv.DictReader(io.StringIO(render(ranked, "csv")))}
    assert rows["1.2.3.1"]["accession"] == "'" + HOSTILE_ACCESSION
    assert rows["1.2.3.2"]["accession"] == "ACC2"


@pytest.mark.parametrize("text", ["=1+1", "+1", "-1+cmd", "@A1", "\tx", "\rx"])
def test_every_formula_start_is_escaped_and_numbers_are_not(text: str) -> None:
    assert csv_cell(text) == "'" + text
    assert csv_cell(-1.5) == -1.5 and csv_cell(-3) == -3  # a negative number is data, not a formula
    assert csv_cell("1.2.840.10008") == "1.2.840.10008"
