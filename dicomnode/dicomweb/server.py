"""The STOW-RS service on a port of its own: uvicorn serving :func:`~dicomnode.dicomweb.create_app`
on a thread of the node's process, started and stopped with the node."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

__all__ = ["StowServer"]


class StowServer:
    """uvicorn on its own thread. :meth:`start` binds the port first, so an address in use fails
    the node's start with OSError instead of a log line on a thread; over ``limit_concurrency``
    requests at once are answered 503."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        *,
        limit_concurrency: int = 10,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        self._config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,  # the node configures logging; uvicorn's records go through it
            access_log=False,  # stow.* events say what happened, without query strings
            server_header=False,
            limit_concurrency=limit_concurrency,
            ssl_certfile=str(tls_cert) if tls_cert else None,
            ssl_keyfile=str(tls_key) if tls_key else None,
        )
        self._server = uvicorn.Server(self._config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the real one when configured as 0)."""
        return int(self._socket.getsockname()[1]) if self._socket is not None else self._config.port

    def start(self, timeout: float = 10.0) -> StowServer:
        """Bind, serve on a daemon thread, return once uvicorn accepts connections."""
        host = self._config.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, self._config.port), family=family)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="dicomnode-stow", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"the STOW-RS service on {host}:{self.port} did not start: see the log above")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let requests in progress finish for up to ``timeout`` seconds.

        Idle keep-alive connections are not waited for: uvicorn would wait for each to close, and
        a TLS one closes only when its client sends close_notify, which many never do."""
        self._server.should_exit = True
        if self._thread is not None:
            deadline = time.monotonic() + timeout
            while self._thread.is_alive() and time.monotonic() < deadline:
                if not self._server.server_state.tasks:  # no request in progress: idle connections only
                    self._server.force_exit = True
                self._thread.join(0.05)
            self._server.force_exit = True
            self._thread.join(1.0)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
