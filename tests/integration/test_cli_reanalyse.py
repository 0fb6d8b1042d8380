"""`dicomnode reanalyse STUDY_UID` on a real node (issue 18.3): the study goes back to `complete` in
SQL and the node analyses and delivers it again.

A real in-process node (tiny ONNX model, SQLite, in-process runner) receives a phantom study over
DICOM and delivers SR + SC to a receiving PACS; the command runs in-process against the node's
storage folder; the node is then restarted, as after `systemctl restart` (a start queues every
`complete` study again), and analyses the study a second time. Same model version, so the results
keep their SOP Instance UIDs: the PACS holds one SR and one SC, not two of each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicomnode.cli import main
from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Event, Study, StudyState
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.support import analyses_of, wait_until
from tests.tiny_model import write_tiny_model
from worker.app import ANALYSIS_PRIORITY


@pytest.fixture(autouse=True)
def _no_node_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command reads DICOMNODE_* like the node: only what each test gives counts."""
    for key in [k for k in os.environ if k.startswith("DICOMNODE_")]:
        monkeypatch.delenv(key)


def _node_settings(tmp_path: Path, pacs: Receiver, **changes: Any) -> Settings:
    """An in-process node with the tiny model, delivering to ``pacs``."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),),
        quiet_seconds=0.5,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        metrics_port=0,
    )
    return settings.with_overrides(**changes) if changes else settings


def _state(store: Store, uid: str) -> str | None:
    with store.session() as s:
        return s.scalar(select(Study.state).where(Study.study_uid == uid))


def test_reanalyse_runs_a_delivered_study_again_and_delivers_it_again(
    tmp_path: Path,
    pacs: Receiver,
    node_factory: Callable[[Settings], Node],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = _node_settings(tmp_path, pacs)
    node = node_factory(settings)
    (study,) = write_phantom_studies(tmp_path / "in", 1, seed=3, positive_fraction=1.0)
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(lambda: _state(store, study.study_uid) == "delivered", 60, "the first delivery")
        assert len(pacs.received) == 2  # SR + SC

        assert main(["reanalyse", study.study_uid, "--storage-dir", str(settings.storage_dir)]) == 0
        out = capsys.readouterr().out
        assert f"{study.study_uid}: queued (was delivered)" in out
        assert _state(store, study.study_uid) == StudyState.COMPLETE.value

        node.stop()
        node_factory(settings)  # the next start queues every `complete` study
        wait_until(lambda: len(analyses_of(store, study.study_uid)) == 2, 60, "the second analysis")
        wait_until(lambda: _state(store, study.study_uid) == "delivered", 60, "the second delivery")

        first, second = analyses_of(store, study.study_uid)
        assert second.finished_at is not None and second.delivered_at is not None
        assert (second.sr_sop_instance_uid, second.sc_sop_instance_uid) == (
            first.sr_sop_instance_uid,
            first.sc_sop_instance_uid,
        )  # same model version: the PACS's copies are replaced
        # the PACS holds the one SR and SC (sent again, or found already delivered with these UIDs)
        assert {r.sop_instance_uid for r in pacs.received} == {
            first.sr_sop_instance_uid,
            first.sc_sop_instance_uid,
        }
        with store.session() as s:
            kinds = list(
                s.scalars(select(Event.kind).where(Event.study_uid == study.study_uid).order_by(Event.id))
            )
        assert kinds.index("study.reanalyse_requested") < len(kinds) - 1
        assert kinds.count("analysis.started") == 2
    finally:
        store.dispose()


def test_reanalyse_is_picked_up_by_the_running_node(
    tmp_path: Path,
    pacs: Receiver,
    node_factory: Callable[[Settings], Node],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No restart: the node's reconciler hands `complete` studies on again once their last hand-off
    is older than DICOMNODE_RECONCILE_AFTER_SECONDS (short here)."""
    settings = _node_settings(tmp_path, pacs, reconcile_interval_seconds=0.5, reconcile_after_seconds=5.0)
    node = node_factory(settings)
    (study,) = write_phantom_studies(tmp_path / "in", 1, seed=4, positive_fraction=0.0)
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(lambda: _state(store, study.study_uid) == "delivered", 60, "the first delivery")
        assert main(["reanalyse", study.study_uid, "--storage-dir", str(settings.storage_dir)]) == 0
        assert "queued in SQL: the running node analyses them" in capsys.readouterr().out
        wait_until(lambda: len(analyses_of(store, study.study_uid)) == 2, 60, "the second analysis")
        wait_until(lambda: _state(store, study.study_uid) == "delivered", 60, "the second delivery")
        assert all(a.finished_at is not None for a in analyses_of(store, study.study_uid))
    finally:
        store.dispose()


def test_reanalyse_with_a_broker_puts_the_task_on_the_queue(
    tmp_path: Path, celery_queue: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With DICOMNODE_BROKER_URL the command publishes the analysis task itself (the real Redis),
    and stamps the study as handed on so the node's reconciler does not send it twice."""
    import json

    import redis

    from tests.conftest import REDIS_URL

    monkeypatch.setenv("DICOMNODE_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("DICOMNODE_QUEUE", celery_queue)
    store = Store(f"sqlite:///{tmp_path / 'node' / 'dicomnode.sqlite3'}")
    try:
        with store.session() as s:
            s.add(Study(study_uid="1.2.77", state=StudyState.FAILED.value, instance_count=1))
        assert main(["reanalyse", "1.2.77", "--storage-dir", str(tmp_path / "node")]) == 0
        assert f"1 studies sent to queue '{celery_queue}'" in capsys.readouterr().out
        with store.session() as s:
            study = s.scalars(select(Study).where(Study.study_uid == "1.2.77")).one()
        assert study.state == StudyState.COMPLETE.value and study.claimed_at is not None
    finally:
        store.dispose()
    r = redis.Redis.from_url(REDIS_URL)
    try:
        # kombu keeps the analyses' priority step in a list of its own (worker.app.ANALYSIS_PRIORITY)
        messages = [json.loads(m) for m in r.lrange(f"{celery_queue}\x06\x16{ANALYSIS_PRIORITY}", 0, -1)]
    finally:
        r.close()
    assert [m["headers"]["task"] for m in messages] == ["dicomnode.analyse_study"]
    assert "1.2.77" in messages[0]["headers"]["argsrepr"]
