"""Retention (issue 14.6): ``dicomnode purge`` of 10,000 delivered studies, then a restart.

The studies are made with SQL inserts and small files (what purge and the re-scan look at: rows,
paths, ages), not by receiving 10,000 images. After the purge the files are gone, every row is
still there and marked purged, and a restart's re-scan skips them: no ``instance.file_missing``
event, nothing counted missing. The time from ``Node.start()`` to the open port is printed for the
drill table (docs/reliability.md); it is not asserted (speed goes in tables, not tests).

A file removed by hand is reported by the first start after it went, once, and skipped after.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from dicomnode.cli import main as dicomnode_main
from dicomnode.config import Settings
from dicomnode.node import Node
from dicomnode.storage import instance_path
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Instance, Study, StudyState, utcnow
from tests.support import write_settings_toml
from tests.tiny_model import write_tiny_model

N = 10_000
ROOT = "1.2.826.0.1.3680043.10.1439"  # test UIDs: <root>.<kind>.<n>


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        quiet_seconds=0.5,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        fsync=False,
    )


def _make_delivered_studies(settings: Settings, store: Store, n: int, *, days_ago: float) -> list[Path]:
    """``n`` delivered studies, one instance and one SR + SC each, delivered ``days_ago``; returns
    the instance files."""
    at = utcnow() - timedelta(days=days_ago)
    studies, instances, analyses, files = [], [], [], []
    for i in range(1, n + 1):
        study_uid, series_uid, sop_uid = f"{ROOT}.1.{i}", f"{ROOT}.2.{i}", f"{ROOT}.3.{i}"
        path = instance_path(settings.instances_dir, study_uid, series_uid, sop_uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 128)
        files.append(path)
        sr, sc = f"{ROOT}.4.{i}", f"{ROOT}.5.{i}"
        results = settings.results_dir / study_uid
        results.mkdir(parents=True, exist_ok=True)
        for uid in (sr, sc):
            (results / f"{uid}.dcm").write_bytes(b"\0" * 64)
        studies.append(
            dict(
                id=i,
                study_uid=study_uid,
                state=StudyState.DELIVERED.value,
                instance_count=1,
                first_received_at=at,
                last_received_at=at,
                completed_at=at,
                updated_at=at,
            )
        )
        instances.append(
            dict(
                study_id=i,
                sop_instance_uid=sop_uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                series_uid=series_uid,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=str(path),
                size_bytes=128,
                sha256="0" * 64,  # fingerprinted after receipt, as every received instance is
                received_at=at,
            )
        )
        analyses.append(
            dict(
                study_id=i,
                model_name="tiny",
                model_version="0.0.1-test",
                sr_sop_instance_uid=sr,
                sc_sop_instance_uid=sc,
                started_at=at,
                results_built_at=at,
                delivered_at=at,
                finished_at=at,
            )
        )
    with store.engine.begin() as conn:
        conn.execute(insert(Study), studies)
        conn.execute(insert(Instance), instances)
        conn.execute(insert(Analysis), analyses)
    return files


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = dicomnode_main(list(argv))
    return code, out.getvalue()


def _count(store: Store, stmt: object) -> int:
    with store.session() as s:
        return int(s.scalar(stmt) or 0)  # type: ignore[call-overload]


@pytest.mark.slow  # making 10,000 studies' folders and files takes about a minute on a slow disk
def test_purge_of_10000_studies_then_a_restart_skips_them(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.effective_database_url)
    try:
        files = _make_delivered_studies(settings, store, N, days_ago=40)
        config = write_settings_toml(tmp_path / "node.toml", settings)

        code, dry = _cli("--config", str(config), "purge", "--instances-days", "30", "--dry-run")
        assert code == 0 and f"would purge {N} instance file(s) of {N} stud(ies)" in dry, dry
        assert all(f.exists() for f in files[:100])

        t0 = time.monotonic()
        code, out = _cli("--config", str(config), "purge", "--instances-days", "30", "--results-days", "30")
        purge_s = time.monotonic() - t0
        assert code == 0, out
        assert f"purged {N} instance file(s) of {N} stud(ies)" in out, out
        assert f"results of {N} analysis(es) ({2 * N} file(s))" in out, out
        assert not any(f.exists() for f in files)
        assert not any(settings.instances_dir.iterdir()), "empty study and series folders are removed"
        assert not any(settings.results_dir.iterdir())
        # the audit trail stays: every row, marked purged, one event per study and analysis
        assert _count(store, select(func.count(Study.id))) == N
        assert _count(store, select(func.count(Study.id)).where(Study.purged_at.is_not(None))) == N
        assert _count(store, select(func.count(Instance.id)).where(Instance.purged_at.is_not(None))) == N
        assert (
            _count(store, select(func.count(Analysis.id)).where(Analysis.results_purged_at.is_not(None))) == N
        )
        assert _count(store, select(func.count(Event.id)).where(Event.kind == "study.purged")) == N
        assert _count(store, select(func.count(Event.id)).where(Event.kind == "results.purged")) == N

        # a second purge finds nothing left to do
        code, again = _cli("--config", str(config), "purge", "--instances-days", "30", "--results-days", "30")
        assert code == 0 and "purged 0 instance file(s) of 0 stud(ies)" in again, again
    finally:
        store.dispose()

    t0 = time.monotonic()
    node = node_factory(settings)
    start_s = time.monotonic() - t0
    report = node.wait_rescan(60)
    assert report is not None
    assert (report.rows, report.missing, report.files) == (0, 0, 0), report
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        assert _count(store, select(func.count(Event.id)).where(Event.kind == "instance.file_missing")) == 0
    finally:
        store.dispose()
    print(f"\nDRILL purge {N} studies: {purge_s:.1f} s; restart to open port: {start_s:.2f} s")


def test_a_file_removed_by_hand_is_reported_once(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(settings.effective_database_url)
    try:
        files = _make_delivered_studies(settings, store, 3, days_ago=1)
    finally:
        store.dispose()
    files[1].unlink()
    reports = []
    for _ in range(2):
        node = Node(settings, lambda s, st: _NoRunner()).start()
        reports.append(node.wait_rescan(60))
        node.stop()
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        missing_events = _count(
            store, select(func.count(Event.id)).where(Event.kind == "instance.file_missing")
        )
        marked = _count(store, select(func.count(Instance.id)).where(Instance.missing_at.is_not(None)))
        # the file comes back (restored from a backup): the mark goes
        files[1].write_bytes(b"\0" * 128)
        node = Node(settings, lambda s, st: _NoRunner()).start()
        third = node.wait_rescan(60)
        node.stop()
        marked_after = _count(store, select(func.count(Instance.id)).where(Instance.missing_at.is_not(None)))
    finally:
        store.dispose()
    first, second = reports
    assert first is not None and second is not None and third is not None
    assert (first.rows, first.missing) == (3, 1)
    assert (second.rows, second.missing) == (2, 0)
    assert missing_events == 1 and marked == 1
    assert (third.rows, third.missing, third.recorded) == (2, 0, 0) and marked_after == 0


class _NoRunner:
    """A task runner that analyses nothing: these tests look at the start-up only."""

    def submit(self, study_uid: str, queued_at: object) -> None:
        pass

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_purge_keeps_what_someone_still_needs(tmp_path: Path) -> None:
    """Only finished studies past the cut-off lose files; recent, failed and undelivered keep them."""
    from sqlalchemy import update

    from dicomnode.ops.purge import purge

    settings = _settings(tmp_path)
    store = Store(settings.effective_database_url)
    try:
        files = _make_delivered_studies(settings, store, 4, days_ago=40)
        with store.engine.begin() as conn:
            conn.execute(update(Study).where(Study.id == 2).values(state=StudyState.DELIVERY_FAILED.value))
            conn.execute(update(Study).where(Study.id == 3).values(state=StudyState.ANALYSED.value))
            conn.execute(  # study 4 was delivered again yesterday (a revision)
                update(Analysis)
                .where(Analysis.study_id == 4)
                .values(delivered_at=utcnow() - timedelta(days=1))
            )
        report = purge(settings, store, instance_days=30)
        second = purge(settings, store, instance_days=30)
        with store.session() as s:
            purged = {i for (i,) in s.execute(select(Study.id).where(Study.purged_at.is_not(None)))}
    finally:
        store.dispose()
    assert (report.studies, report.instances, report.failed) == (1, 1, 0)
    assert (second.studies, second.instances) == (0, 0)
    assert purged == {1}
    assert [f.exists() for f in files] == [False, True, True, True]


def test_the_schedule_serve_runs_purges_and_stops(tmp_path: Path) -> None:
    from dicomnode.ops.purge import PurgeSchedule
    from tests.support import wait_until

    settings = _settings(tmp_path).with_overrides(retention_instance_days=30, purge_interval_seconds=0.2)
    assert PurgeSchedule.wanted(settings)
    assert not PurgeSchedule.wanted(settings.with_overrides(retention_instance_days=0))
    store = Store(settings.effective_database_url)
    files = _make_delivered_studies(settings, store, 2, days_ago=40)
    schedule = PurgeSchedule.for_settings(settings, store, own_store=True).start()
    try:
        wait_until(lambda: not any(f.exists() for f in files), 30, "the schedule's first purge")
    finally:
        schedule.stop()
    check = Store(settings.effective_database_url, run_migrations=False)
    try:
        assert _count(check, select(func.count(Event.id)).where(Event.kind == "study.purged")) == 2
    finally:
        check.dispose()
