"""Drill: the destination PACS is down when the results are ready.

With the default retry schedule (8 attempts, 2 s doubling to a 16 s cap: attempts at about 0, 2, 6,
14, 30, 46, 62 and 78 s) a PACS that comes back 30 s later gets the results exactly once, by the
retries alone. When it stays down past the budget the study is marked ``delivery_failed`` and
``dicomnode resend --failed`` delivers it once the PACS is back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from sqlalchemy import select

from dicomnode import cli
from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, DeliveryAttempt, Study, StudyState
from dicomnode.store.queries import as_utc, latest_analysis, study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.integration.orthanc import free_port
from tests.support import wait_until


def _attempts(store: Store, study_uid: str) -> list[DeliveryAttempt]:
    """Every delivery attempt of the study's analyses, in the order they were recorded."""
    with store.session() as s:
        return list(
            s.scalars(
                select(DeliveryAttempt)
                .join(Analysis, DeliveryAttempt.analysis_id == Analysis.id)
                .join(Study, Analysis.study_id == Study.id)
                .where(Study.study_uid == study_uid)
                .order_by(DeliveryAttempt.id)
            )
        )


def _write_config(path: Path, s: Settings, **extra: object) -> Path:
    """A TOML settings file (``[dicomnode]`` table) naming the node's storage, database and peers."""
    values: dict[str, object] = {
        "ae_title": s.ae_title,
        "storage_dir": str(s.storage_dir),
        "database_url": s.effective_database_url,
        "destinations": [str(d) for d in s.destinations],
        "model": str(s.model_path),
        **extra,
    }

    def toml(v: object) -> str:
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(toml(x) for x in v) + "]"
        return str(v)

    path.write_text("[dicomnode]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    return path


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run ``dicomnode`` commands in-process: only the config file sets them up, and the logging
    they configure (bound to this test's captured stderr) is put back before the node stops."""
    for key in list(os.environ):
        if key.startswith("DICOMNODE_") and not key.startswith("DICOMNODE_TEST_"):
            monkeypatch.delenv(key)
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.slow
def test_pacs_down_for_30_seconds_gets_the_results_exactly_once(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
) -> None:
    pacs_port = free_port()  # nothing listens here yet: the PACS is down
    settings = make_settings(
        destinations=(Destination("LATEPACS", "127.0.0.1", pacs_port),),
        delivery_attempts=8,
        delivery_backoff_seconds=2.0,
        delivery_backoff_max_seconds=16.0,
    )
    node = node_factory(settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=41, positive_fraction=1.0)[0]
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))

    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: len(_attempts(store, study.study_uid)) > 0, 60, "the first failed delivery attempt"
        )
        first = _attempts(store, study.study_uid)[0]
        assert not first.success and first.status is None
        ready_at = as_utc(first.attempted_at)
        assert ready_at is not None
        # the worker tries twice itself, then leaves the rest of the budget to scheduled rounds
        assert study_state(store, study.study_uid) in (StudyState.ANALYSING, StudyState.ANALYSED)

        # the PACS comes back about 30 s after the results were ready (just before the 5th attempt)
        up_at = ready_at + timedelta(seconds=28)
        time.sleep(max(0.0, (up_at - datetime.now(UTC)).total_seconds()))
        with Receiver(tmp_path / "pacs", ae_title="LATEPACS", port=pacs_port) as pacs:
            started = time.time()
            got = pacs.wait_for(2, timeout=60)
            assert len(got) == 2, f"PACS received {len(got)} objects in 60 s"
            time.sleep(3.0)  # a duplicate would arrive now
            received = list(pacs.received)
        classes = sorted(r.sop_class_uid for r in received)
        assert classes == sorted([str(Comprehensive3DSRStorage), str(SecondaryCaptureImageStorage)])
        assert all(r.study_uid == study.study_uid and r.at >= started for r in received)

        wait_until(lambda: study_state(store, study.study_uid) is StudyState.DELIVERED, 30, "DELIVERED state")
        a = latest_analysis(store, study.study_uid)
        assert a is not None and a.delivered_at is not None
        assert {a.sr_sop_instance_uid, a.sc_sop_instance_uid} == {r.sop_instance_uid for r in received}

        # SQL: per object, failed attempts 1..k-1 (no association), then attempt k succeeded, then nothing
        attempts = _attempts(store, study.study_uid)
        for uid in (a.sr_sop_instance_uid, a.sc_sop_instance_uid):
            mine = [x for x in attempts if x.sop_instance_uid == uid]
            assert [x.attempt for x in mine] == list(range(1, len(mine) + 1))
            assert len(mine) >= 2 and mine[-1].success and mine[-1].status == 0
            assert all(not x.success and x.status is None and x.error for x in mine[:-1])
            assert all(x.destination == f"LATEPACS@127.0.0.1:{pacs_port}" for x in mine)
            # the failed attempts came before the PACS was up, the successful one after
            stamps = [(as_utc(x.attempted_at) or ready_at).timestamp() for x in mine]
            assert all(t < started + 0.5 for t in stamps[:-1]) and stamps[-1] >= started - 0.5
        # the outage outlasted the first four attempts (0, 2, 6, 14 s)
        assert len([x for x in attempts if not x.success]) >= 2 * 4
    finally:
        store.dispose()


