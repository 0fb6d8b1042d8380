"""``dicomnode serve`` with ``DICOMNODE_WEB_PORT`` set serves the web page; ``dicomnode web`` serves
it alone against the node's database; a port in use or an open host without a token ends in one
line naming the setting, before any start-up work. Real processes, real HTTP on loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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
    env.update(DICOMNODE_METRICS_PORT="0", DICOMNODE_LOG_FORMAT="json")
    env.update({f"DICOMNODE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_serve_and_web_serve_the_page(tmp_path: Path, processes: Callable[..., LoggedProcess]) -> None:
    token = "serve-test-token-0123456789"
    port, web_port = free_port(), free_port()
    env = _env(
        tmp_path / "node",
        port=port,
        web_port=web_port,
        web_token=token,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
    )
    node = processes([*DICOMNODE, "serve"], env, tmp_path / "serve.log")
    wait_until(lambda: node.alive() and echo_ok(port, timeout=1), 90, "dicomnode serve to answer C-ECHO")
    base = f"http://127.0.0.1:{web_port}"
    assert _get(base + "/healthz") == (200, "ok")
    status, html = _get(base + "/health")  # sent on to the login form
    assert status == 200 and "<h1>Log in</h1>" in html
    status, html = _get(base + "/health", token)
    assert status == 200 and "<h1>Health</h1>" in html
    assert node.stop() == 0
    assert '"event": "web.started"' in node.log()

    # the page alone, on the database serve left behind
    alone = free_port()
    web = processes(
        [*DICOMNODE, "web", "--port", str(alone)],
        _env(tmp_path / "node", web_token=token),
        tmp_path / "web.log",
    )
    web.wait_ready(lambda: _get(f"http://127.0.0.1:{alone}/healthz")[0] == 200, 60, "dicomnode web")
    status, html = _get(f"http://127.0.0.1:{alone}/studies", token)
    assert status == 200 and "No studies." in html
    assert web.stop() == 0


def test_web_port_in_use_is_one_line_before_any_start_up_work(tmp_path: Path, busy_port: int) -> None:
    done = subprocess.run(
        [*DICOMNODE, "serve"],
        cwd=REPO,
        env=_env(tmp_path / "data", port=free_port(), web_port=busy_port),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    line = (done.stdout + done.stderr).strip()
    assert line.startswith(
        f"dicomnode serve: DICOMNODE_WEB_PORT={busy_port}: port {busy_port} on 127.0.0.1 is already in use"
    ), line
    assert "\n" not in line and not (tmp_path / "data" / "dicomnode.sqlite3").exists()


def test_serve_refuses_an_open_web_page_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [*DICOMNODE, "serve"],
        cwd=REPO,
        env=_env(tmp_path / "data", port=free_port(), web_port=free_port(), web_host="0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    line = (done.stdout + done.stderr).strip()
    assert line.startswith("dicomnode: configuration error: DICOMNODE_WEB_HOST='0.0.0.0' is not a loopback")
    assert "set DICOMNODE_WEB_TOKEN" in line and not (tmp_path / "data" / "dicomnode.sqlite3").exists()
