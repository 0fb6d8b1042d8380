"""The web page served on a thread of its own (``dicomnode serve``, ``dicomnode web``) by
:class:`~dicomnode.net.http.HttpServer`: a port in use is an ``OSError`` in the caller
(``dicomnode serve`` turns it into one line naming ``DICOMNODE_WEB_PORT``), and port 0 gets a free
port whose number :attr:`WebServer.port` tells.
"""

from __future__ import annotations

import structlog

from dicomnode.config import Settings
from dicomnode.net.http import HttpServer
from dicomnode.store.db import Store

log = structlog.get_logger("dicomnode.web")

#: Seconds uvicorn may take to start serving on its thread.
START_TIMEOUT = 15.0
#: Seconds open requests get to finish when the page stops.
STOP_TIMEOUT = 5.0


class WebServer:
    """A running web page; :meth:`stop` ends it."""

    def __init__(
        self, settings: Settings, store: Store, *, port: int | None = None, own_store: bool = False
    ) -> None:
        from dicomnode.web.app import create_app

        self.store = store
        self._own_store = own_store
        self.app = create_app(settings, store)
        self._http = HttpServer(
            self.app,
            settings.web_host,
            settings.web_port if port is None else port,
            what="the web page",
            thread_name="dicomnode-web",
        )

    @property
    def host(self) -> str:
        """The address the page is bound to."""
        return self._http.host

    @property
    def port(self) -> int:
        """The port the page listens on (the real one when asked for 0)."""
        return self._http.port

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the page."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> WebServer:
        """Serve on a thread; returns once uvicorn accepts requests."""
        try:
            self._http.start(START_TIMEOUT)
        except OSError:
            self._close()
            raise
        log.info("web.started", url=self.url, login=bool(self.app.state.web.auth.login_required))
        return self

    def stop(self) -> None:
        """Stop serving (open requests get a few seconds), then the resend thread."""
        self._http.stop(STOP_TIMEOUT)
        self._close()

    def _close(self) -> None:
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


__all__ = ["WebServer", "start_web_server"]
