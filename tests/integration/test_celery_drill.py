"""Drill: a Celery worker is killed -9 while it delivers a study's results; another finishes it.

Real Redis, real PostgreSQL, real worker processes. The PACS is down while the first worker
retries delivery (a task of its own since issue 14: the analysis task has finished), so the kill
lands among the delivery tasks; the PACS then comes up and a second worker picks the re-delivered
task (acks_late + visibility timeout) and the SR arrives exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import func, select

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store, migrate
from dicomnode.store.models import Analysis, DeliveryAttempt, StudyState
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import REDIS_URL, CeleryWorker
from tests.support import free_port, wait_until


def test_killed_worker_task_is_finished_by_another_and_sr_arrives_once(
    pg_url: str,  # first: its database is dropped only after the node and workers stop
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    celery_worker_factory: Callable[[Settings], CeleryWorker],
    celery_queue: str,
) -> None:
    pacs_port = free_port()  # nothing listens here yet: the PACS is "down"
    settings = make_settings(
        broker_url=REDIS_URL,
        queue=celery_queue,
        database_url=pg_url,
        destinations=(Destination("LATEPACS", "127.0.0.1", pacs_port),),
        delivery_attempts=50,
        delivery_backoff_seconds=0.5,
        visibility_timeout=4.0,
        reconcile_interval_seconds=0.5,
        reconcile_after_seconds=5.0,
    )
    migrate(settings.effective_database_url)
    first = celery_worker_factory(settings)
    node = node_factory(settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=31, positive_fraction=1.0)[0]
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))

    store = Store(settings.effective_database_url, run_migrations=False)
    try:

        def failed_attempts() -> int:
            with store.session() as s:
                return int(s.scalar(select(func.count()).select_from(DeliveryAttempt)) or 0)

        # the first worker has analysed the study and is retrying delivery to the absent PACS
        wait_until(lambda: failed_attempts() >= 2, 60, "the first worker's failed delivery attempts")
        assert study_state(store, study.study_uid) is StudyState.ANALYSED
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)

        with Receiver(tmp_path / "pacs", ae_title="LATEPACS", port=pacs_port) as pacs:
            celery_worker_factory(settings)
            got = pacs.wait_for(2, timeout=90)
            time.sleep(1.0)  # anything extra would arrive now
            srs = [r for r in pacs.received if r.sop_class_uid == str(Comprehensive3DSRStorage)]
            assert len(got) == 2 and len(pacs.received) == 2, [r.sop_class_uid for r in pacs.received]
            assert len(srs) == 1 and srs[0].study_uid == study.study_uid
        wait_until(lambda: study_state(store, study.study_uid) is StudyState.DELIVERED, 30, "DELIVERED state")
        with store.session() as s:
            analyses = s.scalars(select(Analysis).order_by(Analysis.id)).all()
            executions = [(a.execution, a.finished_at) for a in analyses]
        # one analysis: the kill cost a delivery task, which another worker ran again
        assert len(analyses) == 1, executions
        assert analyses[0].finished_at is not None and analyses[0].delivered_at is not None
    finally:
        store.dispose()
