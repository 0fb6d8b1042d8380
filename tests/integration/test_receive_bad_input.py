"""Bad input over real associations: wrong VRs, wrong encoding, no pixel data, junk on the port,
a sender that vanishes mid-instance. Each gets a failure status or a dropped connection, a
structured log line without patient data, nothing half-stored, and the node keeps serving."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.store.queries import study_instances
from dicomnode.testing.phantoms import make_phantom
from tests.integration.test_scp_refusals import _raw_file
from tests.support import echo_ok

PATIENT_VALUES = ("PHANTOM^BAD", "PIDBAD01")


@pytest.fixture
def node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> Node:
    return node_factory(
        Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            quiet_seconds=3600,
            acse_timeout_seconds=3,
        )
    )


def _phantom(seed: int) -> Dataset:
    ds = make_phantom(np.random.default_rng(seed), False, size=64)
    ds.PatientName, ds.PatientID = PATIENT_VALUES
    return ds


def _body(ds: Dataset, *, implicit: bool = False) -> bytes:
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_implicit_VR, fp.is_little_endian = implicit, True
    write_dataset(fp, ds)
    return buf.getvalue()


def _stored(node: Node) -> list[Path]:
    return [p for p in node.settings.instances_dir.rglob("*") if p.is_file()]


def _no_patient_data(logs: list[dict[str, Any]]) -> None:
    text = repr(logs)
    assert not any(v in text for v in PATIENT_VALUES), "a log line carries patient data"


def test_uid_with_wrong_vr_or_unknown_vr_gets_c210(
    node: Node, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    ds = _phantom(1)
    body = _body(ds)
    at_study = body.index(b"\x20\x00\x0d\x00UI")  # (0020,000D) Study Instance UID, explicit VR
    at_sop = body.index(b"\x08\x00\x18\x00UI")  # (0008,0018) SOP Instance UID
    files = [
        # Study Instance UID encoded as a short string: readable, but not a UID
        _raw_file(
            tmp_path / "sh.dcm",
            ds.SOPClassUID,
            ds.SOPInstanceUID,
            body[: at_study + 4] + b"SH" + body[at_study + 6 :],
        ),
        # a VR that does not exist
        _raw_file(
            tmp_path / "zz.dcm",
            ds.SOPClassUID,
            ds.SOPInstanceUID,
            body[: at_sop + 4] + b"ZZ" + body[at_sop + 6 :],
        ),
    ]
    assert [r.status for r in push_files(files, "127.0.0.1", node.port)] == [status.CANNOT_UNDERSTAND] * 2
    assert _stored(node) == []
    refused = [e for e in logs if e["event"] == "store.refused"]
    assert len(refused) == 2 and all(e["status"] == status.CANNOT_UNDERSTAND for e in refused)
    assert {e["error"] for e in refused} == {"ValueError", "NotImplementedError"}
    _no_patient_data(logs)
    assert echo_ok(node.port)


def test_implicit_vr_body_in_an_explicit_vr_context_gets_c210(
    node: Node, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    """pydicom would guess its way through; the stored file would lie about its transfer syntax."""
    ds = _phantom(2)
    f = _raw_file(tmp_path / "implicit.dcm", ds.SOPClassUID, ds.SOPInstanceUID, _body(ds, implicit=True))
    [res] = push_files([f], "127.0.0.1", node.port)
    assert res.status == status.CANNOT_UNDERSTAND
    assert _stored(node) == []
    _no_patient_data(logs)


def test_implicit_vr_body_in_an_implicit_vr_context_is_stored(node: Node, tmp_path: Path) -> None:
    ds = _phantom(3)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    f = tmp_path / "implicit-ok.dcm"
    ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=True)
    [res] = push_files([f], "127.0.0.1", node.port)
    assert res.status == status.SUCCESS
    [stored] = _stored(node)
    assert pydicom.dcmread(stored).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def test_instance_without_pixel_data_is_stored_and_recorded(node: Node, tmp_path: Path) -> None:
    """Valid DICOM without Pixel Data is stored like any other; the pipeline skips it later."""
    ds = _phantom(4)
    del ds.PixelData
    f = tmp_path / "nopixels.dcm"
    ds.save_as(f, enforce_file_format=True)
    [res] = push_files([f], "127.0.0.1", node.port)
    assert res.status == status.SUCCESS
    [stored] = _stored(node)
    assert "PixelData" not in pydicom.dcmread(stored)
    assert node.store is not None
    assert node.flush_records()
    [row] = study_instances(node.store, ds.StudyInstanceUID)
    assert row.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",  # an unknown PDU type
        b"\x01\x00\x00\x00\x00\x20" + b"\xff" * 32,  # an A-ASSOCIATE-RQ that does not decode
        b"\x04\x00\x00\x00\x00\x10" + bytes(16),  # P-DATA before any association
        bytes(range(256)) * 64,  # 16 KiB of noise
    ],
    ids=["http", "bad-associate-rq", "early-p-data", "noise"],
)
def test_junk_bytes_on_the_port_drop_the_connection_and_node_keeps_serving(
    node: Node, junk: bytes, logs: list[dict[str, Any]]
) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(junk)
        s.settimeout(1)
        try:
            reply = s.recv(64)  # an A-ABORT (0x07), or the connection closed
        except OSError:
            reply = b""
    assert reply[:1] in (b"\x07", b"")
    deadline = time.monotonic() + 5
    while not any(e["event"] == "connection.dropped" for e in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [e for e in logs if e["event"] == "connection.dropped"]
    assert line["peer"] == "127.0.0.1" and line["log_level"] == "warning"
    assert echo_ok(node.port)
    assert _stored(node) == []


def _cutting_proxy(target_port: int, cut_after: int) -> tuple[int, threading.Event]:
    """A one-connection TCP relay to the node that forwards ``cut_after`` bytes of the sender's
    stream, then closes both sides: a modality losing its network mid-instance."""
    listener = socket.create_server(("127.0.0.1", 0))
    cut = threading.Event()

    def pump_back(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def run() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=pump_back, args=(upstream, client), daemon=True).start()
        sent = 0
        try:
            while sent < cut_after and (data := client.recv(min(65536, cut_after - sent))):
                upstream.sendall(data)
                sent += len(data)
        finally:
            for s in (upstream, client, listener):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            cut.set()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1], cut


def test_sender_vanishing_mid_instance_leaves_nothing_behind(
    node: Node, tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    """An 8 MB instance is cut off after 2 MB: no stored file, no row, no receive buffer left over."""
    ds = _phantom(5)
    ds.Rows = ds.Columns = 2048
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.zeros((2048, 2048), np.uint16).tobytes()
    f = tmp_path / "big.dcm"
    ds.save_as(f, enforce_file_format=True)
    port, cut = _cutting_proxy(node.port, cut_after=2 << 20)
    results = push_files([f], "127.0.0.1", port, calling_ae="VANISHING", timeout=10)
    assert cut.wait(10)
    assert [r.status for r in results] == [None]  # never answered
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(e["event"] == "store.partial_discarded" for e in logs):
        time.sleep(0.05)
    [line] = [e for e in logs if e["event"] == "store.partial_discarded"]
    assert line["calling_ae"] == "VANISHING" and 0 < line["bytes"] < 2 << 20
    assert list(node.incoming_dir.iterdir()) == []
    assert _stored(node) == []
    assert node.store is not None and study_instances(node.store, ds.StudyInstanceUID) == []
    _no_patient_data(logs)
    assert echo_ok(node.port)


def test_c_store_request_without_sop_class_drops_the_association_and_is_logged(
    node: Node, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom (as an SCU) will send a file whose meta has an empty SOP Class UID as a C-STORE-RQ
    without Affected SOP Class UID; our side's DIMSE decoder raises on it. The association ends
    without a response, one structured line says so, and the node keeps serving."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = get_testdata_file("nested_priv_SQ.dcm")  # file meta with empty SOP Class/Instance UIDs
    assert path is not None
    ae = AE(ae_title="BROKENSCU")
    ae.add_requested_context("", [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(Path(path))
    finally:
        if assoc.is_established:
            assoc.release()
    assert rsp is None or "Status" not in rsp
    deadline = time.monotonic() + 5
    while not any(e["event"] == "association.failed" for e in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [e for e in logs if e["event"] == "association.failed"]
    assert line["calling_ae"] == "BROKENSCU" and line["log_level"] == "error"
    assert echo_ok(node.port)
    assert _stored(node) == []
