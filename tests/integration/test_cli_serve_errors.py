"""`dicomnode serve` refuses a set-up it cannot run in one line, before any start-up work (issue 18.3).

Real `dicomnode serve` processes: a port in use (DICOM or /metrics), a host name that does not
resolve, an address that is not this machine's, and a second node on a storage folder another
node holds. Each ends with exit status 2 and one line naming the cause and the fix, no traceback,
and without migrating: the refused node leaves no database behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support import LoggedProcess, echo_ok, free_port, wait_until
from tests.tiny_model import write_tiny_model

DICOMNODE = [sys.executable, "-m", "dicomnode"]


def _env(storage: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update(PYTHONUNBUFFERED="1", DICOMNODE_STORAGE_DIR=str(storage), DICOMNODE_HOST="127.0.0.1")
    env.update({f"DICOMNODE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DICOMNODE, "serve"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line the refused command printed (stdout and stderr together hold nothing else)."""
    text = (done.stdout + done.stderr).strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    return text


def _node_starts(storage: Path) -> int:
    """``node.started`` events in the folder's database."""
    from sqlalchemy import func, select

    from dicomnode.store.db import Store
    from dicomnode.store.models import Event

    store = Store(f"sqlite:///{storage / 'dicomnode.sqlite3'}", run_migrations=False)
    try:
        with store.session() as s:
            return int(s.scalar(select(func.count()).where(Event.kind == "node.started")) or 0)
    finally:
        store.dispose()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_dicom_port_in_use_is_one_line_before_any_start_up_work(tmp_path: Path, busy_port: int) -> None:
    done = _serve(_env(tmp_path / "data", port=busy_port, metrics_port=0))
    assert done.returncode == 2
    assert _error_line(done) == (
        f"dicomnode serve: DICOMNODE_PORT={busy_port}: port {busy_port} on 127.0.0.1 is already in use "
        f"(another dicomnode serve or another program: `ss -ltnp 'sport = :{busy_port}'`); stop it, or set "
        "DICOMNODE_PORT to a free port"
    )
    assert not (tmp_path / "data" / "dicomnode.sqlite3").exists()  # not migrated
    assert not (tmp_path / "data" / "instances").exists()  # not rescanned


def test_metrics_port_in_use_is_one_line(tmp_path: Path, busy_port: int) -> None:
    done = _serve(_env(tmp_path / "data", port=free_port(), metrics_port=busy_port))
    assert done.returncode == 2
    line = _error_line(done)
    assert line.startswith(
        f"dicomnode serve: DICOMNODE_METRICS_PORT={busy_port}: port {busy_port} on 127.0.0.1 is already in use"
    )
    assert "set DICOMNODE_METRICS_PORT to a free port" in line
    assert not (tmp_path / "data" / "dicomnode.sqlite3").exists()


@pytest.mark.parametrize(
    ("host", "needle"),
    [
        (
            "no-such-host.invalid",
            "DICOMNODE_HOST='no-such-host.invalid': the DICOM listener cannot listen there, the name does not resolve",
        ),
        ("192.0.2.7", "DICOMNODE_HOST='192.0.2.7' is not an address of this machine"),  # TEST-NET-1
    ],
)
def test_bad_host_is_one_line_naming_the_setting(tmp_path: Path, host: str, needle: str) -> None:
    done = _serve(_env(tmp_path / "data", host=host, port=free_port(), metrics_port=0))
    assert done.returncode == 2
    line = _error_line(done)
    assert line.startswith(f"dicomnode serve: {needle}")
    assert "or 0.0.0.0 for all" in line


def test_second_serve_on_the_same_storage_is_refused_naming_the_first(
    tmp_path: Path, processes: Callable[..., LoggedProcess]
) -> None:
    storage = tmp_path / "data"
    model = write_tiny_model(tmp_path / "tiny.onnx")
    port = free_port()
    first = processes(
        [*DICOMNODE, "serve"], _env(storage, port=port, metrics_port=0, model=model), tmp_path / "first.log"
    )
    wait_until(lambda: first.alive() and echo_ok(port), 60, "the first node to answer C-ECHO", poll=0.3)

    done = _serve(_env(storage, port=free_port(), metrics_port=0, model=model))
    assert done.returncode == 2
    assert _error_line(done) == (
        f"dicomnode serve: another dicomnode serve holds {storage} (pid {first.proc.pid}); stop it first, "
        "or give this node its own DICOMNODE_STORAGE_DIR"
    )
    assert _node_starts(storage) == 1  # the second never got as far as starting (migrate, rescan)
    assert echo_ok(port)  # the first node is untouched
    assert first.stop() == 0
    # once the first has stopped, the folder is free again
    again = processes(
        [*DICOMNODE, "serve"], _env(storage, port=port, metrics_port=0, model=model), tmp_path / "again.log"
    )
    wait_until(lambda: again.alive() and echo_ok(port), 60, "a node on the freed folder", poll=0.3)