def test_exhausted_retries_mark_delivery_failed_and_resend_delivers_once_the_pacs_is_back(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    capsys: pytest.CaptureFixture[str],
    cli_env: None,
) -> None:
    pacs_port = free_port()
    settings = make_settings(
        destinations=(Destination("LATEPACS", "127.0.0.1", pacs_port),),
        delivery_attempts=2,
        delivery_backoff_seconds=0.1,
    )
    node = node_factory(settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=43, positive_fraction=0.0)[0]
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))

    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: study_state(store, study.study_uid) is StudyState.DELIVERY_FAILED,
            60,
            "DELIVERY_FAILED state",
        )
        a = latest_analysis(store, study.study_uid)
        assert a is not None and a.delivered_at is None and a.finished_at is not None
        failed = _attempts(store, study.study_uid)
        assert sorted((x.sop_instance_uid, x.attempt, x.success) for x in failed) == sorted(
            (uid, n, False) for uid in (a.sr_sop_instance_uid, a.sc_sop_instance_uid) for n in (1, 2)
        )
        with store.session() as s:
            reason = s.scalar(select(Study.state_reason).where(Study.study_uid == study.study_uid))
        assert reason and "dicomnode resend" in reason

        config = _write_config(
            tmp_path / "dicomnode.toml", settings, delivery_attempts=3, delivery_backoff_seconds=0.2
        )
        with Receiver(tmp_path / "pacs", ae_title="LATEPACS", port=pacs_port) as pacs:
            capsys.readouterr()
            rc = cli.main(["--config", str(config), "resend", "--failed"])
            out = capsys.readouterr().out
            assert rc == 0, out
            assert f"{study.study_uid}: delivered" in out
            got = pacs.wait_for(2, timeout=10)
            time.sleep(1.0)
            received = list(pacs.received)
        assert len(got) == 2 and len(received) == 2, [r.sop_class_uid for r in received]
        assert {r.sop_instance_uid for r in received} == {a.sr_sop_instance_uid, a.sc_sop_instance_uid}
        assert study_state(store, study.study_uid) is StudyState.DELIVERED

        after = _attempts(store, study.study_uid)
        new = after[len(failed) :]
        assert sorted((x.sop_instance_uid, x.success, x.status) for x in new) == sorted(
            (uid, True, 0) for uid in (a.sr_sop_instance_uid, a.sc_sop_instance_uid)
        )
        # the re-send is recorded against the same analysis; nothing was analysed again
        with store.session() as s:
            assert s.scalar(select(Analysis.id).where(Analysis.id != a.id)) is None
        again = latest_analysis(store, study.study_uid)
        assert again is not None and again.delivered_at is not None

        # nothing is left to re-send: a second --failed run sends nothing
        rc = cli.main(["--config", str(config), "resend", "--failed"])
        assert rc == 0 and "no study to re-send" in capsys.readouterr().out
    finally:
        store.dispose()


def _study_reason(store: Store, study_uid: str) -> str | None:
    with store.session() as s:
        return s.scalar(select(Study.state_reason).where(Study.study_uid == study_uid))


@pytest.mark.parametrize("mode", ["inprocess", "celery"])
def test_a_pacs_outage_does_not_hold_the_analysis_of_other_studies(
    mode: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
) -> None:
    """Three studies arrive while the PACS is down. Each is analysed at once (its delivery, a unit
    of work of its own, makes two quick attempts, then schedules the rest of the budget), so all
    three wait for the PACS side by
    side; when it comes back each result arrives exactly once. With Celery the scheduled rounds
    are tasks with a countdown on the real Redis, run by the real worker."""
    pacs_port = free_port()
    changes: dict[str, object] = dict(
        destinations=(Destination("LATEPACS", "127.0.0.1", pacs_port),),
        delivery_attempts=12,
        delivery_backoff_seconds=0.5,
        delivery_backoff_max_seconds=2.0,
    )
    if mode == "celery":
        from tests.conftest import REDIS_URL

        changes.update(
            broker_url=REDIS_URL,
            queue=request.getfixturevalue("celery_queue"),
            database_url=request.getfixturevalue("pg_url"),
        )
    settings = make_settings(**changes)
    # asked for after the database: torn down (nodes stopped) before it is dropped
    node_factory: Callable[[Settings], Node] = request.getfixturevalue("node_factory")
    node = node_factory(settings)
    if mode == "celery":
        request.getfixturevalue("celery_worker_factory")(settings)
    studies = write_phantom_studies(tmp_path / "in", 3, seed=47)
    for st in studies:
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))

    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: all(
                study_state(store, st.study_uid) is StudyState.ANALYSED
                and max((x.attempt for x in _attempts(store, st.study_uid)), default=0) > 2
                for st in studies
            ),
            90,
            "every study analysed and waiting for the PACS past its first delivery round",
        )
        for st in studies:
            reason = _study_reason(store, st.study_uid)
            assert reason and reason.startswith("delivery retry scheduled"), reason
        with Receiver(tmp_path / "pacs", ae_title="LATEPACS", port=pacs_port) as pacs:
            got = pacs.wait_for(6, timeout=60)
            assert len(got) == 6, f"PACS received {len(got)} objects"
            wait_until(
                lambda: all(study_state(store, st.study_uid) is StudyState.DELIVERED for st in studies),
                30,
                "DELIVERED states",
            )
            time.sleep(2.0)  # a duplicate would arrive now
            received = list(pacs.received)
        assert sorted(r.study_uid for r in received) == sorted([st.study_uid for st in studies] * 2)
        for st in studies:
            attempts = _attempts(store, st.study_uid)
            # more than the two inline attempts were made: scheduled rounds carried on
            assert max(x.attempt for x in attempts) > 2
            assert sum(x.success for x in attempts) == 2
    finally:
        store.dispose()
