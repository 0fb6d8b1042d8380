"""Bombs and floods against a real node on loopback (issue 13.1 and 13.5): bounded, refused, node up.

- A deflate bomb (Deflated Explicit VR Little Endian, ~1 MB that inflates to 1 GiB) sent over a
  real association: refused with a failure status, nothing kept, the node's peak memory bounded.
- A data set refused as it arrives (0xA700) is drained only so far: past
  :data:`dicomnode.net.association.MAX_DRAIN_BYTES` the association is aborted.
- Connections that never associate are capped in total (DICOMNODE_MAX_PENDING_CONNECTIONS), the
  oldest closed first, so a prompt association still gets in during a flood.

The node runs in the test process: its peak memory is this process's (see
tests/integration/test_listener_limits.py, ``peak_memory``).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from dicomnode.config import Settings
from dicomnode.net import association, status
from dicomnode.node import Node
from dicomnode.storage import encode_file_meta
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.testing.hostile import GiB, MiB, RawPeer, deflate_bomb_chunks, header_dataset, zeros
from dicomnode.testing.phantoms import make_phantom
from tests.integration.test_listener_limits import MEMORY_BOUND, PeakMemory, peak_memory  # noqa: F401
from tests.integration.test_listener_protocol import _node
from tests.support import echo_ok, wait_until


def _bomb_file(tmp_path: Path, *, before_uids: bool, inflated: int = GiB) -> tuple[Path, str]:
    """A deflate bomb as a Part 10 file (what pynetdicom sends from), written a piece at a time."""
    ds = header_dataset()
    path = tmp_path / f"bomb-{before_uids}.dcm"
    with open(path, "wb") as fh:
        fh.write(encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian, "BOMB"))
        for chunk in deflate_bomb_chunks(inflated, before_uids=before_uids, header=ds):
            fh.write(chunk)
    return path, str(ds.SOPInstanceUID)


def _send_file(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE the Part 10 file at ``path`` as it is (streamed from the file, deflated stays deflated)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="BOMBER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status)
    finally:
        assoc.release()


def _nothing_kept(node: Node, sop_uid: str) -> None:
    assert not list(node.settings.instances_dir.rglob("*.dcm")), "an instance of the bomb was kept"
    wait_until(lambda: list(node.incoming_dir.iterdir()) == [], 5, "the receive file to go")
    assert node.store is not None
    assert instance_by_sop_uid(node.store, sop_uid) is None


# --------------------------------------------------------------------------------------------
# deflate bombs


def test_deflate_bomb_in_the_header_is_refused_without_inflating_it(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
    peak_memory: PeakMemory,  # noqa: F811
) -> None:
    node = _node(tmp_path, node_factory)
    bomb, sop_uid = _bomb_file(tmp_path, before_uids=True)
    assert bomb.stat().st_size < 2 * MiB
    peak_memory.reset()
    assert _send_file(node.port, bomb, monkeypatch) == status.CANNOT_UNDERSTAND
    rose = peak_memory.rise()
    assert rose < MEMORY_BOUND, f"a 1 GiB deflate bomb raised the node's peak memory by {rose >> 20} MiB"
    [line] = [e for e in logs if e["event"] == "store.refused"]
    assert line["error"] == "InflateLimitError" and line["status"] == status.CANNOT_UNDERSTAND
    _nothing_kept(node, sop_uid)
    assert echo_ok(node.port)


def test_deflate_bomb_in_pixel_data_is_refused_past_max_inflated_bytes(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
    peak_memory: PeakMemory,  # noqa: F811
) -> None:
    # the header parses (it ends before the bomb); the whole data set is measured, not held.
    # 64 MiB rather than the 512 MiB default: measuring costs time, not memory
    node = _node(tmp_path, node_factory, max_inflated_bytes=64 * MiB)
    bomb, sop_uid = _bomb_file(tmp_path, before_uids=False)
    peak_memory.reset()
    assert _send_file(node.port, bomb, monkeypatch) == status.OUT_OF_RESOURCES
    rose = peak_memory.rise()
    assert rose < MEMORY_BOUND, f"a 1 GiB deflate bomb raised the node's peak memory by {rose >> 20} MiB"
    [line] = [e for e in logs if e["event"] == "store.refused"]
    assert "DICOMNODE_MAX_INFLATED_BYTES" in line["reason"]
    _nothing_kept(node, sop_uid)
    assert echo_ok(node.port)


def test_deflated_instance_within_the_limits_is_stored(
    tmp_path: Path, node_factory: Callable[[Settings], Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _node(tmp_path, node_factory, max_inflated_bytes=1 * MiB)
    ds = make_phantom(np.random.default_rng(5), False, size=256)  # 128 KiB inflated
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    try:
        assert assoc.send_c_store(path).Status == status.SUCCESS
    finally:
        assoc.release()
    [stored] = list(node.settings.instances_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert stored.stat().st_size < path.stat().st_size + 4096  # kept deflated, as sent


# --------------------------------------------------------------------------------------------
# draining a refused data set


def _store_context() -> tuple[int, str, list[str]]:
    return (1, str(ComputedRadiographyImageStorage), [ExplicitVRLittleEndian])


def test_refused_data_set_is_drained_for_its_status_only_up_to_the_drain_limit(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    monkeypatch: pytest.MonkeyPatch,
    logs: list[dict[str, Any]],
) -> None:
    monkeypatch.setattr(association, "MAX_DRAIN_BYTES", 4 * MiB)
    node = _node(tmp_path, node_factory, max_dataset_bytes=1 * MiB)
    with RawPeer(node.port) as peer:
        assert peer.associate([_store_context()]).kind == "accepted"
        # 2 MiB past the limit: drained, and the sender gets 0xA700 and may go on
        got = peer.store(1, ComputedRadiographyImageStorage, "1.2.3.4", zeros(3 * MiB))
        assert (got.kind, got.status) == ("status", status.OUT_OF_RESOURCES)
        # a sender that keeps sending is aborted once the drain limit is passed, long before its end
        started = time.monotonic()
        got = peer.store(1, ComputedRadiographyImageStorage, "1.2.3.5", zeros(256 * MiB))
        assert got.kind in ("abort", "closed"), f"the node answered {got} to an endless refused data set"
        assert time.monotonic() - started < 20
    [line] = [e for e in logs if e["event"] == "store.drain_limit"]
    assert line["sop_instance_uid"] == "1.2.3.5" and line["drained"] > 4 * MiB
    wait_until(lambda: list(node.incoming_dir.iterdir()) == [], 5, "the receive files to go")
    assert echo_ok(node.port)


# --------------------------------------------------------------------------------------------
# connections that never associate


def _silent_connections(port: int, n: int) -> list[socket.socket]:
    """``n`` TCP connections that send nothing, from 127.0.0.1-127.0.0.50 (a flood from many
    addresses: the per-address cap alone does not stop it)."""
    out = []
    for i in range(n):
        out.append(
            socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{1 + i % 50}", 0)
            )
        )
    return out


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)


def test_connections_still_negotiating_are_capped_in_total_the_oldest_closed_first(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory, max_pending_connections=8, max_associations_per_peer=0)
    server = node._server
    assert server is not None
    held = _silent_connections(node.port, 20)
    try:
        wait_until(lambda: len(server.active_associations) <= 8, 5, "the node to hold at most 8 pending")
        wait_until(lambda: all(_closed(s) for s in held[:12]), 5, "the 12 oldest connections to be closed")
        assert not any(_closed(s) for s in held[12:]), "a newer connection was closed before an older one"
        assert echo_ok(node.port)  # evicts one more silent connection, then associates at once
        assert any(e["event"] == "connection.evicted" for e in logs)
    finally:
        for s in held:
            s.close()


def test_prompt_association_gets_in_within_two_seconds_while_200_connections_flood(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, max_associations_per_peer=0)  # default pending cap: 64
    threads_before = threading.active_count()
    held = _silent_connections(node.port, 200)
    try:
        time.sleep(0.5)  # let the accept loop take them all
        threads = threading.active_count() - threads_before
        assert threads <= 64 + 8, f"200 silent connections held {threads} threads"
        started = time.monotonic()
        assert echo_ok(node.port)
        took = time.monotonic() - started
        assert took < 2, f"a legitimate association took {took:.1f} s during the flood"
    finally:
        for s in held:
            s.close()
