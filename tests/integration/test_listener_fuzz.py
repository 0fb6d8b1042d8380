"""Mutated association byte streams against the node's own listener: it never falls over.

A real pynetdicom SCU stores one instance through a recording proxy; the bytes it sent (A-ASSOCIATE-
RQ, P-DATA with command and data set, A-RELEASE-RQ) are then replayed 300 times with seeded
mutations: bytes flipped, the stream cut short, PDU and PDV length fields rewritten, PDUs repeated.
Whatever each variant does, the node must answer C-ECHO afterwards, leave no half-received file
behind, and let every connection go.
"""

from __future__ import annotations

import collections
import random
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import structlog
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

from dicomnode.config import Settings
from dicomnode.node import Node
from dicomnode.testing.phantoms import make_phantom
from tests.support import echo_ok, wait_until

VARIANTS = 300


def _record_client_bytes(node_port: int, send: Callable[[int], None]) -> bytes:
    """Run ``send(proxy_port)`` through a one-connection proxy to the node; return what the client sent."""
    listener = socket.create_server(("127.0.0.1", 0))
    proxy_port = listener.getsockname()[1]
    sent = bytearray()

    def pump(src: socket.socket, dst: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", node_port))
        threads = [
            threading.Thread(target=pump, args=(client, upstream, sent)),
            threading.Thread(target=pump, args=(upstream, client, None)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

    server = threading.Thread(target=serve)
    server.start()
    send(proxy_port)
    server.join(30)
    listener.close()
    return bytes(sent)


def _pdus(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 6 <= len(stream):
        (length,) = struct.unpack(">L", stream[pos + 2 : pos + 6])
        out.append(stream[pos : pos + 6 + length])
        pos += 6 + length
    return out


def _mutate(pdus: list[bytes], rng: random.Random) -> bytes:
    pdus = list(pdus)
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes anywhere
        raw = bytearray(b"".join(pdus))
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return bytes(raw)
    if kind == 1:  # cut the stream short
        raw = b"".join(pdus)
        return raw[: rng.randrange(len(raw))]
    if kind == 2:  # rewrite one PDU's length
        i = rng.randrange(len(pdus))
        pdu = bytearray(pdus[i])
        pdu[2:6] = struct.pack(">L", rng.choice([0, 1, 5, len(pdu), 0xFFFFFFFF, rng.randrange(1 << 20)]))
        pdus[i] = bytes(pdu)
        return b"".join(pdus)
    if kind == 3:  # rewrite a PDV item length inside a P-DATA-TF
        data = [i for i, p in enumerate(pdus) if p[0] == 0x04]
        i = rng.choice(data)
        pdu = bytearray(pdus[i])
        pdu[6:10] = struct.pack(">L", rng.choice([0, 1, 2, len(pdu), 0x7FFFFFFF, rng.randrange(1 << 16)]))
        pdus[i] = bytes(pdu)
        return b"".join(pdus)
    # repeat or drop whole PDUs (a second A-ASSOCIATE-RQ, data without a command, ...)
    i = rng.randrange(len(pdus))
    if rng.random() < 0.5:
        pdus.insert(i, pdus[rng.randrange(len(pdus))])
    else:
        del pdus[i]
    return b"".join(pdus)


@pytest.fixture
def node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> Node:
    return node_factory(
        Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            quiet_seconds=3600,
            acse_timeout_seconds=1,
            dimse_timeout_seconds=1,
            network_timeout_seconds=1,
            max_associations=4,
        )
    )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the garbled UIDs: expected here
def test_mutated_streams_never_take_the_node_down(node: Node) -> None:
    with structlog.testing.capture_logs() as logs:
        _fuzz(node)
    events = collections.Counter(e["event"] for e in logs)
    print(dict(events))  # with -s: how the variants were handled
    # every variant was handled by a named rule, none by the catch-all for our own bugs
    assert not [e for e in logs if e.get("reason") == "internal error"], [
        e for e in logs if e.get("reason") == "internal error"
    ][:3]
    assert events["association.failed"] + events["connection.dropped"] > VARIANTS / 4, events


def _fuzz(node: Node) -> None:
    ds = make_phantom(np.random.default_rng(8), True, size=64)

    def store_once(port: int) -> None:
        ae = AE(ae_title="FUZZER")
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()

    pdus = _pdus(_record_client_bytes(node.port, store_once))
    assert [p[0] for p in pdus][:2] == [0x01, 0x04] and pdus[-1][0] == 0x05, "unexpected recording"

    rng = random.Random(20261125)
    for _ in range(VARIANTS):
        payload = _mutate(pdus, rng)
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)  # then read until the node closes or goes quiet
                s.settimeout(3)
                while s.recv(65536):
                    pass
            except OSError:
                pass

    assert echo_ok(node.port), "the node stopped answering after the mutated streams"
    assert node._server is not None
    wait_until(lambda: len(node._server.active_associations) == 0, 15, "every connection to be let go")
    wait_until(lambda: list(node.incoming_dir.iterdir()) == [], 5, "no half-received file left")
    stored = list(node.settings.instances_dir.rglob("*.dcm"))
    assert all(p.stat().st_size > 0 for p in stored)
