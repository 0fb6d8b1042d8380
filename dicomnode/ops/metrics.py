"""Prometheus ``/metrics`` for the whole deployment, read from SQL at scrape time.

``dicomnode serve`` starts :func:`start_metrics_server` on ``DICOMNODE_METRICS_HOST`` (127.0.0.1
unless set: the endpoint has no authentication and every scrape runs SQL) and
``DICOMNODE_METRICS_PORT``. Every
number comes from the shared database (and Redis for the queue), so one scrape covers the node
and every Celery worker process, wherever they run:

- ``dicomnode_instances_received_total``: instances recorded by the SCP
- ``dicomnode_studies{state=...}``: studies in each :class:`~dicomnode.store.models.StudyState`
- ``dicomnode_queue_depth``: Redis ``LLEN`` of ``DICOMNODE_QUEUE`` with a broker, else the
  in-process backlog (studies in state ``complete``)
- ``dicomnode_inference_seconds``: histogram of ``inferred_at - preprocessed_at``
- ``dicomnode_time_to_notification_seconds``: histogram of last instance received -> results
  accepted by every destination (``analyses.delivered_at - studies.last_received_at``)
- ``dicomnode_delivery_failures_total``: failed C-STORE attempts of results
- ``dicomnode_destination_down{destination=...}``: 1 while a destination's latest attempt, among
  studies with a delivery pending, failed without an association (the node C-ECHOes it and
  re-sends when it answers: :mod:`dicomnode.receive.reconcile`), else 0
- ``dicomnode_deliveries_total``: result objects a destination accepted (successful C-STOREs)
- ``dicomnode_stranded_studies``: studies the reconciler should have handed on again: complete or
  analysing, or with a delivery round due, for longer than ``DICOMNODE_RECONCILE_AFTER_SECONDS``
- ``dicomnode_urgent_notifications{state=...}``: urgent-finding POSTs pending, delivered, failed
  (:mod:`dicomnode.delivery.hook`)
- ``dicomnode_drift_psi{model_version=...}`` and ``dicomnode_drift_analyses``: PSI of the
  configured model's scores of the last :data:`DRIFT_WINDOW_SECONDS` against its card's validation
  histogram (:mod:`dicomnode.ops.drift`), recomputed at most every :data:`DRIFT_REFRESH_SECONDS`
- ``dicomnode_disk_free_bytes`` and ``dicomnode_disk_min_free_bytes``: free space on the storage
  disk, and ``DICOMNODE_MIN_FREE_BYTES`` below which the SCP refuses new instances

The rules in docker/prometheus/alerts.yml and the Grafana dashboard in docker/grafana use these
names only (a test scrapes a running node for each).

Scrape cost stays bounded on a big database: counters are kept incrementally by primary key
(:class:`IdCount` reads only rows added since the last scrape), the large terminal state
``delivered`` is derived (all studies minus the others, each an index range), and the
histograms read only analyses finished since the previous scrape (index on ``finished_at``).
The histograms are proper cumulative Prometheus histograms: seeded at the first scrape with the
analyses finished in the last ``DICOMNODE_METRICS_WINDOW_SECONDS``, then growing with each
analysis that finishes (a restart resets them, which ``rate()`` handles).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from dicomnode.config import Settings
from dicomnode.store.db import Store
from dicomnode.store.models import (
    Analysis,
    DeliveryAttempt,
    Instance,
    Notification,
    NotificationState,
    Study,
    StudyState,
    utcnow,
)
from dicomnode.store.queries import as_utc, destinations_down

log = structlog.get_logger("dicomnode.metrics")

#: seconds; from inference on a GPU (milliseconds) to a slow CPU (seconds): docs/sizing.md
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: seconds; includes the release grace (0.2 s) or, for studies sent over several associations, the
#: quiet period (DICOMNODE_QUIET_SECONDS, 5 s), and queueing
NOTIFICATION_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
#: the state that holds nearly every study of a healthy node: counted as all studies minus the rest
_BULK_STATE = StudyState.DELIVERED
#: a row id is trusted not to be overtaken by a slower, lower-id transaction after this long
SETTLE_SECONDS = 60.0
#: seconds of scores the drift gauge compares with the validation baseline (one day)
DRIFT_WINDOW_SECONDS = 86400.0
#: the drift gauge is recomputed at most this often (it reads a day of analyses)
DRIFT_REFRESH_SECONDS = 300.0


def redis_queue_lists(queue: str) -> list[str]:
    """The Redis lists holding a Celery queue's tasks: kombu's Redis transport keeps priority step
    0 under the queue's name (where deliveries wait) and steps 3, 6 and 9 under
    ``<queue>\\x06\\x16<step>`` (analyses wait at 3)."""
    return [queue] + [f"{queue}\x06\x16{step}" for step in (3, 6, 9)]


def redis_queue_depth(client: Any, queue: str) -> int:
    """Tasks waiting in ``queue`` on the Redis server of ``client`` (a ``redis.Redis``), every
    priority step counted (:func:`redis_queue_lists`)."""
    pipe = client.pipeline()
    for key in redis_queue_lists(queue):
        pipe.llen(key)
    return int(sum(pipe.execute()))


class IdCount:
    """``count(*)`` of rows matching ``where`` in an insert-only table, kept by primary key.

    The first call counts everything once; later calls count only ids above a watermark. The
    watermark advances to an id seen ``settle_seconds`` earlier, because on PostgreSQL a
    transaction holding a lower id may commit after one holding a higher id (on SQLite writers
    are serialised and ids commit in order).
    """

    def __init__(
        self,
        id_col: InstrumentedAttribute[int],
        where: ColumnElement[bool] | None = None,
        *,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.id_col = id_col
        self.where = where
        self.settle_seconds = settle_seconds
        self._base = 0  # matching rows with id <= _settled
        self._settled: int | None = None
        self._seen: deque[tuple[float, int]] = deque()  # (monotonic time, table max id then)

    def _count(self, s: Session, lo: int, hi: int | None = None) -> int:
        stmt = select(func.count()).select_from(self.id_col.class_).where(self.id_col > lo)
        if hi is not None:
            stmt = stmt.where(self.id_col <= hi)
        if self.where is not None:
            stmt = stmt.where(self.where)
        return int(s.scalar(stmt) or 0)

    def value(self, s: Session, now: float | None = None) -> int:
        """The count now (reads only rows added since the settled watermark)."""
        now = time.monotonic() if now is None else now
        top = int(s.scalar(select(func.max(self.id_col))) or 0)
        if self._settled is None:
            self._base, self._settled = self._count(s, 0, top), top
            return self._base
        candidate = None
        while self._seen and now - self._seen[0][0] >= self.settle_seconds:
            candidate = self._seen.popleft()[1]
        if candidate is not None and candidate > self._settled:
            self._base += self._count(s, self._settled, candidate)
            self._settled = candidate
        self._seen.append((now, top))
        return self._base + self._count(s, self._settled)


@dataclass
class CumulativeHistogram:
    """Bucket counts and sum of observations, as Prometheus exposes them."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        i = next((k for k, b in enumerate(self.buckets) if value <= b), len(self.buckets))
        self.counts[i] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        """The histogram as a metric family (cumulative ``le`` buckets)."""
        cumulative, running = [], 0
        for bound, n in zip([*map(_le, self.buckets), "+Inf"], self.counts, strict=True):
            running += n
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, documentation, buckets=cumulative, sum_value=self.total)


