"""The commands docker/compose.yml runs, as the processes it runs, without Docker.

``dicomnode migrate`` (one-shot) -> ``dicomnode serve`` (node: SCP, tracker, /metrics) and
``dicomnode worker`` (prefork Celery worker) on the real Redis and PostgreSQL -> ``dicomnode echo``
(the health check) -> ``dicomnode push`` of phantom studies -> SR + SC at the PACS ->
``dicomnode worklist`` (urgent first) -> SIGTERM stops both cleanly. Both logs are JSON a line and
carry no patient name or ID. Every command gets its settings from one TOML file (``--config``) and
none from the environment, as on a host without containers; the compose file's environment
variables are what the other Celery tests use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from dicomnode.config import Settings
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import REDIS_URL, REPO
from tests.support import LoggedProcess, echo_ok, free_port, wait_until, write_settings_toml

DICOMNODE = [sys.executable, "-m", "dicomnode"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DICOMNODE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _without_settings_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    return dict(env, PYTHONUNBUFFERED="1")


def _json_lines(text: str, after: str = "") -> list[dict[str, object]]:
    """Every log line after the line holding ``after`` (Celery's banner ends with its task list),
    parsed as JSON; Celery's task list and its "worker: Warm shutdown" (printed, not logged) aside."""
    lines = text.splitlines()
    if after:
        lines = lines[next(i for i, ln in enumerate(lines) if after in ln) + 1 :]
    events = []
    for ln in lines:
        if not ln.strip() or ln.startswith("  .") or ln.startswith("worker: Warm shutdown"):
            continue
        try:
            events.append(json.loads(ln))
        except json.JSONDecodeError:
            raise AssertionError(f"a log line that is not JSON: {ln!r}") from None
    return events


def test_compose_commands_take_studies_from_push_to_worklist(
    pg_url: str,  # first: its database is dropped only after the processes stop
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    celery_queue: str,
    pacs: Receiver,
    processes: Callable[..., LoggedProcess],
) -> None:
    port, metrics_port = free_port(), free_port()
    settings = make_settings(
        broker_url=REDIS_URL,
        queue=celery_queue,
        database_url=pg_url,
        port=port,
        metrics_port=metrics_port,
        log_format="json",
    )
    config = write_settings_toml(tmp_path / "dicomnode.toml", settings)
    env = _without_settings_env()
    cfg = ["--config", str(config)]

    migrated = _run([*cfg, "migrate"], env)
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision head" in migrated.stdout

    node = processes([*DICOMNODE, *cfg, "serve"], env, tmp_path / "node.log")
    worker = processes([*DICOMNODE, *cfg, "worker", "--concurrency", "1"], env, tmp_path / "worker.log")
    wait_until(lambda: node.alive() and echo_ok(port), 60, "the node to answer C-ECHO", poll=0.5)
    wait_until(lambda: worker.alive() and " ready." in worker.log(), 90, "the worker to be ready", poll=0.5)

    health = _run([*cfg, "echo", "--port", str(port), "--timeout", "5"], env)  # the compose health check
    assert health.returncode == 0, health.stdout + health.stderr

    studies = write_phantom_studies(tmp_path / "in", 3, seed=77, positive_fraction=0.5)
    sent = sum(len(s.paths) for s in studies)
    pushed = _run([*cfg, "push", str(tmp_path / "in"), "--port", str(port)], env)
    assert pushed.returncode == 0 and f"{sent}/{sent} stored" in pushed.stdout, pushed.stdout + pushed.stderr

    got = pacs.wait_for(2 * len(studies), timeout=120)
    assert len(got) == 2 * len(studies), [r.sop_class_uid for r in got]
    by_study: dict[str, set[str]] = {}
    for r in got:
        by_study.setdefault(r.study_uid, set()).add(r.sop_class_uid)
    assert by_study == {
        s.study_uid: {str(Comprehensive3DSRStorage), str(SecondaryCaptureImageStorage)} for s in studies
    }

    worklist = _run([*cfg, "worklist", "--format", "json"], env)
    assert worklist.returncode == 0, worklist.stderr
    rows = json.loads(worklist.stdout)
    assert {r["study_uid"] for r in rows} == {s.study_uid for s in studies}
    urgent = [r["priority"] == "urgent" for r in rows]
    assert any(urgent) and urgent == sorted(urgent, reverse=True), rows  # urgent studies first

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as rsp:
        metrics = rsp.read().decode()
    received = [ln for ln in metrics.splitlines() if ln.startswith("dicomnode_instances_received_total")]
    assert received and float(received[0].rsplit(" ", 1)[1]) == sent, received

    assert node.stop() == 0 and worker.stop() == 0  # SIGTERM: both drain and exit cleanly
    node_events = _json_lines(node.log())
    worker_events = _json_lines(worker.log(), after="[tasks]")
    assert {e.get("study_uid") for e in node_events if e["event"] == "study.complete"} == {
        s.study_uid for s in studies
    }
    assert sum(e["event"] == "study.analysed" for e in worker_events) == len(studies)
    logs = node.log() + worker.log() + pushed.stdout + pushed.stderr
    for s in studies:
        assert s.patient_name not in logs and s.patient_id not in logs
