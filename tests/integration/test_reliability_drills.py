"""Drills of issue 14 (items 1-4): no study stranded, no result lost.

Each drill breaks something real while the node runs (PostgreSQL refusing connections, a Redis
server of the test's own stopped, no model file, a destination that drops SYNs, a PACS that is
down for longer than the old attempt budget) and checks that the result arrives without a restart
or a manual step. Timings are printed (``-s``) for docs/reliability.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Study, StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import CeleryWorker
from tests.integration.test_receive_db_outage import _set_connections
from tests.support import LoggedProcess, free_port, wait_until

REPO = Path(__file__).resolve().parents[2]

#: Reconciler settings of the drills: a pass every half second, a study stranded after 2 s.
FAST_RECONCILE = dict(reconcile_interval_seconds=0.5, reconcile_after_seconds=2.0)


def _push_study(tmp_path: Path, node_port: int, seed: int, name: str = "in") -> str:
    study = write_phantom_studies(tmp_path / f"{name}{seed}", 1, seed=seed, positive_fraction=1.0)[0]
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node_port))
    return study.study_uid


def _events(store: Store, kind: str) -> list[Event]:
    with store.session() as s:
        return list(s.scalars(select(Event).where(Event.kind == kind)))


# --- 1. outages across the end of the quiet period -------------------------------------------


def test_database_outage_across_the_quiet_period_end_delivers_without_restart(
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    # the drill is the quiet period's end: completion on release is off (DICOMNODE_RELEASE_GRACE_SECONDS)
    settings = make_settings(database_url=pg_url, quiet_seconds=1.5, release_grace_seconds=0, **FAST_RECONCILE)
    node = node_factory(settings)
    t0 = time.monotonic()
    uid = _push_study(tmp_path, node.port, seed=41)
    assert node.flush_records()
    _set_connections(pg_url, allowed=False)  # before the quiet period ends
    try:
        time.sleep(4.0)  # the quiet period ends while the database refuses every connection
    finally:
        _set_connections(pg_url, allowed=True)
    back = time.monotonic()
    got = pacs.wait_for(2, timeout=60)
    assert {r.study_uid for r in got} == {uid}
    print(
        f"\nDRILL db-outage: outage 4.0 s, result {time.monotonic() - back:.1f} s after the database came back "
        f"({time.monotonic() - t0:.1f} s after the push)"
    )
    store = node.store
    assert store is not None
    wait_until(lambda: study_state(store, uid) is StudyState.DELIVERED, 30, "DELIVERED")


class RedisServer:
    """A redis-server of the test's own on a free port (the shared one at 6379 stays up)."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.proc: LoggedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir)]  # fmt: skip
        self.proc = LoggedProcess(argv, dict(os.environ), self.dir / "redis.log", cwd=self.dir, append=True)
        self.proc.wait_ready(lambda: b"Ready to accept" in (self.dir / "redis.log").read_bytes(), 20, "redis")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=5)
            self.proc = None
            (self.dir / "redis.log").write_bytes(b"")  # the next start waits for its own banner


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path).start()
    yield r
    r.stop()


def test_redis_outage_across_the_quiet_period_end_delivers_without_restart(
    pg_url: str,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    celery_worker_factory: Callable[[Settings], CeleryWorker],
    own_redis: RedisServer,
    pacs: Receiver,
) -> None:
    quiet = 1.5
    settings = make_settings(
        broker_url=own_redis.url, queue="drill", database_url=pg_url, quiet_seconds=quiet,
        release_grace_seconds=0,  # the drill is the quiet period's end, not completion on release
        publish_timeout_seconds=2.0, **FAST_RECONCILE,
    )  # fmt: skip
    from dicomnode.store.db import migrate

    migrate(settings.effective_database_url)
    celery_worker_factory(settings)
    node = node_factory(settings)
    store = node.store
    assert store is not None
    first = _push_study(tmp_path, node.port, seed=42)
    assert node.flush_records()
    own_redis.stop()  # before the quiet period ends: publishing the study fails
    t_down = time.monotonic()
    second = _push_study(tmp_path, node.port, seed=49)  # the SCP needs no broker
    # the tracker is not held by the broker: both studies are handed on (and wait, complete)
    wait_until(
        lambda: all(study_state(store, u) is StudyState.COMPLETE for u in (first, second)),
        quiet + 8,
        "both studies complete while Redis is down",
    )
    time.sleep(max(0.0, 10.0 - (time.monotonic() - t_down)))
    assert {study_state(store, u) for u in (first, second)} == {StudyState.COMPLETE}
    own_redis.start()  # empty: anything published before the outage is gone too
    back = time.monotonic()
    got = pacs.wait_for(4, timeout=90)
    took = time.monotonic() - back
    assert sorted(r.study_uid for r in got) == sorted([first, second] * 2)
    print(f"\nDRILL redis-outage: outage 10 s, both results {took:.1f} s after Redis came back")
    for u in (first, second):
        wait_until(lambda u=u: study_state(store, u) is StudyState.DELIVERED, 30, "DELIVERED")  # type: ignore[misc]
    time.sleep(1.0)  # a duplicate would arrive now
    assert len(pacs.received) == 4
    assert {e.study_uid for e in _events(store, "study.redispatched")} == {first, second}


