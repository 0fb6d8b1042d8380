"""Before ``dicomnode serve`` migrates and rescans: can it listen where the settings say?

A port in use, a host name that does not resolve or an address that is not this machine's would
otherwise surface as a traceback from ``bind()`` after the start-up work. :func:`check_listen`
binds a throw-away socket the way the listener and the ``/metrics`` server will (``SO_REUSEADDR``,
so a port left in TIME_WAIT by a previous run is not reported) and turns each failure into one
line naming the setting and the fix (:func:`listen_error`, also used when the real bind fails).
"""

from __future__ import annotations

import errno
import socket

from dicomnode.cli.errors import EXIT_USAGE, CommandError


def listen_error(
    exc: OSError, host: str, port: int, *, what: str, host_key: str, port_key: str
) -> CommandError | None:
    """The operator's message for a failed ``bind((host, port))``; None when ``exc`` is not a
    binding problem the settings can fix."""
    if isinstance(exc, socket.gaierror):
        return CommandError(
            f"{host_key}={host!r}: the {what} cannot listen there, the name does not resolve "
            f"({exc.strerror}); set {host_key} to an IP address of this machine, or 0.0.0.0 for all",
            EXIT_USAGE,
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return CommandError(
            f"{host_key}={host!r} is not an address of this machine, so the {what} cannot listen "
            f"there; set {host_key} to one of its addresses (`ip -brief address`), or 0.0.0.0 for all",
            EXIT_USAGE,
        )
    if exc.errno == errno.EADDRINUSE:
        return CommandError(
            f"{port_key}={port}: port {port} on {host} is already in use (another dicomnode serve or "
            f"another program: `ss -ltnp 'sport = :{port}'`); stop it, or set {port_key} to a free port",
            EXIT_USAGE,
        )
    if exc.errno == errno.EACCES:
        return CommandError(
            f"{port_key}={port}: the {what} may not listen on port {port} (ports below 1024 need root "
            f"or CAP_NET_BIND_SERVICE); use a port from 1024 up, e.g. 11112, or grant the capability",
            EXIT_USAGE,
        )
    return None


def check_listen(host: str, port: int, *, what: str, host_key: str, port_key: str) -> None:
    """Raise :class:`CommandError` if a listening socket cannot be bound to ``(host, port)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)  # a listener on the port with SO_REUSEADDR too shows only at listen()
        except OSError as exc:
            err = listen_error(exc, host, port, what=what, host_key=host_key, port_key=port_key)
            if err is None:
                raise CommandError(
                    f"{host_key}={host!r} {port_key}={port}: the {what} cannot listen there "
                    f"({exc.strerror or exc}); check both settings",
                    EXIT_USAGE,
                ) from None
            raise err from None


__all__ = ["check_listen", "listen_error"]
