"""Task runners: where a complete study goes to be analysed, and its results to be delivered.

With no broker configured the study runs on an in-process executor; with ``DICOMNODE_BROKER_URL``
it becomes a Celery task on the queue. Both run :meth:`worker.pipeline.Pipeline.analyse_study`.
The node is handed :func:`make_runner` (a :data:`dicomnode.node.RunnerFactory`) by whoever
starts it: ``dicomnode serve``, the demo, the tests. How many delivery attempts a round makes and
when the next is due is :mod:`dicomnode.delivery.retry`'s; the runners only run the rounds.

Delivery is its own unit of work in both modes: the analysis hands the results on
(:func:`dicomnode.delivery.hand_off`) and a delivery thread (embedded) or a delivery task (Celery)
sends them, so a destination that does not answer never holds an analysis, and a node stopping
never waits for a delivery (its threads are daemons and their associations are aborted).
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import structlog

from dicomnode.config import ConfigError, Settings
from dicomnode.delivery import abort_all, echo, retry_delivery
from dicomnode.delivery.hook import send_due
from dicomnode.delivery.stow import StowAuth, reachable
from dicomnode.node import TaskRunner
from dicomnode.ops.metrics import redis_queue_depth
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.records import set_study_state

log = structlog.get_logger("dicomnode.dispatch")


def model_missing_message(settings: Settings, error: BaseException) -> str:
    """What ``serve`` says when the model it would analyse with cannot be loaded."""
    return (
        f"dicomnode serve analyses in this process and needs a model: {error}. Build the demo model "
        f"with `dicomnode train demo-model --out {settings.model_path}`, or set DICOMNODE_MODEL to "
        "an exported .onnx file"
    )


#: The state reason of a study held because no model could be loaded; the reconciler hands it
#: on again, so it is analysed once the model is there.
WAITING_FOR_MODEL = "waiting for a model"


def hold_for_model(store: Store, study_uid: str, error: BaseException, model_path: object) -> None:
    """Leave the study COMPLETE with the reason it waits (the reconciler retries it)."""
    set_study_state(
        store,
        study_uid,
        StudyState.COMPLETE,
        f"{WAITING_FOR_MODEL}: {model_path} cannot be loaded ({type(error).__name__}); "
        "analysed automatically once it can",
        only_from=(StudyState.COMPLETE,),
    )
    log.warning("dispatch.model_unavailable", study_uid=study_uid, model=str(model_path))


class DeliveryThreads:
    """Delivery rounds on daemon threads of their own (embedded mode).

    Daemon threads: a node stopping does not wait for a round (its association is aborted and
    the round is due again at the next start). A study already queued or in a round is not
    queued twice."""

    def __init__(self, run: Any, threads: int) -> None:
        self._run = run
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"dicomnode-deliver-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def put(self, study_uid: str, analysis_id: int) -> bool:
        """Queue a round; False when one for this study is already queued or running."""
        with self._lock:
            if self._stopped or study_uid in self._busy:
                return False
            self._busy.add(study_uid)
        self._queue.put((study_uid, analysis_id))
        return True

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            study_uid, analysis_id = item
            try:
                self._run(study_uid, analysis_id)
            finally:
                with self._lock:
                    self._busy.discard(study_uid)

    def stop(self) -> None:
        """Take no more rounds; rounds in progress are left to die with the process."""
        with self._lock:
            self._stopped = True
        for _ in self._threads:
            self._queue.put(None)


class InProcessRunner:
    """Runs studies on a background thread of this process (embedded mode), and their deliveries
    on ``DICOMNODE_DELIVERY_THREADS`` threads of their own.

    The analysis thread takes the studies waiting, up to ``DICOMNODE_BATCH_MAX_STUDIES`` (after
    waiting up to ``DICOMNODE_BATCH_WAIT_MS`` for more), and analyses them together
    (:func:`worker.batch.analyse_studies`); one study alone goes through
    :meth:`worker.pipeline.Pipeline.analyse_study`."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dicomnode-analyse")
        self._pipeline: Any = None
        self._pipeline_lock = threading.Lock()
        self.futures: list[Future[Any]] = []
        self._timers: list[threading.Timer] = []
        self._queued: set[str] = set()
        self._queued_lock = threading.Lock()
        #: studies submitted and not yet taken by the analysis thread, oldest first (one entry
        #: per study in ``_queued``, so bounded by the studies the node holds)
        self._waiting: collections.deque[tuple[str, datetime]] = collections.deque()
        self._arrived = threading.Condition(self._queued_lock)
        self._delivery = DeliveryThreads(self._deliver, settings.delivery_threads)

    def _pipeline_instance(self) -> Any:
        with self._pipeline_lock:
            if self._pipeline is None:
                from dicomnode.model import PneumoniaModel
                from worker.pipeline import Pipeline

                self._pipeline = Pipeline(
                    self.settings,
                    self.store,
                    PneumoniaModel.from_settings(self.settings),
                    defer=self.retry_delivery,
                )
            return self._pipeline

    def check(self) -> None:
        """Load the model now (``serve`` calls this before it listens); :class:`ConfigError`
        naming the model file and what to do when it cannot be loaded."""
        from dicomnode.model.session import ModelLoadError

        try:
            self._pipeline_instance()
        except ModelLoadError as exc:
            raise ConfigError(model_missing_message(self.settings, exc)) from None

    def retry_delivery(self, study_uid: str, analysis_id: int, delay: float = 0.0) -> None:
        """A delivery round for ``analysis_id`` on the delivery threads after ``delay`` seconds (a
        timer meanwhile): the :data:`dicomnode.delivery.Defer` of the embedded mode."""
        if delay <= 0:
            self._delivery.put(study_uid, analysis_id)
            return
        timer = threading.Timer(delay, self._delivery.put, args=(study_uid, analysis_id))
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        """A delivery round that was scheduled before a restart (timers die with the process)."""
        self.retry_delivery(study_uid, analysis_id)

    def deliver_now(self, study_uid: str, analysis_id: int) -> None:
        """A delivery round now (the reconciler found it overdue, or its destination is back)."""
        self.retry_delivery(study_uid, analysis_id)

    def echo(self, destination: str) -> bool:
        """True when the configured destination named ``destination`` answers C-ECHO."""
        return _echo(self.settings, destination)

    def notify_due(self) -> None:
        """Urgent-finding POSTs that are due again, sent from the node (the reconciler's pass)."""
        if self.store is not None:
            send_due(self.settings, self.store)

    def _deliver(self, study_uid: str, analysis_id: int) -> Any:
        try:
            return retry_delivery(self.settings, self.store, study_uid, analysis_id, self.retry_delivery)
        except Exception:
            log.exception("dispatch.delivery_failed", study_uid=study_uid)
            return None

    def _run(self, study_uid: str, queued_at: datetime) -> Any:
        from dicomnode.model.session import ModelLoadError

        with self._queued_lock:
            self._queued.discard(study_uid)
        try:
            pipeline = self._pipeline_instance()
        except ModelLoadError as exc:
            hold_for_model(self.store, study_uid, exc, self.settings.model_path)
            return None
        try:
            return pipeline.analyse_study(study_uid, queued_at=queued_at, execution="inprocess")
        except Exception:
            log.exception("dispatch.inprocess_failed", study_uid=study_uid)
            return None

    def _run_waiting(self) -> Any:
        """Analyse the studies waiting, up to ``DICOMNODE_BATCH_MAX_STUDIES`` together; nothing
        when an earlier call took them all (each submit queues one call)."""
        from dicomnode.model.session import ModelLoadError

        limit, wait = self.settings.batch_max_studies, self.settings.batch_wait_ms / 1000
        with self._arrived:
            if self._waiting and wait > 0:
                self._arrived.wait_for(lambda: len(self._waiting) >= limit, timeout=wait)
            batch = [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]
        if len(batch) <= 1:
            return self._run(*batch[0]) if batch else None
        with self._queued_lock:
            self._queued.difference_update(uid for uid, _ in batch)
        try:
            pipeline = self._pipeline_instance()
        except ModelLoadError as exc:
            for uid, _ in batch:
                hold_for_model(self.store, uid, exc, self.settings.model_path)
            return None
        from worker.batch import analyse_studies

        try:
            return analyse_studies(pipeline, batch, execution="inprocess")
        except Exception:
            log.exception("dispatch.inprocess_failed", studies=[uid for uid, _ in batch])
            return None

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        with self._arrived:
            if study_uid in self._queued:  # already waiting for the analysis thread
                return
            self._queued.add(study_uid)
            self._waiting.append((study_uid, queued_at))
            self._arrived.notify()
        self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(self._executor.submit(self._run_waiting))

    def shutdown(self, wait: bool = True) -> None:
        for timer in self._timers:  # scheduled delivery rounds: the next start picks them up
            timer.cancel()
        self._delivery.stop()
        aborted = abort_all()  # a delivery hanging on a destination never holds the stop
        if aborted:
            log.info("dispatch.deliveries_aborted", associations=aborted)
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
        if wait:  # analyses have finished: their decoding process stops with the node, not at exit
            with self._pipeline_lock:
                if self._pipeline is not None:
                    self._pipeline.close()


