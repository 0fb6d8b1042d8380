"""The listener's TLS context (PS3.15 B.1, TLS 1.2 or later as BCP 195 asks) and client certificates.

With a certificate the port speaks TLS only; with a CA as well, peers must present a certificate
the CA signed; with DICOMNODE_TLS_CLIENT_AES as well, each certificate (by its subject CN) may only
associate as the calling AE titles listed for it (:func:`client_ae_map`, :func:`certificate_cns`).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger("dicomnode.scp")

#: TLS 1.2 cipher suites the SCP accepts: forward secrecy (ECDHE) and authenticated encryption
#: (AES-GCM, ChaCha20-Poly1305) only, as BCP 195 (RFC 9325 section 4.2) recommends; the CBC suites
#: Python's default list still allows are refused. TLS 1.3 suites are all AEAD and unaffected.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


class TLSSettings(Protocol):
    """What the context is built from: :class:`dicomnode.config.Settings` has these fields."""

    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...
    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def acse_timeout_seconds(self) -> float: ...


class _ServerTLSContext(ssl.SSLContext):
    """A server context whose handshake gives up after ``handshake_timeout`` seconds.

    Each :class:`dicomnode.net.association.Association` calls :meth:`wrap_socket` on its own
    thread, first thing, on the blocking socket the accept loop handed it. Without a timeout a peer
    that connects and then stays silent (or stalls mid-handshake) would hold that thread and its
    socket for good, and none of the association's own timeouts apply before the handshake is done.
    A failed handshake is logged here and the socket closed; the association then just ends."""

    handshake_timeout: float = 30.0

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        sock.settimeout(self.handshake_timeout)
        try:
            tls = super().wrap_socket(sock, *args, **kwargs)
        except (OSError, ValueError) as exc:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
            log.warning(
                "tls.handshake_failed", peer=str(peer), error=type(exc).__name__, detail=str(exc)[:200]
            )
            sock.close()
            raise
        tls.settimeout(None)  # blocking again: the association sets its own timeouts next
        return tls


def server_tls_context(settings: TLSSettings) -> ssl.SSLContext | None:
    """The TLS context of the SCP (TLS 1.2+, AEAD suites only, PS3.15 BCP 195), or None without a
    certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = _ServerTLSContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.handshake_timeout = settings.acse_timeout_seconds
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ae_map(entries: Iterable[str]) -> Mapping[str, frozenset[str]]:
    """``CN:AE`` entries (DICOMNODE_TLS_CLIENT_AES, checked by :mod:`dicomnode.config`) as
    certificate subject CN -> the calling AE titles it may associate as."""
    out: dict[str, set[str]] = {}
    for entry in entries:
        cn, _, ae = entry.rpartition(":")
        out.setdefault(cn, set()).add(ae)
    return {cn: frozenset(aes) for cn, aes in out.items()}


def certificate_cns(sock: Any) -> tuple[str, ...]:
    """The subject common names (CN) of the certificate the peer of TLS socket ``sock`` presented
    and the CA verified; empty for a plain socket or no certificate."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert is not None else None
    if not cert:
        return ()
    return tuple(str(value) for rdn in cert.get("subject", ()) for name, value in rdn if name == "commonName")


__all__ = ["TLS12_CIPHERS", "TLSSettings", "certificate_cns", "client_ae_map", "server_tls_context"]
