"""The node's own DICOM listener against pynetdicom as the peer: PDU framing and negotiation corners.

Each test opens real associations on loopback; what the node stores is compared byte for byte with
what was sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

from dicomnode.config import Settings
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.storage import IMPLEMENTATION_CLASS_UID
from dicomnode.testing.phantoms import make_phantom
from tests.support import echo_ok, wait_until


def _node(tmp_path: Path, node_factory: Callable[[Settings], Node], **kw: Any) -> Node:
    return node_factory(
        Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600, **kw)
    )


def _phantom(tmp_path: Path, seed: int, size: int = 256) -> tuple[pydicom.Dataset, Path]:
    ds = make_phantom(np.random.default_rng(seed), bool(seed % 2), size=size)
    f = tmp_path / f"in-{seed}.dcm"
    ds.save_as(f, enforce_file_format=True)
    return ds, f


def _associate(port: int, *, max_pdu: int = 16384, ext_neg: list[Any] | None = None) -> Any:
    ae = AE(ae_title="FRAMING")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, pydicom.uid.ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="DICOMNODE", ext_neg=ext_neg)


def _data_set(path: Path) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    del ds.file_meta
    return ds


def test_data_set_in_many_small_pdus_is_stored_whole_with_our_file_meta(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, max_pdu_bytes=4096)  # the sender must cut 128 KiB into ~32 PDUs
    ds, f = _phantom(tmp_path, 1)
    assoc = _associate(node.port)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == status.SUCCESS
    finally:
        assoc.release()
    [stored] = list(node.settings.instances_dir.rglob("*.dcm"))
    back = pydicom.dcmread(stored)
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.SourceApplicationEntityTitle == "FRAMING"
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    assert _data_set(stored) == _data_set(f)


def test_peer_with_a_tiny_maximum_pdu_gets_its_responses_in_fragments(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory)
    ds, _ = _phantom(tmp_path, 2, size=64)
    assoc = _associate(node.port, max_pdu=64)  # our C-STORE-RSP (~190 bytes) needs several PDUs
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == status.SUCCESS
    finally:
        assoc.release()
    assert list(node.settings.instances_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))


def test_asynchronous_operations_window_is_answered_with_one_at_a_time(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory)
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 8
    assoc = _associate(node.port, ext_neg=[window])
    assert assoc.is_established
    try:
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        for seed in (3, 4):
            assert assoc.send_c_store(_phantom(tmp_path, seed, size=64)[0]).Status == status.SUCCESS
    finally:
        assoc.release()
    assert len(list(node.settings.instances_dir.rglob("*.dcm"))) == 2


def test_peer_abort_mid_association_is_logged_and_the_node_serves_on(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory)
    ds, _ = _phantom(tmp_path, 5, size=64)
    assoc = _associate(node.port)
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == status.SUCCESS
    assoc.abort()
    wait_until(lambda: any(e["event"] == "association.aborted" for e in logs), 5, "the abort to be logged")
    [line] = [e for e in logs if e["event"] == "association.aborted"]
    assert line["calling_ae"] == "FRAMING" and line["peer"] == "127.0.0.1"
    assert echo_ok(node.port)
    assert node.flush_records()
    assert list(node.settings.instances_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))
    time.sleep(0.2)
    assert list(node.incoming_dir.iterdir()) == []


def test_file_made_ahead_for_the_next_instance_is_used_and_removed_on_release(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    """After each C-STORE response the association makes the next instance's receive file while
    the sender sends again; the next instance lands in it, and release removes the unused one."""
    node = _node(tmp_path, node_factory)
    assoc = _associate(node.port)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(_phantom(tmp_path, 6, size=64)[0]).Status == status.SUCCESS
        wait_until(lambda: len(list(node.incoming_dir.iterdir())) == 1, 5, "the file made ahead")
        [ahead] = list(node.incoming_dir.iterdir())
        assert ahead.stat().st_size == 0
        inode = ahead.stat().st_ino
        ds = _phantom(tmp_path, 7, size=64)[0]
        assert assoc.send_c_store(ds).Status == status.SUCCESS
        [stored] = list(node.settings.instances_dir.rglob(f"{ds.SOPInstanceUID}.dcm"))
        assert stored.stat().st_ino == inode  # the same file, renamed into place
    finally:
        assoc.release()
    wait_until(lambda: list(node.incoming_dir.iterdir()) == [], 5, "no receive file left after release")
    assert len(list(node.settings.instances_dir.rglob("*.dcm"))) == 2
