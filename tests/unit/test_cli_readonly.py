"""Commands that read the node's record (issue 18.3): no database is an error, not a new empty one;
CSV has its header with no rows; time to result only for delivered studies; `reanalyse` in SQL.

The commands run in-process through :func:`dicomnode.cli.main` on a real SQLite file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.ops.audit import DeliveryRow, EventRow, StudyRow, SummaryRow
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Study, StudyState
from dicomnode.store.queries import study_state

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Run where no node ever ran, with no DICOMNODE_* set: the commands' defaults are ./dicomnode-data."""
    for key in [k for k in os.environ if k.startswith("DICOMNODE_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Path]:
    """A storage folder whose SQLite store holds one study in each finished state."""
    folder = tmp_path / "node"
    store = Store(f"sqlite:///{folder / 'dicomnode.sqlite3'}")
    with store.session() as s:
        for n, state in enumerate(["delivered", "delivery_failed", "not_applicable", "failed", "analysing"]):
            at = T0 + timedelta(minutes=n)
            st = Study(
                study_uid=f"1.2.{n}",
                calling_ae="CR1",
                state=state,
                instance_count=1,
                first_received_at=at,
                last_received_at=at + timedelta(seconds=1),
            )
            s.add(st)
            s.flush()
            done = at + timedelta(seconds=11)
            s.add(
                Analysis(
                    study_id=st.id,
                    model_name="pneumonia",
                    model_version="1.0",
                    score=None if state in ("not_applicable", "failed") else 0.8,
                    priority=None if state in ("not_applicable", "failed") else "urgent",
                    started_at=at + timedelta(seconds=6),
                    finished_at=None if state == "analysing" else done,
                    delivered_at=done if state == "delivered" else None,
                )
            )
    store.dispose()
    yield folder


READ_ONLY = [
    ["results"],
    ["audit"],
    ["audit", "summary"],
    ["audit", "events"],
    ["worklist"],
    ["monitor"],
    ["resend", "--failed"],
    ["reanalyse", "1.2.3"],
    ["import-truth", "reads.csv"],
]


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a))
def test_read_only_command_without_a_database_says_so_and_creates_nothing(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMNODE_DESTINATIONS", "PACS@127.0.0.1:104")  # resend needs somewhere to send
    (tmp_path / "reads.csv").write_text("study_uid,label,reader,read_at\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = tmp_path / "dicomnode-data" / "dicomnode.sqlite3"
    assert (
        f"no database at {expected}; run `dicomnode serve` first or set DICOMNODE_STORAGE_DIR/DICOMNODE_DATABASE_URL"
        in err
    )
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no ./dicomnode-data


def test_read_only_command_with_an_empty_sqlite_file_says_no_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "dicomnode-data").mkdir()
    (tmp_path / "dicomnode-data" / "dicomnode.sqlite3").write_bytes(b"")
    assert main(["results"]) == 2
    assert "no dicomnode schema there" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "row_type"),
    [
        (["audit"], StudyRow),
        (["audit", "summary"], SummaryRow),
        (["audit", "deliveries"], DeliveryRow),
        (["audit", "events", "--kind", "no.such.kind"], EventRow),
    ],
    ids=["studies", "summary", "deliveries", "events"],
)
def test_audit_csv_with_no_rows_prints_the_header(
    argv: list[str], row_type: type, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--since", "2030-01-01", "--storage-dir", str(storage), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [",".join(f.name for f in dataclasses.fields(row_type))]


def test_worklist_csv_with_no_rows_prints_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--storage-dir", str(tmp_path / "empty")]) == 0
    capsys.readouterr()
    assert main(["worklist", "--storage-dir", str(tmp_path / "empty"), "--format", "csv"]) == 0
    header = "rank,study_uid,accession,priority,probability,reason,arrived_at,waited_minutes"
    assert capsys.readouterr().out.splitlines() == [header]


def test_time_to_result_only_for_delivered_studies(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--storage-dir", str(storage), "--format", "json"]) == 0
    audit_rows = {r["state"]: r["seconds_to_result"] for r in json.loads(capsys.readouterr().out)}
    assert audit_rows == {
        "delivered": 10.0,  # last instance +1 s -> delivered +11 s
        "delivery_failed": None,
        "not_applicable": None,
        "failed": None,
        "analysing": None,
    }
    assert main(["results", "--storage-dir", str(storage), "--format", "json"]) == 0
    result_rows = {r["state"]: r["seconds_to_result"] for r in json.loads(capsys.readouterr().out)}
    assert result_rows == audit_rows
    assert main(["results", "--storage-dir", str(storage)]) == 0
    table = {line.split()[1]: line.split()[-1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert table == {
        "delivered": "10.00",
        "delivery_failed": "-",
        "not_applicable": "-",
        "failed": "-",
        "analysing": "-",
    }


def test_audit_csv_time_to_result_is_empty_unless_delivered(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "--storage-dir", str(storage), "--format", "csv"]) == 0
    rows = {r["state"]: r["seconds_to_result"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["delivered"] == "10.0" and rows["delivery_failed"] == "" and rows["not_applicable"] == ""


# ------------------------------------------------------------------------------- reanalyse


def _events(storage: Path, uid: str) -> list[tuple[str, dict[str, object] | None]]:
    store = Store(f"sqlite:///{storage / 'dicomnode.sqlite3'}", run_migrations=False)
    try:
        with store.session() as s:
            return [
                (e.kind, e.detail) for e in s.query(Event).filter(Event.study_uid == uid).order_by(Event.id)
            ]
    finally:
        store.dispose()


def _state(storage: Path, uid: str) -> StudyState | None:
    store = Store(f"sqlite:///{storage / 'dicomnode.sqlite3'}", run_migrations=False)
    try:
        return study_state(store, uid)
    finally:
        store.dispose()


def test_reanalyse_puts_a_finished_study_back_to_complete_with_its_events(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reanalyse", "1.2.1", "--storage-dir", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "1.2.1: queued (was delivery_failed)" in out
    assert _state(storage, "1.2.1") is StudyState.COMPLETE
    kinds = _events(storage, "1.2.1")
    assert ("study.complete", {"reason": "reanalyse requested (dicomnode reanalyse)"}) in kinds
    assert ("study.reanalyse_requested", {"previous_state": "delivery_failed"}) in kinds


def test_reanalyse_leaves_a_study_in_progress_alone_and_reports_an_unknown_one(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reanalyse", "1.2.4", "9.9.9", "--storage-dir", str(storage)]) == 1
    captured = capsys.readouterr()
    assert "1.2.4: left alone, already on its way (analysing)" in captured.out
    assert "9.9.9: unknown: this node never received it" in captured.err
    assert _state(storage, "1.2.4") is StudyState.ANALYSING


def test_reanalyse_by_state_takes_every_matching_study(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["reanalyse", "--state", "failed,not_applicable", "--storage-dir", str(storage)]
    assert main([*args, "--dry-run"]) == 0
    assert _state(storage, "1.2.2") is StudyState.NOT_APPLICABLE  # a dry run changes nothing
    assert main(args) == 0
    assert {uid: _state(storage, uid) for uid in ("1.2.0", "1.2.2", "1.2.3")} == {
        "1.2.0": StudyState.DELIVERED,
        "1.2.2": StudyState.COMPLETE,
        "1.2.3": StudyState.COMPLETE,
    }


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["reanalyse"], "give the Study Instance UIDs"),
        (["reanalyse", "--since", "7d"], "--since narrows --state"),
        (["reanalyse", "--state", "finished"], "unknown state 'finished'"),
    ],
)
def test_reanalyse_usage_errors_exit_2(
    argv: list[str], needle: str, storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--storage-dir", str(storage)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