def _le(bound: float) -> str:
    return repr(float(bound))


class SqlCollector(Collector):
    """A Prometheus collector whose numbers are read from the node's SQL store (and Redis)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        window_seconds: float | None = None,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.window = timedelta(seconds=window_seconds or settings.metrics_window_seconds)
        self.settle = timedelta(seconds=max(settle_seconds, 5.0))
        self._lock = threading.Lock()
        self._instances = IdCount(Instance.id, settle_seconds=settle_seconds)
        self._studies = IdCount(Study.id, settle_seconds=settle_seconds)
        self._delivery_failures = IdCount(
            DeliveryAttempt.id, DeliveryAttempt.success.is_(False), settle_seconds=settle_seconds
        )
        self._deliveries = IdCount(
            DeliveryAttempt.id, DeliveryAttempt.success.is_(True), settle_seconds=settle_seconds
        )
        self._notifications = IdCount(Notification.id, settle_seconds=settle_seconds)
        self._drift: list[tuple[str, float | None, int]] = []  # (model version, PSI, analyses)
        self._drift_at: float | None = None  # monotonic time of the last drift computation
        self._baseline: tuple[tuple[str, float], Any] | None = None  # ((path, mtime), (version, baseline))
        self.inference = CumulativeHistogram(INFERENCE_BUCKETS)
        self.notification = CumulativeHistogram(NOTIFICATION_BUCKETS)
        self._since: datetime | None = None  # analyses finished from here on are not yet all seen
        self._observed: dict[int, datetime] = {}  # analysis id -> finished_at, inside the overlap
        self._delivered: dict[int, datetime] = {}  # analysis id -> delivered_at, inside the overlap
        self._redis: Any = None

    # -- SQL ------------------------------------------------------------------------------------

    def _state_counts(self, s: Session) -> dict[str, int]:
        """Studies per state; the bulk state is derived so no query scans it."""
        others = [x.value for x in StudyState if x is not _BULK_STATE]
        rows = s.execute(
            select(Study.state, func.count()).where(Study.state.in_(others)).group_by(Study.state)
        ).all()
        counts = {x.value: 0 for x in StudyState}
        counts.update({state: int(n) for state, n in rows})
        total = self._studies.value(s)
        counts[_BULK_STATE.value] = max(0, total - sum(counts[x] for x in others))
        return counts

    def _observe_finished(self, s: Session) -> None:
        """Add analyses finished, and results delivered, since the last scrape to the histograms
        (each exactly once). Delivery is its own step after the analysis (issue 14): an analysis
        finishes first and its results reach every destination later, so the time to
        notification is read by ``delivered_at`` (index ix_analyses_delivered_at)."""
        now = utcnow()
        since = self._since if self._since is not None else now - self.window
        rows = s.execute(
            select(Analysis.id, Analysis.finished_at, Analysis.preprocessed_at, Analysis.inferred_at).where(
                Analysis.finished_at >= since
            )
        ).all()
        for aid, finished, pre, inferred in rows:
            if aid in self._observed or finished is None:
                continue
            self._observed[aid] = as_utc(finished) or finished
            if pre is not None and inferred is not None:
                self.inference.observe(max(0.0, (inferred - pre).total_seconds()))
        delivered_rows = s.execute(
            select(Analysis.id, Analysis.delivered_at, Study.last_received_at)
            .join(Study, Analysis.study_id == Study.id)
            .where(Analysis.delivered_at >= since)
        ).all()
        for aid, delivered, last_received in delivered_rows:
            if aid in self._delivered or delivered is None:
                continue
            self._delivered[aid] = as_utc(delivered) or delivered
            if last_received is not None:
                ttn = (delivered - last_received).total_seconds()
                if ttn >= 0:  # negative: a late instance re-opened the study after delivery
                    self.notification.observe(ttn)
        # next time, look back far enough to catch slow commits and clock skew between workers
        self._since = now - self.settle
        self._observed = {k: v for k, v in self._observed.items() if v >= self._since}
        self._delivered = {k: v for k, v in self._delivered.items() if v >= self._since}

    def _stranded(self, s: Session, now: datetime) -> int:
        """Studies the reconciler should have moved on (index ranges: the few in complete and
        analysing, and the delivery rounds due, by ``delivery_due_at``)."""
        stale = now - timedelta(seconds=self.settings.reconcile_after_seconds)
        since = func.coalesce(Study.claimed_at, Study.updated_at)
        handed_on = s.scalar(
            select(func.count()).where(
                Study.state.in_([StudyState.COMPLETE.value, StudyState.ANALYSING.value]), since < stale
            )
        )
        # an analysis runs for up to the task time limit before the reconciler takes it back
        due = s.scalar(
            select(func.count()).where(
                Study.state == StudyState.ANALYSED.value, Study.delivery_due_at < stale
            )
        )
        return int(handed_on or 0) + int(due or 0)

    def _notification_counts(self, s: Session) -> dict[str, int]:
        """Urgent-finding notifications per state; delivered, the bulk, is derived."""
        rows = s.execute(
            select(Notification.state, func.count())
            .where(Notification.state.in_([NotificationState.PENDING.value, NotificationState.FAILED.value]))
            .group_by(Notification.state)
        ).all()
        counts = {x.value: 0 for x in NotificationState}
        counts.update({state: int(n) for state, n in rows})
        others = counts[NotificationState.PENDING.value] + counts[NotificationState.FAILED.value]
        counts[NotificationState.DELIVERED.value] = max(0, self._notifications.value(s) - others)
        return counts

    def _model_baseline(self) -> tuple[str, Any] | None:
        """(model version, validation baseline) of the configured model file, read once per file
        version; None without a file or a baseline in its card."""
        from dicomnode.ops.drift import baseline_from_card

        path = self.settings.model_path
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            return None
        if self._baseline is None or self._baseline[0] != key:
            from dicomnode.model.session import read_card

            try:
                card = read_card(path)
                base = baseline_from_card(card)
            except (OSError, ValueError) as exc:
                log.warning(
                    "metrics.no_baseline", model=str(path), error=f"{type(exc).__name__}: {exc}"[:300]
                )
                base = None
            self._baseline = (key, None if base is None else (card.version, base))
        return self._baseline[1]  # type: ignore[no-any-return]

    def _drift_rows(self, now: float) -> list[tuple[str, float | None, int]]:
        """PSI of the configured model's scores over the last day, recomputed every few minutes."""
        if self._drift_at is not None and now - self._drift_at < DRIFT_REFRESH_SECONDS:
            return self._drift
        from dicomnode.ops.drift import drift

        self._drift_at = now
        model = self._model_baseline()
        if model is None:
            self._drift = []
            return self._drift
        version, base = model
        since = utcnow() - timedelta(seconds=DRIFT_WINDOW_SECONDS)
        rows, _, _ = drift(self.store, {version: base}, since=since, model_version=version)
        self._drift = [(r.model_version, r.psi, r.analyses) for r in rows]
        return self._drift

    def _disk(self) -> Iterator[Metric]:
        """Free bytes on the storage disk and the floor the SCP keeps (no SQL)."""
        try:
            free = shutil.disk_usage(self.settings.storage_dir).free
        except OSError:  # the folder is not there (yet): no sample rather than a wrong one
            return
        yield GaugeMetricFamily(
            "dicomnode_disk_free_bytes", "Free bytes on the disk of DICOMNODE_STORAGE_DIR", value=free
        )
        yield GaugeMetricFamily(
            "dicomnode_disk_min_free_bytes",
            "DICOMNODE_MIN_FREE_BYTES: below this free space the SCP refuses new instances (0: off)",
            value=self.settings.min_free_bytes,
        )

    # -- Redis ----------------------------------------------------------------------------------

    def _queue_depth(self, studies: dict[str, int] | None) -> int | None:
        broker = self.settings.broker_url
        if not broker:
            return None if studies is None else studies[StudyState.COMPLETE.value]
        if not broker.startswith(("redis://", "rediss://")):
            return None  # another broker: its own exporter knows better
        import redis

        if self._redis is None:
            self._redis = redis.Redis.from_url(broker, socket_timeout=2, socket_connect_timeout=2)
        return redis_queue_depth(self._redis, self.settings.queue)

    # -- Collector ------------------------------------------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Called by prometheus_client on every scrape."""
        with self._lock:
            yield from self._collect()

    def _collect(self) -> Iterator[Metric]:
        t0 = time.perf_counter()
        up = GaugeMetricFamily(
            "dicomnode_metrics_source_up", "1 if the source answered this scrape", labels=["source"]
        )
        studies: dict[str, int] | None = None
        try:
            with self.store.session() as s:
                instances = self._instances.value(s)
                studies = self._state_counts(s)
                failures = self._delivery_failures.value(s)
                deliveries = self._deliveries.value(s)
                stranded = self._stranded(s, utcnow())
                notifications = self._notification_counts(s)
                self._observe_finished(s)
            down = destinations_down(self.store)
        except Exception as exc:  # the database is down: say so, keep serving the other metrics
            log.warning("metrics.sql_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            up.add_metric(["sql"], 0)
        else:
            up.add_metric(["sql"], 1)
            yield CounterMetricFamily(
                "dicomnode_instances_received",
                "DICOM instances received and recorded by the SCP",
                value=instances,
            )
            g = GaugeMetricFamily("dicomnode_studies", "Studies in each state", labels=["state"])
            for state, n in studies.items():
                g.add_metric([state], n)
            yield g
            yield CounterMetricFamily(
                "dicomnode_delivery_failures",
                "Failed C-STORE attempts of result objects to a destination",
                value=failures,
            )
            d = GaugeMetricFamily(
                "dicomnode_destination_down",
                "1 while a destination does not take results (no association), else 0",
                labels=["destination"],
            )
            for name in sorted({str(x) for x in self.settings.destinations} | set(down)):
                d.add_metric([name], 1 if name in down else 0)
            yield d
            yield CounterMetricFamily(
                "dicomnode_deliveries",
                "Result objects a destination accepted (successful C-STORE attempts)",
                value=deliveries,
            )
            yield GaugeMetricFamily(
                "dicomnode_stranded_studies",
                "Studies complete, analysing or with a delivery due for longer than DICOMNODE_RECONCILE_AFTER_SECONDS",
                value=stranded,
            )
            u = GaugeMetricFamily(
                "dicomnode_urgent_notifications",
                "Urgent-finding HTTP notifications in each state",
                labels=["state"],
            )
            for state, n in notifications.items():
                u.add_metric([state], n)
            yield u
            yield self.inference.family(
                "dicomnode_inference_seconds", "ONNX inference time per study (preprocessed -> inferred)"
            )
            yield self.notification.family(
                "dicomnode_time_to_notification_seconds",
                "Last instance received -> results accepted by every destination",
            )
        psi = GaugeMetricFamily(
            "dicomnode_drift_psi",
            "PSI of the configured model's scores of the last day against its validation histogram",
            labels=["model_version"],
        )
        scored = GaugeMetricFamily(
            "dicomnode_drift_analyses",
            "Scored analyses the drift PSI was computed from",
            labels=["model_version"],
        )
        try:
            for version, value, n in self._drift_rows(time.monotonic()):
                scored.add_metric([version], n)
                if value is not None:
                    psi.add_metric([version], value)
        except Exception as exc:  # the database down, or a model file being replaced
            log.warning("metrics.drift_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        yield psi
        yield scored
        yield from self._disk()
        try:
            depth = self._queue_depth(studies)
        except Exception as exc:  # Redis down: the gauge goes missing, source_up says why
            log.warning("metrics.queue_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            up.add_metric(["queue"], 0)
        else:
            if depth is not None:
                up.add_metric(["queue"], 1)
                yield GaugeMetricFamily(
                    "dicomnode_queue_depth",
                    "Complete studies waiting for a worker (Redis queue length, or the in-process backlog)",
                    value=depth,
                )
        yield up
        yield GaugeMetricFamily(
            "dicomnode_metrics_scrape_seconds",
            "Time this scrape spent reading SQL and Redis",
            value=time.perf_counter() - t0,
        )

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None


class MetricsServer:
    """A running ``/metrics`` HTTP server; :meth:`stop` shuts it down."""

    def __init__(self, httpd: Any, thread: threading.Thread, collector: SqlCollector) -> None:
        self.httpd = httpd
        self.thread = thread
        self.collector = collector

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def host(self) -> str:
        """The address the server is bound to."""
        return str(self.httpd.server_address[0])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the server socket and the Redis connection."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        self.collector.close()


def start_metrics_server(settings: Settings, store: Store, *, port: int | None = None) -> MetricsServer:
    """Serve ``/metrics`` on ``settings.metrics_host`` and ``port`` (default ``settings.metrics_port``;
    0 picks a free one) in a background thread, reading ``store`` at every scrape. ``dicomnode serve``
    calls this."""
    collector = SqlCollector(settings, store)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    bind = settings.metrics_port if port is None else port
    httpd, thread = start_http_server(bind, addr=settings.metrics_host, registry=registry)
    server = MetricsServer(httpd, thread, collector)
    log.info(
        "metrics.started", host=server.host, port=server.port, window_seconds=collector.window.total_seconds()
    )
    return server


__all__ = [
    "INFERENCE_BUCKETS",
    "NOTIFICATION_BUCKETS",
    "DRIFT_REFRESH_SECONDS",
    "DRIFT_WINDOW_SECONDS",
    "CumulativeHistogram",
    "IdCount",
    "MetricsServer",
    "SqlCollector",
    "redis_queue_depth",
    "redis_queue_lists",
    "start_metrics_server",
]
