"""Celery tasks: thin wrappers around :class:`worker.pipeline.Pipeline`.

One pipeline (store + ONNX session) per worker process, created on the first task.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import structlog
from celery.signals import worker_process_shutdown, worker_shutdown
from sqlalchemy.exc import OperationalError

from dicomnode.config import load_settings
from dicomnode.delivery import retry_delivery
from dicomnode.delivery.pool import POOL
from dicomnode.model.session import ModelLoadError
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from worker.app import app
from worker.pipeline import Pipeline, execution_label
from worker.runners import hold_for_model

log = structlog.get_logger("worker.tasks")

_pipeline: Pipeline | None = None
_lock = threading.Lock()


def get_pipeline() -> Pipeline:
    """This process's pipeline, built from the environment's settings on first use."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            _pipeline = Pipeline.from_settings(load_settings())
            _pipeline.defer = _schedule_delivery
        return _pipeline


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_pipeline(**_: Any) -> None:
    """Stop this process's decoding child before the worker exits: a prefork child ends with
    ``os._exit``, which runs no finalizer, and the child's queues would be reported (as raw text in a
    JSON log) as leaked semaphores by multiprocessing's resource tracker."""
    with _lock:
        if _pipeline is not None:
            _pipeline.close()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _release_kept_associations(**_: Any) -> None:
    """Release this process's kept-open delivery associations (:mod:`dicomnode.delivery.pool`):
    a prefork child ends with ``os._exit``, which runs no ``atexit`` handler."""
    POOL.close()


def _schedule_delivery(study_uid: str, analysis_id: int, delay: float) -> None:
    """The next delivery round as a task with a countdown on the delivery queue
    (``DICOMNODE_DELIVERY_QUEUE``, else the analysis queue): the worker is free for other studies
    meanwhile, and the round survives a worker restart (acks_late). The
    :data:`dicomnode.delivery.Defer` of the Celery mode. Should the broker refuse it, the study's
    delivery stays due in SQL and the node's reconciler sends the task again."""
    s = get_pipeline().settings
    try:
        deliver_results_again.apply_async(
            args=[study_uid, analysis_id],
            countdown=delay,
            queue=s.delivery_queue or s.queue,
            ignore_result=True,  # nobody reads it; subscribing to it blocks when Redis is away
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1},
        )
    except Exception as exc:
        log.warning("dispatch.publish_failed", study_uid=study_uid, error=type(exc).__name__)


#: Errors worth another try later (database or broker hiccups, a full or busy disk).
TRANSIENT_ERRORS = (OperationalError, OSError)

#: Both tasks: acknowledged only when done (a lost worker's task runs again elsewhere), retried
#: with backoff on transient errors.
_DURABLE_TASK: dict[str, Any] = dict(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)


@app.task(name="dicomnode.analyse_study", **_DURABLE_TASK)
def analyse_study(study_uid: str, queued_at: str | None = None) -> dict[str, Any]:
    """Analyse one complete study (idempotent: a re-delivered task finds it done and returns).

    A worker without a loadable model leaves the study COMPLETE with the reason; the node's
    reconciler sends it again, so it is analysed once a worker has the model."""
    try:
        pipeline = get_pipeline()
    except ModelLoadError as exc:
        settings = load_settings()
        store = Store(settings.effective_database_url, run_migrations=False)
        try:
            hold_for_model(store, study_uid, exc, settings.model_path)
        finally:
            store.dispose()
        return {"study_uid": study_uid, "state": StudyState.COMPLETE.value, "skipped": True}
    outcome = pipeline.analyse_study(
        study_uid,
        queued_at=datetime.fromisoformat(queued_at) if queued_at else None,
        execution=execution_label("celery"),
    )
    return {
        "study_uid": outcome.study_uid,
        "state": outcome.state.value,
        "score": outcome.score,
        "priority": outcome.priority,
        "skipped": outcome.skipped,
    }


@app.task(name="dicomnode.deliver_results", **_DURABLE_TASK)
def deliver_results_again(study_uid: str, analysis_id: int) -> dict[str, Any]:
    """One scheduled delivery round (see :func:`dicomnode.delivery.retry_delivery`)."""
    p = get_pipeline()
    state = retry_delivery(p.settings, p.store, study_uid, analysis_id, p.defer)
    return {"study_uid": study_uid, "state": state.value if state is not None else "superseded"}
