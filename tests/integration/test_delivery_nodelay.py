"""Delivery associations send each PDU at once: TCP_NODELAY on their socket, plain and TLS.

With Nagle's algorithm a C-STORE's last short PDU waits for the peer's delayed ACK (up to 40 ms
on Linux) before it leaves; bench/delivery.py measures what turning it off gains (docs/sizing.md).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom.association import Association

from dicomnode.config import Destination, parse_destinations
from dicomnode.delivery.pool import close_association
from dicomnode.delivery.sender import _associate
from tests.integration.test_delivery_pool import CALLING, CountingPACS
from tests.integration.test_receive_access import _self_signed


def _destination_and_pacs(tmp_path: Path, tls: bool) -> tuple[Destination, CountingPACS]:
    if not tls:
        pacs = CountingPACS(tmp_path / "pacs").start()
        return Destination("PACS", "127.0.0.1", pacs.port), pacs
    cert, key = _self_signed(tmp_path, "server", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    pacs = CountingPACS(tmp_path / "pacs", ssl_context=server).start()
    (dest,) = parse_destinations(f"PACS@127.0.0.1:{pacs.port}?ca={cert}&name=localhost")
    return dest, pacs


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_delivery_association_s_socket_has_nagle_off(tmp_path: Path, tls: bool) -> None:
    dest, pacs = _destination_and_pacs(tmp_path, tls)
    try:
        assoc = _associate(
            dest, CALLING, [str(SecondaryCaptureImageStorage)], timeout=5, connect_timeout=5, deadline=10
        )
        assert isinstance(assoc, Association), assoc
        try:
            sock = assoc.dul.socket.socket  # type: ignore[union-attr]
            assert sock is not None and isinstance(sock, ssl.SSLSocket) is tls
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            close_association(assoc)
    finally:
        pacs.stop()
