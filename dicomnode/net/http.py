"""An HTTP service on a port of its own, served by uvicorn on a thread of the node's process: the
STOW-RS service (:mod:`dicomnode.dicomweb`) and the web page (:mod:`dicomnode.web`).

The listening socket is bound before uvicorn starts, so a port in use is an ``OSError`` in the
caller (one line naming the setting) instead of a log line on a thread, and port 0 gets a free
port that :attr:`HttpServer.port` tells. Not imported by :mod:`dicomnode.net` itself: uvicorn is
loaded only by a node that serves HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

import uvicorn

__all__ = ["HttpServer", "bind"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (IPv6 when ``host`` is an IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """uvicorn serving ``app`` on its own daemon thread; ``what`` names it in errors.

    Over ``limit_concurrency`` requests at once are answered 503. Access logging is off: request
    paths hold Study Instance UIDs, and the apps log what happened as events of their own."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        what: str,
        thread_name: str,
        limit_concurrency: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self.what = what
        self._sock = bind(host, port)
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the node configures logging; uvicorn's records go through it
            access_log=False,
            server_header=False,
            limit_concurrency=limit_concurrency,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
        )
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=thread_name, daemon=True
        )

    @property
    def host(self) -> str:
        """The address it is bound to."""
        return str(self._sock.getsockname()[0])

    @property
    def port(self) -> int:
        """The port it listens on (the real one when asked for 0)."""
        return int(self._sock.getsockname()[1])

    def start(self, timeout: float = 15.0) -> Self:
        """Serve on the thread; return once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"{self.what} on {self.host}:{self.port} did not start: see the log above")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in progress finish for up to ``timeout`` seconds.

        Idle keep-alive connections are not waited for: uvicorn would wait for each to close, and
        a TLS one closes only when its client sends close_notify, which many never do."""
        self._server.should_exit = True
        if self._thread.is_alive():
            deadline = time.monotonic() + timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                if not self._server.server_state.tasks:  # no request in progress: idle connections only
                    self._server.force_exit = True
                self._thread.join(0.05)
            self._server.force_exit = True
            self._thread.join(1.0)
        self._sock.close()
