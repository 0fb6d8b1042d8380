"""Flower against our Celery app, as docker/compose.yml runs it; the worker's log as it runs there.

Real Redis, real PostgreSQL, a worker started the way production starts one (``dicomnode worker``,
prefork pool, heartbeats on) and real Flower (``celery -A worker.app flower``). A phantom study goes
through the node; Flower's API must then list the worker on our queue and the study task that
succeeded, and its Prometheus endpoint must count that task; nothing it shows carries the patient's
name or ID.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import migrate
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import REDIS_URL, settings_env
from tests.support import LoggedProcess, free_port, wait_until

pytest.importorskip("flower", reason="flower is in the dev extra (make install)")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        body = rsp.read().decode()
    return json.loads(body) if rsp.headers.get_content_type() == "application/json" else body


def _reachable(url: str) -> bool:
    try:
        return _get(url) == "OK"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def test_flower_sees_our_worker_and_the_study_task(
    pg_url: str,  # first: its database is dropped only after the node and worker stop
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    celery_queue: str,
    pacs: Receiver,
    processes: Callable[..., LoggedProcess],
) -> None:
    settings = make_settings(broker_url=REDIS_URL, queue=celery_queue, database_url=pg_url)
    migrate(settings.effective_database_url)
    env = settings_env(settings)

    port = free_port()
    flower_env = dict(env, FLOWER_UNAUTHENTICATED_API="true")  # the REST API is closed by default
    base = f"http://127.0.0.1:{port}"
    flower = processes(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        flower_env,
        tmp_path / "flower.log",
    )
    wait_until(lambda: flower.alive() and _reachable(f"{base}/healthcheck"), 60, "flower's /healthcheck")

    hostname = f"flowertest-{uuid.uuid4().hex[:6]}@localhost"
    worker = processes(
        [sys.executable, "-m", "dicomnode", "worker", "--concurrency", "1", "--hostname", hostname],
        env,
        tmp_path / "worker.log",
    )

    def workers() -> dict[str, Any]:  # Flower's inspect broadcast: the workers that answer now
        return dict(_get(f"{base}/api/workers?refresh=1"))

    wait_until(lambda: worker.alive() and hostname in workers(), 90, "Flower to see the worker", poll=1)

    node = node_factory(settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=5, positive_fraction=1.0)[0]
    assert all(r.status == 0 for r in push_files(study.paths, "127.0.0.1", node.port))
    assert len(pacs.wait_for(2, timeout=90)) == 2, "the SR and SC did not reach the PACS"

    # the worker consumes our queue, and only it
    queues = [q["name"] for q in workers()[hostname]["active_queues"]]
    assert queues == [celery_queue]

    # the study task, from the events the worker sends
    def study_tasks() -> list[dict[str, Any]]:
        tasks = _get(f"{base}/api/tasks?taskname=dicomnode.analyse_study")
        return [t for t in tasks.values() if study.study_uid in str(t.get("args"))]

    wait_until(
        lambda: any(t["state"] == "SUCCESS" for t in study_tasks()), 30, "Flower to list the task as SUCCESS"
    )
    (task,) = study_tasks()
    assert task["worker"] == hostname
    # sent (by the node, when the study was queued), received and started (by the worker)
    assert None not in (task["sent"], task["received"], task["started"]), task
    # "sent" is stamped by the node's process, the others by the worker's: allow their clocks'
    # reading a few milliseconds apart (seen: sent 1.5 ms after received)
    assert task["sent"] <= task["received"] + 0.1 and task["received"] <= task["started"], task
    assert task["runtime"] > 0
    result = task["result"]
    assert "'state': 'analysed'" in result, result  # delivery is a task of its own

    def delivery_tasks() -> list[dict[str, Any]]:
        tasks = _get(f"{base}/api/tasks?taskname=dicomnode.deliver_results")
        return [t for t in tasks.values() if study.study_uid in str(t.get("args"))]

    wait_until(
        lambda: any("'state': 'delivered'" in str(t.get("result")) for t in delivery_tasks()),
        30,
        "Flower to list the delivery task as delivered",
    )

    # Flower's own Prometheus metrics count it
    metrics = _get(f"{base}/metrics")
    succeeded = [
        line
        for line in metrics.splitlines()
        if line.startswith("flower_events_total{")
        and 'task="dicomnode.analyse_study"' in line
        and 'type="task-succeeded"' in line
        and f'worker="{hostname}"' in line
    ]
    assert succeeded and float(succeeded[0].rsplit(" ", 1)[1]) == 1.0, succeeded

    # the production worker's own log (DICOMNODE_LOG_FORMAT=json): after Celery's banner, every
    # line one JSON object, Celery's lines and ours alike
    banner_end = worker.log().index("[tasks]")
    lines = [
        ln for ln in worker.log()[banner_end:].splitlines()[1:] if ln.strip() and not ln.startswith("  .")
    ]
    events = [json.loads(ln) for ln in lines]  # raises on a line that is not JSON
    assert any(e.get("logger") == "celery.apps.worker" and "ready" in e["event"] for e in events)
    assert any(e["event"] == "study.analysed" and e.get("study_uid") == study.study_uid for e in events)
    assert any(e.get("logger") == "celery.app.trace" and "succeeded" in e["event"] for e in events)

    # what Flower keeps and shows, and what the worker logs: UIDs, scores and states, no patient data
    shown = json.dumps(_get(f"{base}/api/tasks")) + flower.log() + metrics + worker.log()
    for name_or_id in (study.patient_name, study.patient_id):
        assert name_or_id and name_or_id not in shown
