"""``/metrics`` over HTTP while real studies flow: node -> pipeline -> PACS, all on loopback."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.ops.metrics import IdCount, SqlCollector, start_metrics_server
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, DeliveryAttempt, Instance, Study, utcnow
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.support import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of one scrape as {(name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=10) as rsp:
        body = rsp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _wait_for(url: str, ok: Callable[[Samples], bool], timeout: float) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        got = scrape(url)
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_counters_gauges_and_histograms_follow_a_burst_of_studies(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    settings = make_settings()
    node = node_factory(settings)
    store = Store(settings.effective_database_url, run_migrations=False)
    server = start_metrics_server(settings, store, port=0)  # as `dicomnode serve` does, on a free port
    try:
        before = scrape(server.url)
        assert one(before, "dicomnode_instances_received_total") == 0
        assert one(before, "dicomnode_studies", state="delivered") == 0
        assert one(before, "dicomnode_queue_depth") == 0
        assert one(before, "dicomnode_inference_seconds_count") == 0
        assert one(before, "dicomnode_metrics_source_up", source="sql") == 1

        studies = write_phantom_studies(tmp_path / "in", 3, seed=11)
        for st in studies:
            assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
        assert node.flush_records()  # /metrics reads SQL: rows follow the responses by milliseconds

        during = scrape(server.url)
        assert one(during, "dicomnode_instances_received_total") == 3
        states = {k[1][0][1]: v for k, v in during.items() if k[0] == "dicomnode_studies"}
        assert sum(states.values()) == 3

        assert len(pacs.wait_for(6, timeout=120)) == 6
        after = _wait_for(server.url, lambda s: one(s, "dicomnode_studies", state="delivered") == 3, 30)
        assert one(after, "dicomnode_studies", state="delivered") == 3
        assert one(after, "dicomnode_queue_depth") == 0
        assert one(after, "dicomnode_delivery_failures_total") == 0
        assert one(after, "dicomnode_inference_seconds_count") == 3
        assert 0 < one(after, "dicomnode_inference_seconds_sum") < 30
        assert one(after, "dicomnode_inference_seconds_bucket", le="+Inf") == 3
        assert one(after, "dicomnode_time_to_notification_seconds_count") == 3
        # every study (one association each) waited the release grace before its analysis
        assert one(after, "dicomnode_time_to_notification_seconds_sum") >= 3 * settings.release_grace_seconds
        # a second scrape does not count the same analyses again
        again = scrape(server.url)
        assert one(again, "dicomnode_time_to_notification_seconds_count") == 3
        assert one(again, "dicomnode_instances_received_total") == 3
    finally:
        server.stop()
        store.dispose()


def test_failed_deliveries_are_counted(
    tmp_path: Path, make_settings: Callable[..., Settings], node_factory: Callable[[Settings], Node]
) -> None:
    dead = Destination("NOBODY", "127.0.0.1", free_port())
    settings = make_settings(destinations=(dead,), delivery_attempts=2, delivery_backoff_seconds=0.05)
    node = node_factory(settings)
    store = Store(settings.effective_database_url, run_migrations=False)
    server = start_metrics_server(settings, store, port=0)
    try:
        st = write_phantom_studies(tmp_path / "in", 1, seed=12)[0]
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
        got = _wait_for(server.url, lambda s: one(s, "dicomnode_studies", state="delivery_failed") == 1, 90)
        assert one(got, "dicomnode_studies", state="delivery_failed") == 1
        with store.session() as s:
            failed = s.scalar(select(func.count()).where(DeliveryAttempt.success.is_(False)))
        assert failed and one(got, "dicomnode_delivery_failures_total") == failed
        assert one(got, "dicomnode_time_to_notification_seconds_count") == 0  # nothing was delivered
        assert one(got, "dicomnode_inference_seconds_count") == 1
    finally:
        server.stop()
        store.dispose()


def test_queue_depth_is_the_redis_queue_length_with_a_broker(tmp_path: Path, celery_queue: str) -> None:
    import redis

    from tests.conftest import REDIS_URL

    settings = Settings(storage_dir=tmp_path, broker_url=REDIS_URL, queue=celery_queue)
    store = Store(settings.effective_database_url)
    r = redis.Redis.from_url(REDIS_URL)
    server = start_metrics_server(settings, store, port=0)
    try:
        r.rpush(celery_queue, "a", "b", "c")
        got = scrape(server.url)
        assert one(got, "dicomnode_queue_depth") == 3
        assert one(got, "dicomnode_metrics_source_up", source="queue") == 1
    finally:
        server.stop()
        store.dispose()
        r.close()

    # Redis unreachable: the queue gauge goes missing and says so; SQL metrics still come
    down = settings.with_overrides(broker_url="redis://127.0.0.1:1/0")
    store = Store(down.effective_database_url, run_migrations=False)
    server = start_metrics_server(down, store, port=0)
    try:
        got = scrape(server.url)
        assert one(got, "dicomnode_metrics_source_up", source="queue") == 0
        assert ("dicomnode_queue_depth", ()) not in got
        assert one(got, "dicomnode_instances_received_total") == 0
    finally:
        server.stop()
        store.dispose()


def _study_with_analysis(store: Store, n: int, finished_ago: timedelta) -> None:
    now = utcnow()
    done = now - finished_ago
    with store.session() as s:
        st = Study(study_uid=f"1.9.{n}", state="delivered", last_received_at=done - timedelta(seconds=8))
        s.add(st)
        s.flush()
        s.add(
            Instance(
                study_id=st.id,
                sop_instance_uid=f"1.9.{n}.1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                series_uid=f"1.9.{n}.0",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path="/x",
                size_bytes=1,
                sha256="0" * 64,
            )
        )
        s.add(
            Analysis(
                study_id=st.id,
                model_name="m",
                model_version="1",
                started_at=done - timedelta(seconds=2),
                preprocessed_at=done - timedelta(seconds=1.5),
                inferred_at=done - timedelta(seconds=1.0),
                delivered_at=done,
                finished_at=done,
            )
        )


def test_collector_counts_each_row_once_across_scrapes(db_url: str) -> None:
    store = Store(db_url)
    try:
        collector = SqlCollector(Settings(database_url=db_url), store, window_seconds=3600, settle_seconds=0)
        _study_with_analysis(store, 1, timedelta(minutes=5))
        _study_with_analysis(store, 2, timedelta(hours=3))  # older than the window: not seeded
        list(collector.collect())
        assert (collector.notification.count, collector.inference.count) == (1, 1)
        assert collector.notification.total == pytest.approx(8.0, abs=0.01)
        assert collector.inference.total == pytest.approx(0.5, abs=0.01)
        list(collector.collect())
        assert collector.notification.count == 1
        _study_with_analysis(store, 3, timedelta(seconds=0))
        families = {f.name: f for f in collector.collect()}
        assert collector.notification.count == 2
        assert families["dicomnode_instances_received"].samples[0].value == 3
        assert {s.labels["state"]: s.value for s in families["dicomnode_studies"].samples}["delivered"] == 3
    finally:
        store.dispose()


def test_id_count_catches_a_lower_id_committed_late(tmp_path: Path) -> None:
    """On PostgreSQL a transaction holding id 4 may commit after the one holding id 5; the
    watermark only moves past ids seen a settle period ago, so 4 is still counted."""
    store = Store(f"sqlite:///{tmp_path / 'ids.sqlite3'}")

    def add(*ids: int) -> None:
        with store.session() as s:
            s.add_all(Study(id=i, study_uid=f"1.8.{i}") for i in ids)

    try:
        count = IdCount(Study.id, settle_seconds=60)
        add(1, 2, 3)
        with store.session() as s:
            assert count.value(s, now=0.0) == 3
        add(5)
        with store.session() as s:
            assert count.value(s, now=10.0) == 4
        add(4)  # the late commit
        with store.session() as s:
            assert count.value(s, now=20.0) == 5
            assert count.value(s, now=100.0) == 5  # watermark moved to 5 (seen at t=10)
        add(6)
        with store.session() as s:
            assert count.value(s, now=110.0) == 6
    finally:
        store.dispose()
