"""The web worklist and status page on its own: `dicomnode web`.

`dicomnode serve` serves the page itself when DICOMNODE_WEB_PORT is set. This command serves
it against the configured database without a node: next to a Celery deployment on PostgreSQL, on
a machine other than the node's, or for a node that runs without it. The resend button delivers
from this process (it needs the results folder, DICOMNODE_STORAGE_DIR, and the destinations).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from dicomnode.cli.errors import EXIT_USAGE, CommandError
from dicomnode.cli.settings import settings
from dicomnode.config import Settings
from dicomnode.logconfig import configure_logging

if TYPE_CHECKING:
    from dicomnode.store.db import Store
    from dicomnode.web import WebServer

#: how ``dicomnode serve`` and ``dicomnode web`` name the page's settings in their errors
WEB_PAGE = dict(what="web page", host_key="DICOMNODE_WEB_HOST", port_key="DICOMNODE_WEB_PORT")
#: ``dicomnode web``'s port when DICOMNODE_WEB_PORT is 0 (off for ``serve``) and --port is not given
DEFAULT_PORT = 8088


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``web`` on the ``dicomnode`` subparsers."""
    sp = sub.add_parser(
        "web",
        help="serve the web worklist and status page against the configured database, without a node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--storage-dir")
    sp.add_argument("--host", help="address to listen on (default DICOMNODE_WEB_HOST, 127.0.0.1)")
    sp.add_argument(
        "--port",
        dest="web_port",
        type=int,
        help=f"port (default DICOMNODE_WEB_PORT, or {DEFAULT_PORT} when that is 0)",
    )
    sp.set_defaults(func=cmd_web)


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the page until SIGINT or SIGTERM."""
    from dicomnode.cli.database import open_existing_store

    s = settings(args)
    s = s.with_overrides(
        web_host=args.host or s.web_host,
        web_port=args.web_port if args.web_port is not None else (s.web_port or DEFAULT_PORT),
    )  # validated again: a host other than loopback needs DICOMNODE_WEB_TOKEN
    configure_logging(s.log_level, s.log_format)
    server = start_page(s, open_existing_store(s))
    print(f"dicomnode web: serving {server.url} (Ctrl-C stops)", file=sys.stderr)
    done = threading.Event()

    def _stop(signum: int, _: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not done.wait(1.0):
        pass
    server.stop()
    return 0


def start_page(s: Settings, store: Store) -> WebServer:
    """:func:`dicomnode.web.start_web_server` owning ``store``; a port in use or a wrong host is
    one line naming the setting (the store is disposed of then)."""
    from dicomnode.cli.listen_check import listen_error
    from dicomnode.web import start_web_server

    try:
        return start_web_server(s, store, own_store=True)
    except OSError as exc:
        store.dispose()
        err = listen_error(exc, s.web_host, s.web_port, **WEB_PAGE)
        raise (err or CommandError(f"the web page cannot start: {exc}", EXIT_USAGE)) from None


__all__ = ["DEFAULT_PORT", "WEB_PAGE", "add_parser", "cmd_web", "start_page"]
