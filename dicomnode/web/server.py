"""The web page served by uvicorn on a thread of its own (``dicomnode serve``, ``dicomnode web``).

The listening socket is bound here, before uvicorn starts, so a port in use is an ``OSError`` in
the caller (``dicomnode serve`` turns it into one line naming ``DICOMNODE_WEB_PORT``) and port 0
gets a free port whose number :attr:`WebServer.port` tells.
"""

from __future__ import annotations

import socket
import threading
import time

import structlog

from dicomnode.config import Settings
from dicomnode.store.db import Store

log = structlog.get_logger("dicomnode.web")

#: Seconds uvicorn may take to start serving on its thread.
START_TIMEOUT = 15.0


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
    sock.set_inheritable(True)
    return sock


class WebServer:
    """A running web page; :meth:`stop` ends it."""

    def __init__(
        self, settings: Settings, store: Store, *, port: int | None = None, own_store: bool = False
    ) -> None:
        import uvicorn

        from dicomnode.web.app import create_app

        self.store = store
        self._own_store = own_store
        self.app = create_app(settings, store)
        self._sock = bind(settings.web_host, settings.web_port if port is None else port)
        config = uvicorn.Config(
            self.app,
            log_config=None,  # our logging stays as configure_logging set it
            access_log=False,  # request paths hold Study UIDs; the actions are events instead
            lifespan="off",
            timeout_graceful_shutdown=5,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="dicomnode-web", daemon=True
        )

    @property
    def host(self) -> str:
        """The address the page is bound to."""
        return str(self._sock.getsockname()[0])

    @property
    def port(self) -> int:
        """The port the page listens on (the real one when asked for 0)."""
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the page."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> WebServer:
        """Serve on a thread; returns once uvicorn accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the web page did not start on {self.url}: see the log above")
            time.sleep(0.02)
        log.info("web.started", url=self.url, login=bool(self.app.state.web.auth.login_required))
        return self

    def stop(self) -> None:
        """Stop serving (open requests get a few seconds), then the resend thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._sock.close()
        self.app.state.web.close()
        if self._own_store:
            self.store.dispose()


def start_web_server(
    settings: Settings, store: Store, *, port: int | None = None, own_store: bool = False
) -> WebServer:
    """Serve the web page for ``store`` on ``settings.web_host`` and ``port`` (default
    ``settings.web_port``; 0 picks a free one) in a background thread; with ``own_store``,
    :meth:`WebServer.stop` disposes of ``store`` too."""
    return WebServer(settings, store, port=port, own_store=own_store).start()


__all__ = ["WebServer", "bind", "start_web_server"]