def _echo(settings: Settings, destination: str) -> bool:
    for dest in settings.destinations:
        if str(dest) == destination and dest.is_stow:  # no C-ECHO over HTTP: a QIDO-RS query
            return reachable(
                dest,
                auth=StowAuth.from_settings(settings),
                connect_timeout=settings.delivery_connect_timeout_seconds,
                timeout=min(30.0, settings.delivery_attempt_timeout_seconds),
            )
        if str(dest) == destination:
            return echo(
                dest,
                calling_ae=settings.ae_title,
                connect_timeout=settings.delivery_connect_timeout_seconds,
                timeout=min(30.0, settings.delivery_attempt_timeout_seconds),
            )
    return False


class CeleryRunner:
    """Sends each study to the Celery queue named by ``DICOMNODE_QUEUE``.

    Publishing happens on a thread of its own with bounded retries
    (``DICOMNODE_PUBLISH_TIMEOUT_SECONDS``), so a broker that is down never blocks the tracker or
    the SCP; a study that could not be published stays COMPLETE and the node's reconciler
    publishes it again."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        from worker.app import make_celery

        self.settings = settings
        self.store = store  # for the urgent-finding retries the node sends itself
        self.app = make_celery(settings)
        t = settings.publish_timeout_seconds
        options = dict(self.app.conf.broker_transport_options or {})
        # kombu retries a connection for a channel by these (Connection.default_channel): without
        # them a publish waited for the whole outage; the reconciler retries what fails instead
        options.update(
            socket_connect_timeout=t,
            socket_timeout=t,
            max_retries=1,
            interval_start=0,
            interval_step=max(0.1, t / 4),
            interval_max=max(0.1, t / 4),
        )
        self.app.conf.broker_transport_options = options
        self.app.conf.broker_connection_timeout = t
        self._retry_policy = {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": max(0.1, t / 4),
            "interval_max": max(0.1, t / 4),
        }
        self._outbox: queue.Queue[tuple[str, list[Any], str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._publish_loop, name="dicomnode-publish", daemon=True)
        self._thread.start()

    def _publish_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            name, args, queue_name, study_uid = item
            try:
                # ignore_result: the node never reads a task's result, and subscribing to it on
                # the result backend (the same Redis) retried for ~20 s and then broke the app
                # for good ("Retry limit exceeded ... must be restarted") after an outage
                self.app.send_task(
                    name,
                    args=args,
                    queue=queue_name,
                    retry=True,
                    retry_policy=self._retry_policy,
                    ignore_result=True,
                )
                log.info("dispatch.queued", study_uid=study_uid, queue=queue_name, task=name)
            except Exception as exc:  # the broker is down: the reconciler publishes it again
                log.warning(
                    "dispatch.publish_failed", study_uid=study_uid, task=name, error=type(exc).__name__
                )

    def submit(self, study_uid: str, queued_at: datetime) -> None:
        self._outbox.put(
            ("dicomnode.analyse_study", [study_uid, queued_at.isoformat()], self.settings.queue, study_uid)
        )

    def resume_delivery(self, study_uid: str, analysis_id: int) -> None:
        """Nothing to do at start: the scheduled round is a countdown task kept in Redis (one
        lost with it is overdue, and the reconciler sends it again)."""

    def deliver_now(self, study_uid: str, analysis_id: int) -> None:
        """A delivery task now (the reconciler found the round overdue, or its destination is back)."""
        q = self.settings.delivery_queue or self.settings.queue
        self._outbox.put(("dicomnode.deliver_results", [study_uid, analysis_id], q, study_uid))

    def echo(self, destination: str) -> bool:
        """True when the configured destination named ``destination`` answers C-ECHO."""
        return _echo(self.settings, destination)

    def notify_due(self) -> None:
        """Urgent-finding POSTs that are due again, sent from the node (the reconciler's pass)."""
        if self.store is not None:
            send_due(self.settings, self.store)

    def backlog(self) -> int | None:
        """Studies waiting to be published or in the analysis queue; None when the broker cannot
        be reached (publishing again would fail too)."""
        t = self.settings.publish_timeout_seconds
        try:
            url = self.settings.broker_url
            if url.startswith(("redis://", "rediss://")):
                import redis

                client = redis.Redis.from_url(url, socket_timeout=t, socket_connect_timeout=t)
                try:
                    waiting = redis_queue_depth(client, self.settings.queue)
                finally:
                    client.close()
            else:
                with self.app.connection_for_write() as conn:
                    conn.ensure_connection(max_retries=1, timeout=t)
                    _, waiting, _ = conn.default_channel.queue_declare(self.settings.queue, passive=True)
            return waiting + self._outbox.qsize()
        except Exception:
            return None

    def shutdown(self, wait: bool = True) -> None:
        self._outbox.put(None)
        self._thread.join(timeout=self.settings.publish_timeout_seconds if wait else 0)


def make_runner(settings: Settings, store: Store) -> TaskRunner:
    """In-process without a broker URL, Celery with one."""
    if settings.broker_url:
        return CeleryRunner(settings, store)
    return InProcessRunner(settings, store)
