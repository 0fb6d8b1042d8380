"""TLS for outgoing associations (PS3.15 B.1): the client context of one destination.

A destination written ``AE@host:port?tls`` (or with any of ``ca=``, ``cert=``, ``key=``, ``name=``;
:func:`dicomnode.config.parse_destinations`) is reached over TLS 1.2 or later with the listener's
AEAD-only TLS 1.2 suites (:data:`dicomnode.net.tls.TLS12_CIPHERS`). The peer's certificate is
always verified: against ``ca=`` (a PEM file of the CA, or the destination's self-signed
certificate) or, without one, the system's trust store; its name must match ``name=`` or else the
host. ``cert=`` and ``key=`` give the node's client certificate for a destination that asks for one.
"""

from __future__ import annotations

import ssl

from dicomnode.config import Destination
from dicomnode.net.tls import TLS12_CIPHERS

__all__ = ["client_tls_args"]


def client_tls_args(dest: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` (context, server name) for ``dest``; None for plain TCP.

    Raises :class:`OSError` or :class:`ssl.SSLError` when a PEM file cannot be read."""
    if not dest.tls:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(dest.tls_ca) if dest.tls_ca else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    if dest.tls_cert is not None:
        ctx.load_cert_chain(str(dest.tls_cert), str(dest.tls_key) if dest.tls_key else None)
    return ctx, dest.tls_server_name or dest.host