# --- 3. the model -----------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_model_and_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "absent.onnx"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update(
        DICOMNODE_HOST="127.0.0.1", DICOMNODE_PORT=str(free_port()), DICOMNODE_STORAGE_DIR=str(tmp_path / "node"),
        DICOMNODE_MODEL=str(missing), DICOMNODE_METRICS_PORT="0", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    t0 = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dicomnode", "serve"], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("dicomnode serve started (and kept running) without a model")
    print(
        f"\nDRILL model-missing: serve refused in {time.monotonic() - t0:.1f} s: {done.stderr.strip()[-300:]}"
    )
    assert done.returncode == 2, done.stderr
    assert str(missing) in done.stderr
    assert "dicomnode train demo-model" in done.stderr and "DICOMNODE_MODEL" in done.stderr


def test_a_study_held_for_lack_of_a_model_is_analysed_once_the_model_appears(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    model_path: Path,
    pacs: Receiver,
) -> None:
    later = tmp_path / "models" / "later.onnx"  # not there yet (a node started without `serve`'s check)
    node = node_factory(make_settings(model=later, **FAST_RECONCILE))
    uid = _push_study(tmp_path, node.port, seed=43)
    assert node.store is not None

    def held() -> bool:
        with node.store.session() as s:  # type: ignore[union-attr]
            reason = s.scalar(select(Study.state_reason).where(Study.study_uid == uid))
        return reason is not None and reason.startswith("waiting for a model")

    wait_until(held, 30, "the study held with its reason")
    assert study_state(node.store, uid) is StudyState.COMPLETE
    later.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, later)
    t = time.monotonic()
    got = pacs.wait_for(2, timeout=30)
    assert {r.study_uid for r in got} == {uid}
    print(f"\nDRILL model-appears: result {time.monotonic() - t:.1f} s after the model file appeared")


# --- 4. destinations that do not answer -------------------------------------------------------


