"""Celery tasks: thin wrappers around :class:`worker.pipeline.Pipeline`.

One pipeline (store + ONNX session) per worker process, created on the first task.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from sqlalchemy.exc import OperationalError

from dicomnode.config import load_settings

from .app import app
from .pipeline import Pipeline, execution_label

_pipeline: Pipeline | None = None
_lock = threading.Lock()


def get_pipeline() -> Pipeline:
    """This process's pipeline, built from the environment's settings on first use."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            _pipeline = Pipeline.from_settings(load_settings())
        return _pipeline


#: Errors worth another try later (database or broker hiccups, a full or busy disk).
TRANSIENT_ERRORS = (OperationalError, OSError)


@app.task(
    name="dicomnode.analyse_study",
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=5,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=5,
)
def analyse_study(study_uid: str, queued_at: str | None = None) -> dict[str, Any]:
    """Analyse one complete study (idempotent: a re-delivered task finds it done and returns)."""
    outcome = get_pipeline().analyse_study(
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
