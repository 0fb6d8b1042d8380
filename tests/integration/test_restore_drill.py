"""Restore drill: back up a running node's database and storage with the commands of
docs/operations.md, lose both, restore them with the documented commands, and start the node again.

A real ``dicomnode serve`` (embedded analysis, the tiny model) receives and analyses two studies
and delivers their results to a test PACS. Then the ``backup-*`` block of docs/operations.md runs
in bash exactly as printed there, the storage folder and the database are destroyed, the
``restore-*`` block runs as printed, and a new ``dicomnode serve`` starts on the restored state.
It must answer C-ECHO, analyse and deliver a new study, and ``dicomnode audit`` (the documented
``verify`` commands, then the same as JSON) must list the earlier studies with their results: the
audit trail is whole. Once with SQLite (node stopped for the backup, as the page says) and once
with PostgreSQL (dumped while the node runs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import Comprehensive3DSRStorage

from dicomnode.config import Destination, Settings
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import PhantomStudy, write_phantom_studies
from tests.conftest import PG_ADMIN_URL, REPO, settings_env
from tests.support import LoggedProcess, echo_ok, free_port, wait_until
from tests.tiny_model import write_tiny_model

OPERATIONS = REPO / "docs" / "operations.md"
DICOMNODE = [sys.executable, "-m", "dicomnode"]


def drill_block(name: str) -> str:
    """The fenced shell block after ``<!-- drill: NAME ...-->`` in docs/operations.md, verbatim."""
    text = OPERATIONS.read_text()
    m = re.search(
        rf"<!-- drill: {re.escape(name)}\b[^>]*-->\n```sh\n(.*?)^```", text, re.DOTALL | re.MULTILINE
    )
    assert m, f"docs/operations.md has no drill block {name!r}"
    return m.group(1)


def run_block(name: str, env: dict[str, str]) -> None:
    """Run a documented block in bash (stop at the first failing command), as an operator would."""
    script = drill_block(name)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"docs/operations.md block {name} failed:\n{script}\n{done.stderr}"


def run_dicomnode(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([*DICOMNODE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"dicomnode {shlex.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def audit_json(what: str, env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    """The rows of ``dicomnode audit WHAT --format json``."""
    args = ["audit", what, "--since", "30d", "--limit", "0", "--format", "json", *extra]
    doc = json.loads(run_dicomnode(args, env))
    return doc if isinstance(doc, list) else next(v for v in doc.values() if isinstance(v, list))


def audit_rows(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``dicomnode audit --format json``: study UID -> its row."""
    return {r["study_uid"]: r for r in audit_json("studies", env)}


def delivery_attempts(env: dict[str, str], studies: list[PhantomStudy]) -> list[tuple[Any, ...]]:
    """Every recorded C-STORE attempt of the results of ``studies`` (``audit deliveries --all``)."""
    uids = {s.study_uid for s in studies}
    rows = audit_json("deliveries", env, "--all")
    keys = ("attempted_at", "study_uid", "destination", "attempt", "success", "status")
    return sorted(tuple(r[k] for k in keys) for r in rows if r["study_uid"] in uids)


class Node:
    """``dicomnode serve`` in its own process, started and stopped like the systemd unit does."""

    def __init__(
        self, start: Callable[..., LoggedProcess], env: dict[str, str], port: int, log: Path
    ) -> None:
        self.proc = start([*DICOMNODE, "serve"], env, log)
        self.proc.wait_ready(lambda: echo_ok(port), 60, "dicomnode serve")

    def stop(self) -> None:
        assert self.proc.stop(grace=30) == 0, self.proc.log()[-3000:]


def push(studies_dir: Path, port: int, env: dict[str, str]) -> None:
    out = run_dicomnode(["push", "--port", str(port), str(studies_dir)], env)
    assert re.search(r"(\d+)/\1 stored", out), out


def delivered(pacs: Receiver, studies: list[PhantomStudy]) -> Callable[[], bool]:
    def check() -> bool:
        srs = {r.study_uid for r in list(pacs.received) if r.sop_class_uid == str(Comprehensive3DSRStorage)}
        return all(s.study_uid in srs for s in studies)

    return check


