"""``dicomnode audit`` questions on real SQLite and the real PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from dicomnode.cli import main
from dicomnode.ops import audit
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, DeliveryAttempt, Event, Study

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    _seed(s)
    yield s
    s.dispose()


def _add(
    store: Store,
    n: int,
    *,
    ae: str,
    state: str,
    analyses: tuple[tuple[str, float | None], ...] = (),
    attempts: tuple[bool, ...] = (),
) -> None:
    """Study ``1.2.<n>`` first received ``n`` days after T0; its analyses oldest first."""
    at = T0 + n * DAY
    with store.session() as s:
        st = Study(
            study_uid=f"1.2.{n}",
            accession_number=f"ACC{n}",
            calling_ae=ae,
            state=state,
            instance_count=1,
            first_received_at=at,
            last_received_at=at + timedelta(seconds=1),
        )
        s.add(st)
        s.flush()
        s.add(Event(at=at, study_uid=st.study_uid, kind="study.complete"))
        for k, (version, score) in enumerate(analyses):
            done = at + timedelta(seconds=10 + k)
            a = Analysis(
                study_id=st.id,
                model_name="pneumonia",
                model_version=version,
                score=score,
                threshold=0.5 if score is not None else None,
                finding_present=None if score is None else score >= 0.5,
                priority=None if score is None else ("urgent" if score >= 0.5 else "routine"),
                started_at=at + timedelta(seconds=6),
                finished_at=done,
                delivered_at=done if state == "delivered" else None,
            )
            s.add(a)
            s.flush()
        for i, ok in enumerate(attempts):
            s.add(
                DeliveryAttempt(
                    analysis_id=a.id,
                    destination="PACS@10.0.0.5:104",
                    sop_instance_uid=f"1.2.{n}.9",
                    attempt=i + 1,
                    success=ok,
                    status=0 if ok else None,
                    error=None if ok else "association rejected",
                    attempted_at=at + timedelta(seconds=20 + i),
                )
            )
        s.add(Event(at=at + timedelta(seconds=30), study_uid=st.study_uid, kind=f"study.{state}"))


def _seed(store: Store) -> None:
    _add(store, 0, ae="CR1", state="delivered", analyses=(("1.0", 0.9),), attempts=(True,))
    _add(
        store, 1, ae="CR1", state="delivery_failed", analyses=(("1.0", 0.2),), attempts=(False, False, False)
    )
    _add(store, 2, ae="DX2", state="delivered", analyses=(("1.1", 0.4),), attempts=(False, True))
    _add(store, 3, ae="DX2", state="not_applicable", analyses=(("1.1", None),))
    _add(store, 4, ae="DX2", state="receiving")
    # analysed by 1.0, then again by 1.1: the latest analysis is what counts
    _add(store, 5, ae="CR1", state="delivered", analyses=(("1.0", 0.3), ("1.1", 0.7)), attempts=(True,))


def _uids(rows: list[audit.StudyRow]) -> list[str]:
    return [r.study_uid for r in rows]


def test_studies_come_newest_first_with_their_latest_analysis(store: Store) -> None:
    rows = audit.studies(store, audit.AuditFilter())
    assert _uids(rows) == [f"1.2.{n}" for n in (5, 4, 3, 2, 1, 0)]
    latest = rows[0]
    assert (latest.model_version, latest.score, latest.priority) == ("1.1", 0.7, "urgent")
    assert latest.first_received_at == T0 + 5 * DAY
    assert latest.seconds_to_result == pytest.approx(10.0)  # last received +1 s -> delivered +11 s
    assert rows[1].model_version is None and rows[1].seconds_to_result is None  # still receiving
    assert {r.study_uid: r.failed_attempts for r in rows}["1.2.1"] == 3
    assert _uids(audit.studies(store, audit.AuditFilter(), limit=2)) == ["1.2.5", "1.2.4"]


def test_each_filter_narrows_the_studies(store: Store) -> None:
    def uids(**kw: object) -> list[str]:
        return _uids(audit.studies(store, audit.AuditFilter(**kw)))  # type: ignore[arg-type]

    assert uids(since=T0 + DAY, until=T0 + 3 * DAY) == ["1.2.2", "1.2.1"]  # until is exclusive
    assert uids(calling_ae="DX2") == ["1.2.4", "1.2.3", "1.2.2"]
    assert uids(states=("delivery_failed", "not_applicable")) == ["1.2.3", "1.2.1"]
    # every study 1.0 analysed, 1.2.5 too though 1.1 analysed it again (issue 18: findable after
    # an upgrade and a rollback), the row showing 1.0's analysis
    assert uids(model_version="1.0") == ["1.2.5", "1.2.1", "1.2.0"]
    assert {r.model_version for r in audit.studies(store, audit.AuditFilter(model_version="1.0"))} == {"1.0"}
    assert uids(failed_deliveries=True) == ["1.2.2", "1.2.1"]
    assert uids(accession_number="ACC3") == ["1.2.3"]
    assert uids(study_uid="1.2.0") == ["1.2.0"]
    assert uids(calling_ae="CR1", since=T0 + DAY, model_version="1.1") == ["1.2.5"]


def test_summary_counts_outcomes_per_key(store: Store) -> None:
    by_ae = {r.key: r for r in audit.summary(store, audit.AuditFilter(), by="calling_ae")}
    cr = by_ae["CR1"]
    assert (cr.studies, cr.delivered, cr.delivery_failed, cr.urgent) == (3, 2, 1, 2)
    assert cr.mean_score == pytest.approx((0.9 + 0.2 + 0.7) / 3, abs=1e-4)
    dx = by_ae["DX2"]
    assert (dx.studies, dx.delivered, dx.not_applicable, dx.in_progress) == (3, 1, 1, 1)

    days = audit.summary(store, audit.AuditFilter(since=T0 + 2 * DAY), by="day")
    assert [r.key for r in days] == ["2026-03-03", "2026-03-04", "2026-03-05", "2026-03-06"]
    assert all(r.studies == 1 for r in days)

    versions = {r.key: r.studies for r in audit.summary(store, audit.AuditFilter(), by="model_version")}
    assert versions == {"-": 1, "1.0": 2, "1.1": 3}
    with pytest.raises(ValueError, match="summary by 'site'"):
        audit.summary(store, audit.AuditFilter(), by="site")


def test_deliveries_lists_failed_attempts_newest_first(store: Store) -> None:
    failed = audit.deliveries(store, audit.AuditFilter())
    assert [(r.study_uid, r.attempt) for r in failed] == [
        ("1.2.2", 1),
        ("1.2.1", 3),
        ("1.2.1", 2),
        ("1.2.1", 1),
    ]
    assert all(not r.success and r.error == "association rejected" for r in failed)
    assert len(audit.deliveries(store, audit.AuditFilter(), failed_only=False)) == 7
    window = audit.AuditFilter(since=T0 + 2 * DAY, calling_ae="DX2")
    assert [r.study_uid for r in audit.deliveries(store, window)] == ["1.2.2"]


def test_events_give_one_studys_timeline_oldest_first(store: Store) -> None:
    rows = audit.events(store, audit.AuditFilter(study_uid="1.2.1"))
    assert [r.kind for r in rows] == ["study.complete", "study.delivery_failed"]
    failed = audit.events(store, audit.AuditFilter(), kind="study.delivery_failed")
    assert [r.study_uid for r in failed] == ["1.2.1"]


def test_audit_command_writes_csv_and_json(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DICOMNODE_DATABASE_URL", store.url)
    assert main(["audit", "studies", "--calling-ae", "DX2", "--since", "2026-03-04", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["study_uid"] for r in rows] == ["1.2.4", "1.2.3"]
    assert rows[1]["model_version"] == "1.1" and rows[1]["first_received_at"].startswith(
        "2026-03-04T08:00:00"
    )

    assert main(["audit", "--failed-deliveries", "--format", "json"]) == 0
    assert [r["study_uid"] for r in json.loads(capsys.readouterr().out)] == ["1.2.2", "1.2.1"]

    assert main(["audit", "summary", "--by", "state"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["key", "studies"] and any(line.startswith("delivered") for line in table)

    assert main(["audit", "deliveries", "--until", "2026-03-02", "--format", "json"]) == 0
    assert {r["study_uid"] for r in json.loads(capsys.readouterr().out)} == {"1.2.1"}

    assert main(["audit", "--since", "yesterday-ish"]) == 2
    assert "is not a time" in capsys.readouterr().err
