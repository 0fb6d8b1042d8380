"""Task runners: where a complete study goes to be analysed.

With no broker configured the study runs on an in-process executor; with ``DICOMNODE_BROKER_URL``
it becomes a Celery task on the queue. Both run :meth:`worker.pipeline.Pipeline.analyse_study`.
The node is handed :func:`make_runner` (a :data:`dicomnode.node.RunnerFactory`) by whoever
starts it: ``dicomnode serve``, the demo, the tests. How many delivery attempts a round makes and
when the next is due is :mod:`dicomnode.delivery.retry`'s; the embedded runner only keeps the timer.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import structlog

from dicomnode.config import Settings
from dicomnode.delivery import retry_delivery
from dicomnode.node import TaskRunner
from dicomnode.store.db import Store

log = structlog.get_logger("dicomnode.dispatch")


class InProcessRunner:
    """Runs studies one at a time on a background thread of this process (embedded mode)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicomnode-analyse")
        self._pipeline: Any = None
        self.futures: list[Future[Any]] = []
        self._timers: list[threading.Timer] = []

    def _pipeline_instance(self) -> Any:
        if self._pipeline is None:
            from dicomnode.model import PneumoniaModel
            from worker.pipeline import Pipeline

            self._pipeline = Pipeline(
                self.settings, self.store, PneumoniaModel(self.settings.model_path), defer=self.retry_delivery
            )
        return self._pipeline

    def retry_delivery(self, study_uid: str, analysis_id: int, delay: float = 0.0) -> None:
        """A delivery round for ``analysis_id`` on the analysis thread after ``delay`` seconds (a
        timer meanwhile, so the thread analyses other studies while a PACS is down): the
        :data:`dicomnode.delivery.Defer` of the embedded mode."""

        def due() -> None:
            try:
                self.futures.append(self._executor.submit(self._deliver, study_uid, analysis_id))
            except RuntimeError:  # shut down meanwhile: the next start schedules the round again
                pass

        timer = threading.Timer(delay, due)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        """A delivery round that was scheduled before a restart (timers die with the process)."""
        self.retry_delivery(study_uid, analysis_id)

    def _deliver(self, study_uid: str, analysis_id: int) -> Any:
        try:
            return retry_delivery(self.settings, self.store, study_uid, analysis_id, self.retry_delivery)
        except Exception:
            log.exception("dispatch.delivery_failed", study_uid=study_uid)
            return None

    def _run(self, study_uid: str, queued_at: datetime) -> Any:
        try:
            return self._pipeline_instance().analyse_study(
                study_uid, queued_at=queued_at, execution="inprocess"
            )
        except Exception:
            log.exception("dispatch.inprocess_failed", study_uid=study_uid)
            return None

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(self._executor.submit(self._run, study_uid, queued_at))

    def shutdown(self, wait: bool = True) -> None:
        for timer in self._timers:  # scheduled delivery rounds: the next start picks them up
            timer.cancel()
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


class CeleryRunner:
    """Sends each study to the Celery queue named by ``DICOMNODE_QUEUE``."""

    def __init__(self, settings: Settings) -> None:
        from worker.app import make_celery

        self.settings = settings
        self.app = make_celery(settings)

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        self.app.send_task(
            "dicomnode.analyse_study",
            args=[study_uid, queued_at.isoformat()],
            queue=self.settings.queue,
        )
        log.info("dispatch.queued", study_uid=study_uid, queue=self.settings.queue)

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        """Nothing to do: the scheduled round is a countdown task kept in Redis."""

    def shutdown(self, wait: bool = True) -> None:
        pass


def make_runner(settings: Settings, store: Store) -> TaskRunner:
    """In-process without a broker URL, Celery with one."""
    if settings.broker_url:
        return CeleryRunner(settings)
    return InProcessRunner(settings, store)
