"""The Celery app: broker and result backend from ``DICOMNODE_BROKER_URL``.

Start workers with ``dicomnode worker`` (or ``celery -A worker.app worker``). Tasks are
acknowledged late and re-queued if a worker dies, so a study in flight is never lost. Flower
(``celery -A worker.app flower``, the ``flower`` service of docker/compose.yml) watches them.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from dicomnode.config import Settings, load_settings
from dicomnode.logconfig import configure_logging

#: Task priorities on a Redis broker, where 0 is taken first: kombu keeps a queue's priority steps
#: 0, 3, 6 and 9 in lists of their own and a worker pops from the lowest step first. A study's
#: delivery so goes before the analyses waiting: in a burst its results leave when a worker is next
#: free, not after every analysis queued behind it (bench/e2e_celery.py).
DELIVERY_PRIORITY = 0
ANALYSIS_PRIORITY = 3


def _routes(settings: Settings) -> dict[str, dict[str, Any]]:
    """Queue (and on Redis, priority) of each task, wherever it is sent from."""
    analysis: dict[str, Any] = {"queue": settings.queue}
    delivery: dict[str, Any] = {"queue": settings.delivery_queue or settings.queue}
    # other brokers order priorities their own way (AMQP: higher first, only on queues declared
    # with x-max-priority): left as they come there
    if (settings.broker_url or "").startswith(("redis://", "rediss://")):
        analysis["priority"] = ANALYSIS_PRIORITY
        delivery["priority"] = DELIVERY_PRIORITY
    return {"dicomnode.analyse_study": analysis, "dicomnode.deliver_results": delivery}


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from our settings."""
    app = Celery("dicomnode", include=["worker.tasks"])
    broker = settings.broker_url or "memory://"
    app.conf.update(
        broker_url=broker,
        result_backend=None if broker.startswith("memory") else broker,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # one study per task, one prefetched: a worker that dies holds one study, not a batch
        # (batching tasks with celery-batches needs a prefetch of at least the batch; a GPU
        # host runs more processes instead: docs/sizing.md#gpu-workers)
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        # A task whose worker died (acks_late: never acknowledged) is re-delivered after this.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # sweep for abandoned (unacked) tasks every few seconds rather than kombu's ~100 s
            "unacked_restore_interval": max(1, min(10, int(settings.visibility_timeout / 2))),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 30, settings.task_time_limit * 0.9),
        task_routes=_routes(settings),
        worker_hijack_root_logger=False,
        # Task events (sent, started, succeeded, failed) for Flower and `celery events`: Flower
        # shows a study task from the moment it is queued, not only once it has switched events
        # on by broadcast. Events go out as Redis PUBLISH: nothing piles up when nobody listens.
        # They carry the task's arguments: a Study Instance UID, never patient data.
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


_settings = load_settings()
app = make_celery(_settings)


@setup_logging.connect
def _log_like_the_node(**_: Any) -> None:
    """Workers log as the node does (``DICOMNODE_LOG_LEVEL``, ``DICOMNODE_LOG_FORMAT``).

    With a receiver on this signal Celery leaves logging alone: it neither configures the root
    logger nor swaps sys.stdout/stderr for a logging proxy. Without it the proxy swallowed every
    line after the banner under ``dicomnode worker`` (our handler writes to sys.stderr, which fed
    the proxy its own records, dropped as recursion)."""
    configure_logging(_settings.log_level, _settings.log_format)
