"""Fixtures that start real servers: our node, a receiving PACS, Celery workers, PostgreSQL DBs.

Nothing here is mocked: associations are real pynetdicom associations on loopback, the queue is
the real Redis at 127.0.0.1:6379 and the database the real PostgreSQL at 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import structlog.testing

from dicomnode.config import Destination, Settings
from dicomnode.logconfig import configure_logging
from dicomnode.node import Node
from dicomnode.testing.pacs import Receiver
from tests.support import LoggedProcess
from worker.runners import make_runner

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("DICOMNODE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DICOMNODE_TEST_REDIS", "redis://127.0.0.1:6379/0")

configure_logging("info", "console")

#: Fixtures that start a subprocess: a test using one is marked ``process``.
_PROCESS_FIXTURES = frozenset({"processes", "celery_worker_factory", "node_processes", "dciodvfy_errors"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by where a test lives and what it starts, so the fast tier cannot miss one:
    everything under tests/integration is ``integration``; a test using a process fixture is
    ``process``."""
    integration = REPO / "tests" / "integration"
    for item in items:
        if integration in item.path.parents:
            item.add_marker(pytest.mark.integration)
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.process)


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, trained once per test session by the training package on phantoms."""
    from training.demo import ensure_demo_model

    cache = os.environ.get("DICOMNODE_TEST_MODEL")
    if cache and Path(cache).is_file():
        return Path(cache)
    return ensure_demo_model(tmp_path_factory.mktemp("model") / "pneumonia-demo.onnx")


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The structlog events the test's code logs (``event`` plus its fields)."""
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Receiver]:
    """A pynetdicom Storage SCP acting as the hospital PACS that receives our results."""
    with Receiver(tmp_path / "pacs", ae_title="TESTPACS") as r:
        yield r


@pytest.fixture
def make_settings(tmp_path: Path, model_path: Path, pacs: Receiver) -> Callable[..., Settings]:
    """Settings for a node on a free loopback port delivering to ``pacs``."""

    def make(**changes: object) -> Settings:
        base = Settings(
            ae_title="DICOMNODE",
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),),
            quiet_seconds=0.5,
            model=model_path,
            delivery_attempts=3,
            delivery_backoff_seconds=0.2,
        )
        return base.with_overrides(**changes) if changes else base

    return make


@pytest.fixture
def node_factory() -> Iterator[Callable[[Settings], Node]]:
    """Start nodes; every node started is stopped at teardown."""
    nodes: list[Node] = []

    def start(settings: Settings) -> Node:
        n = Node(settings, make_runner).start()
        nodes.append(n)
        return n

    yield start
    for n in nodes:
        n.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the real server, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"dicomnode_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database the node supports in turn: a SQLite file, then a fresh database on the real
    PostgreSQL server (:func:`pg_url`)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


def settings_env(s: Settings) -> dict[str, str]:
    """This process's environment with the DICOMNODE_* variables that give a worker ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update(s.to_env(), DICOMNODE_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
    return env


class CeleryWorker(LoggedProcess):
    """A real ``celery worker`` subprocess consuming our queue on the real Redis."""

    def __init__(self, settings: Settings, log_path: Path, name: str) -> None:
        argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool", "solo"]
        argv += ["--concurrency", "1", "-Q", settings.queue, "--hostname", f"{name}@%h", "--loglevel", "INFO"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        super().__init__(argv, settings_env(settings), log_path, cwd=REPO)
        self.wait_ready(lambda: b"ready." in log_path.read_bytes(), 60, "celery worker")


@pytest.fixture
def celery_queue() -> Iterator[str]:
    """A queue name of our own on the shared Redis, purged afterwards (with the lists kombu keeps
    for its priority steps)."""
    import redis

    from dicomnode.ops.metrics import redis_queue_lists

    q = f"dicomnode-test-{uuid.uuid4().hex[:10]}"
    yield q
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(*redis_queue_lists(q))
    r.close()


@pytest.fixture
def celery_worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], CeleryWorker]]:
    workers: list[CeleryWorker] = []

    def start(settings: Settings) -> CeleryWorker:
        w = CeleryWorker(
            settings, tmp_path / f"worker{len(workers)}.log", f"w{len(workers)}-{uuid.uuid4().hex[:6]}"
        )
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop(grace=20)


@pytest.fixture
def dciodvfy_errors(tmp_path: Path) -> Callable[[pydicom.Dataset | Path], list[str]]:
    """dciodvfy's lines starting with "Error" for a Part 10 file, or for a dataset written as one."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")

    def errors(ds: pydicom.Dataset | Path) -> list[str]:
        if isinstance(ds, Path):
            path = ds
        else:
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
        out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return errors


def need_tool(name: str) -> str:
    """Path of an external peer tool; fails (not skips) in CI, where the test command installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: the test command installs it (apt-get)")
        pytest.skip(f"{name} not installed")
    return path


@pytest.fixture
def processes() -> Iterator[Callable[..., LoggedProcess]]:
    """Start subprocesses in the repository (``start(argv, env, log_path)``); all stopped at teardown."""
    started: list[LoggedProcess] = []

    def start(argv: list[str], env: dict[str, str], log_path: Path) -> LoggedProcess:
        p = LoggedProcess(argv, env, log_path, cwd=REPO)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop()
