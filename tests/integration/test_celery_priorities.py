"""On Redis a study's delivery task goes before the analyses queued behind it (worker.app).

Real node, real Redis, a real Celery worker process, a pynetdicom PACS. Four studies are queued
while no worker runs; one worker then starts. It analyses a study, whose analysis puts the
delivery on the queue, and takes that delivery next, before the next analysis: each study's
results reach the PACS before the following study's analysis starts. With first-in first-out
queueing every delivery would wait for all four analyses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store, migrate
from dicomnode.store.models import Analysis, Study, StudyState
from dicomnode.store.queries import study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import REDIS_URL, CeleryWorker
from tests.support import wait_until
from worker.app import ANALYSIS_PRIORITY

STUDIES = 4


def test_each_delivery_goes_before_the_analyses_still_waiting(
    tmp_path: Path,
    pacs: Receiver,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    celery_worker_factory: Callable[[Settings], CeleryWorker],
    celery_queue: str,
) -> None:
    settings = make_settings(broker_url=REDIS_URL, queue=celery_queue)
    migrate(settings.effective_database_url)
    node = node_factory(settings)
    studies = write_phantom_studies(tmp_path / "in", STUDIES, seed=47, size=256)
    for study in studies:
        assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))

    # every analysis waits on Redis, in the list kombu keeps for its priority step
    waiting = redis.Redis.from_url(REDIS_URL)
    try:
        wait_until(
            lambda: waiting.llen(f"{celery_queue}\x06\x16{ANALYSIS_PRIORITY}") == STUDIES,
            30,
            f"{STUDIES} analysis tasks queued",
        )
        assert waiting.llen(celery_queue) == 0
    finally:
        waiting.close()
    # and the node counts them there: its reconciler holds off re-publishing while they wait
    assert node.runner is not None and node.runner.backlog() == STUDIES

    celery_worker_factory(settings)
    pacs.wait_for(2 * STUDIES, timeout=120)  # an SR and an SC each
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        wait_until(
            lambda: all(study_state(store, s.study_uid) is StudyState.DELIVERED for s in studies),
            30,
            "every study delivered",
        )
        with store.session() as s:
            rows = s.execute(
                select(Study.study_uid, Analysis.started_at, Analysis.delivered_at)
                .join(Analysis, Analysis.study_id == Study.id)
                .order_by(Analysis.started_at)
            ).all()
    finally:
        store.dispose()
    assert len(rows) == STUDIES
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert earlier.delivered_at is not None
        assert earlier.delivered_at <= later.started_at, (
            f"study {earlier.study_uid} delivered at {earlier.delivered_at}, after the next analysis "
            f"started at {later.started_at}: its delivery waited behind the analyses"
        )