def _reset_pg_database(url: str) -> None:
    """The database server lost the database: drop it and create it empty under the same name."""
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_backup_wipe_restore_and_the_node_resumes_with_its_audit_trail(
    db: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    pacs: Receiver,
    processes: Callable[..., LoggedProcess],
) -> None:
    tool = "sqlite3" if db == "sqlite" else "pg_restore"
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: docs/operations.md's {db} blocks need it")
    database_url = "" if db == "sqlite" else str(request.getfixturevalue("pg_url"))
    storage, backup = tmp_path / "srv" / "dicomnode", tmp_path / "backup" / "20261205T0300"
    port = free_port()
    settings = Settings(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=port,
        storage_dir=storage,
        database_url=database_url,
        destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),),
        quiet_seconds=0.5,
        model=write_tiny_model(tmp_path / "models" / "tiny.onnx"),
        metrics_port=0,
        delivery_attempts=3,
        delivery_backoff_seconds=0.2,
    )
    env = settings_env(settings)
    # the variables docs/operations.md's host blocks use
    shell_env = {
        "PATH": os.environ["PATH"],
        "STORAGE": str(storage),
        "BACKUP": str(backup),
        "PGURL": database_url.replace("postgresql+psycopg://", "postgresql://"),
    }

    # 1. the node receives and analyses two studies
    node = Node(processes, env, port, tmp_path / "node-before.log")
    before = write_phantom_studies(tmp_path / "before", 2, seed=81, size=128)
    push(tmp_path / "before", port, env)
    wait_until(delivered(pacs, before), 90, "results of the first two studies at the PACS")
    wait_until(
        lambda: all(audit_rows(env).get(s.study_uid, {}).get("state") == "delivered" for s in before),
        30,
        "both studies recorded as delivered",
    )
    trail_before = audit_rows(env)
    attempts_before = delivery_attempts(env, before)
    assert len(attempts_before) >= 2  # one successful C-STORE association per study at least

    # 2. back up as documented: SQLite with the node stopped, PostgreSQL while it runs
    if db == "sqlite":
        node.stop()
        run_block("backup-sqlite", shell_env)
    else:
        run_block("backup-postgresql", shell_env)
        node.stop()

    # 3. disaster: the storage folder and the database are gone
    shutil.rmtree(storage)
    if db == "postgresql":
        _reset_pg_database(database_url)
    assert not storage.exists()

    # 4. restore as documented, start again
    run_block("restore-sqlite" if db == "sqlite" else "restore-postgresql", shell_env)
    node = Node(processes, env, port, tmp_path / "node-after.log")

    # 5. the documented checks: C-ECHO, the audit of the earlier studies, the start event
    for line in drill_block("verify").splitlines():
        argv = shlex.split(line.split("#", 1)[0])
        assert argv[0] == "dicomnode", line
        args = [str(port) if a == "11112" else a for a in argv[1:]]
        out = run_dicomnode(args, env)
        if args[0] == "echo":
            assert "success" in out.lower(), out
    restored = audit_rows(env)
    for s in before:
        row, was = restored[s.study_uid], trail_before[s.study_uid]
        assert row["state"] == "delivered", row
        for key in ("score", "model_version", "priority", "calling_ae", "first_received_at"):
            assert row[key] == was[key], (key, row, was)
    assert delivery_attempts(env, before) == attempts_before

    # 6. it works: a new study is received, analysed and delivered
    after = write_phantom_studies(tmp_path / "after", 1, seed=82, size=128)
    push(tmp_path / "after", port, env)
    wait_until(delivered(pacs, after), 90, "results of the study sent after the restore")
    wait_until(
        lambda: audit_rows(env).get(after[0].study_uid, {}).get("state") == "delivered",
        30,
        "the new study recorded as delivered",
    )
    assert {s.study_uid for s in before + after} <= set(audit_rows(env))
    node.stop()
