"""Bad input over real associations: a failure status, a log line, nothing half-written, node up."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.net import status
from dicomnode.node import Node
from dicomnode.testing.phantoms import make_phantom
from tests.support import echo_ok, fingerprint_of


@pytest.fixture
def bare_node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> Node:
    """A node with no model and no destination: these tests never reach analysis."""
    return node_factory(Settings(host="127.0.0.1", port=0, storage_dir=tmp_path / "node", quiet_seconds=3600))


def _raw_file(path: Path, sop_class: str, sop_uid: str, body: bytes) -> Path:
    """A file with valid file meta and whatever body bytes we choose (sent verbatim)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(path, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)
        fh.write(body)
    return path


def _stored_files(node: Node) -> list[Path]:
    root = node.settings.instances_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_unknown_sop_class_gets_0122_and_node_keeps_serving(bare_node: Node, tmp_path: Path) -> None:
    ds = make_phantom(np.random.default_rng(0), False, size=64)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"  # private
    f = tmp_path / "private.dcm"
    ds.save_as(f, enforce_file_format=True)
    [res] = push_files([f], "127.0.0.1", bare_node.port)
    assert res.status == status.SOP_CLASS_NOT_SUPPORTED
    assert _stored_files(bare_node) == []
    assert echo_ok(bare_node.port)


def test_unparseable_dataset_gets_c210_and_nothing_is_stored(bare_node: Node, tmp_path: Path) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    garbage = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    files = [
        _raw_file(tmp_path / "garbage.dcm", ct, generate_uid(), garbage),
        # a valid start, then cut off mid-element
        _raw_file(
            tmp_path / "truncated.dcm", ct, generate_uid(), b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4"
        ),
    ]
    results = push_files(files, "127.0.0.1", bare_node.port)
    assert [r.status for r in results] == [status.CANNOT_UNDERSTAND] * 2
    assert _stored_files(bare_node) == []
    assert echo_ok(bare_node.port)


def test_dataset_not_matching_its_context_gets_a900(bare_node: Node, tmp_path: Path) -> None:
    ds = make_phantom(np.random.default_rng(2), False, size=64)
    body = io.BytesIO()
    fp = DicomFileLike(body)
    fp.is_implicit_VR, fp.is_little_endian = False, True  # explicit VR LE, as the meta says
    write_dataset(fp, ds)
    # the request and the context say CT; the data set inside is a DX
    f = _raw_file(tmp_path / "mismatch.dcm", "1.2.840.10008.5.1.4.1.1.2", ds.SOPInstanceUID, body.getvalue())
    [res] = push_files([f], "127.0.0.1", bare_node.port)
    assert res.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert _stored_files(bare_node) == []
    assert echo_ok(bare_node.port)


def test_valid_instance_is_stored_durably_and_recorded(bare_node: Node, tmp_path: Path) -> None:
    from dicomnode.storage import sha256_of
    from dicomnode.store.queries import study_instances

    ds = make_phantom(np.random.default_rng(3), True, size=128)
    f = tmp_path / "ok.dcm"
    ds.save_as(f, enforce_file_format=True)
    [res] = push_files([f], "127.0.0.1", bare_node.port, calling_ae="MODALITY1")
    assert res.status == status.SUCCESS
    [stored] = _stored_files(bare_node)
    assert stored.name == f"{ds.SOPInstanceUID}.dcm"
    back = pydicom.dcmread(stored)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    assert bare_node.store is not None
    assert bare_node.flush_records()
    [row] = study_instances(bare_node.store, ds.StudyInstanceUID)
    assert row.calling_ae == "MODALITY1"
    assert fingerprint_of(bare_node.store, ds.SOPInstanceUID) == sha256_of(stored)
    assert not list(bare_node.settings.instances_dir.rglob("*.tmp"))