class SynDrop:
    """A loopback address that drops SYNs: a listening socket whose accept queue is full and never
    accepted from, so the kernel drops every new SYN (as a firewall that DROPs would)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = int(self.server.getsockname()[1])
        self.fillers = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(1.0)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise AssertionError("the backlog-full listener accepted a connection: SYNs are not dropped here")
        except TimeoutError:
            pass
        finally:
            probe.close()

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.server.close()


@pytest.fixture
def syn_drop() -> Iterator[SynDrop]:
    s = SynDrop()
    yield s
    s.close()


def test_a_syn_dropping_destination_does_not_delay_the_next_study(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    syn_drop: SynDrop,
) -> None:
    quiet = 1.0
    settings = make_settings(
        destinations=(Destination("BLACKHOLE", "127.0.0.1", syn_drop.port),), quiet_seconds=quiet,
        delivery_attempts=0, delivery_connect_timeout_seconds=30.0,
    )  # fmt: skip
    node = node_factory(settings)
    first = _push_study(tmp_path, node.port, seed=44)
    store = node.store
    assert store is not None
    wait_until(lambda: (a := latest_analysis(store, first)) is not None and a.finished_at is not None,
               30, "the first study analysed")  # fmt: skip
    time.sleep(1.0)  # its delivery is now hanging on the connect
    second = _push_study(tmp_path, node.port, seed=45)

    def analysed() -> bool:
        a = latest_analysis(store, second)
        return a is not None and a.finished_at is not None

    wait_until(analysed, quiet + 30, "the second study analysed")
    with store.session() as s:
        last = s.scalar(select(Study.last_received_at).where(Study.study_uid == second))
        finished = s.scalar(
            select(Analysis.finished_at)
            .join(Study)
            .where(Study.study_uid == second)
            .order_by(Analysis.id.desc())
        )
    assert last is not None and finished is not None
    took = (finished - last).total_seconds()
    print(f"\nDRILL syn-drop: second study analysed {took:.2f} s after its last instance (quiet {quiet} s)")
    assert took <= quiet + 10


def test_sigterm_does_not_wait_for_a_delivery_hanging_on_a_syn_dropping_destination(
    tmp_path: Path, model_path: Path, syn_drop: SynDrop, processes: Callable[..., LoggedProcess]
) -> None:
    grace = 5.0
    port = free_port()
    storage = tmp_path / "node"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update(
        DICOMNODE_HOST="127.0.0.1", DICOMNODE_PORT=str(port), DICOMNODE_STORAGE_DIR=str(storage),
        DICOMNODE_MODEL=str(model_path), DICOMNODE_METRICS_PORT="0", DICOMNODE_QUIET_SECONDS="0.5",
        DICOMNODE_DESTINATIONS=f"BLACKHOLE@127.0.0.1:{syn_drop.port}",
        DICOMNODE_SHUTDOWN_GRACE_SECONDS=str(grace), DICOMNODE_DELIVERY_CONNECT_TIMEOUT_SECONDS="120",
        DICOMNODE_LOG_FORMAT="json", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    from tests.support import echo_ok

    node = processes([sys.executable, "-m", "dicomnode", "serve"], env, tmp_path / "node.log")
    node.wait_ready(lambda: echo_ok(port, timeout=1), 60, "node (C-ECHO)")
    _push_study(tmp_path, port, seed=46)

    def built() -> bool:
        try:
            with sqlite3.connect(storage / "dicomnode.sqlite3") as db:
                return (
                    db.execute("SELECT count(*) FROM analyses WHERE results_built_at IS NOT NULL").fetchone()[
                        0
                    ]
                    > 0
                )
        except sqlite3.Error:
            return False

    wait_until(built, 60, "results built (delivery starting)")
    time.sleep(1.5)  # the delivery is inside its connect to the SYN-dropping destination
    t = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    try:
        rc = node.proc.wait(grace + 10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node did not exit within {grace + 10} s of SIGTERM: {node.log()[-2000:]}")
    took = time.monotonic() - t
    print(f"\nDRILL sigterm: exited {took:.2f} s after SIGTERM with a delivery hanging (grace {grace} s)")
    assert rc == 0, node.log()[-2000:]
    assert took <= grace + 2


def test_pacs_down_longer_than_the_old_budget_then_back_gets_the_result_without_a_manual_step(
    tmp_path: Path, make_settings: Callable[..., Settings], node_factory: Callable[[Settings], Node]
) -> None:
    pacs_port = free_port()  # nothing listens: the PACS is down
    settings = make_settings(
        destinations=(Destination("MAINTPACS", "127.0.0.1", pacs_port),),
        delivery_attempts=0,  # the window decides (24 h by default)
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=600.0,  # without the C-ECHO watch the next try would be far off
        **FAST_RECONCILE,
    )
    node = node_factory(settings)
    uid = _push_study(tmp_path, node.port, seed=47)
    assert node.store is not None
    down_for = 12.0  # the old budget in these units: 3 attempts 0.2 s apart, spent in about 1 s
    wait_until(lambda: bool(_events(node.store, "destination.down")), 30, "the destination seen down")  # type: ignore[arg-type]
    time.sleep(down_for)
    assert study_state(node.store, uid) is StudyState.ANALYSED
    with Receiver(tmp_path / "pacs-back", ae_title="MAINTPACS", port=pacs_port) as pacs:
        back = time.monotonic()
        got = pacs.wait_for(2, timeout=30)
        took = time.monotonic() - back
    assert {r.study_uid for r in got} == {uid}
    print(f"\nDRILL pacs-maintenance: PACS down {down_for:.0f} s, result {took:.1f} s after it came back")
    assert took < 10, "the result should follow the destination's first C-ECHO, not the backoff"
    wait_until(lambda: study_state(node.store, uid) is StudyState.DELIVERED, 30, "DELIVERED")  # type: ignore[arg-type]
    ups = _events(node.store, "destination.up")
    assert ups and ups[0].detail and ups[0].detail.get("by") == "c-echo"


# --- 2. a study that kills its worker ---------------------------------------------------------


def test_a_study_started_three_times_without_finishing_fails_at_the_next_start_instead_of_looping(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    from dicomnode.store.records import start_analysis

    # stays receiving while the first node runs (no completion on release either)
    settings = make_settings(quiet_seconds=3600, release_grace_seconds=0)
    first = node_factory(settings)
    uid = _push_study(tmp_path, first.port, seed=48)
    assert first.flush_records()
    first.stop()
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        for _ in range(3):  # three analyses started and killed with their process (OOM, say)
            start_analysis(
                store, uid, model_name="m", model_version="v", queued_at=None, execution="inprocess"
            )
        node_factory(settings)  # the restart re-dispatches the analysing study
        wait_until(
            lambda: study_state(store, uid) is StudyState.FAILED, 30, "FAILED instead of a 4th analysis"
        )
        with store.session() as s:
            reason = s.scalar(select(Study.state_reason).where(Study.study_uid == uid))
        assert reason is not None
        assert reason.startswith("analysis started 3 times without finishing (worker killed?)")
        time.sleep(1.0)
        assert pacs.received == [], "a 4th analysis ran and delivered results"
    finally:
        store.dispose()
