"""The STOW-RS service on a port of its own: :func:`~dicomnode.dicomweb.create_app` served by
:class:`~dicomnode.net.http.HttpServer`, started and stopped with the node."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette

from dicomnode.net.http import HttpServer

__all__ = ["StowServer"]


class StowServer(HttpServer):
    """The STOW-RS app on ``host``:``port``; binding happens here, so an address in use fails the
    node's start with OSError. Over ``limit_concurrency`` requests at once are answered 503."""

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
        super().__init__(
            app,
            host,
            port,
            what="the STOW-RS service",
            thread_name="dicomnode-stow",
            limit_concurrency=limit_concurrency,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )
