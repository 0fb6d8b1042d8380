"""Interop with DCMTK: ``storescu`` pushes to our SCP, ``echoscu`` verifies it.

DCMTK 3.6.7 leaves Nagle on, so every tool runs with TCP_NODELAY=1 (see DICOM-NOTES.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from dicomnode.config import Settings
from dicomnode.node import Node
from dicomnode.storage import sha256_of
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.testing.phantoms import make_phantom
from tests.conftest import need_tool
from tests.support import fingerprint_of

DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")
#: Uncompressed in every flavour pydicom ships (explicit/implicit/big endian, deflate) plus real CTs.
PYDICOM_FILES = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm"]
#: storescu option that proposes each compressed file's own transfer syntax.
COMPRESSED = {
    "-xs": "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "-xw": "JPEG2000.dcm",  # JPEG 2000
    "-xt": "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "-xy": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
}


@pytest.fixture
def node(tmp_path: Path, node_factory: Callable[[Settings], Node]) -> Node:
    return node_factory(
        Settings(
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            quiet_seconds=3600,
            allowed_calling_aes=("MODALITY", "HEALTHCHECK"),
        )
    )


def _storescu(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    exe = need_tool("storescu")
    cmd = [exe, "-v", "-aet", "MODALITY", "-aec", "DICOMNODE", *args[:-1], "127.0.0.1", str(port), args[-1]]
    if Path(args[-1]).is_dir():
        cmd = [exe, "-v", "-aet", "MODALITY", "-aec", "DICOMNODE", *args[:-1], "127.0.0.1", str(port)]
        cmd += ["+sd", args[-1], "+r"]
    return subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


def test_storescu_pushes_a_folder_and_every_file_is_stored_and_recorded(node: Node, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "study").mkdir(parents=True)
    rng = np.random.default_rng(61)
    study_uid = generate_uid()
    for i in range(3):
        ds = make_phantom(rng, bool(i % 2), study_uid=study_uid, size=256)
        ds.save_as(src / "study" / f"dx{i}.dcm", enforce_file_format=True)
    for name in PYDICOM_FILES:
        shutil.copy(get_testdata_file(name), src / name)
    ct_dir = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "77654033" / "CT2"
    shutil.copytree(ct_dir, src / "ct2")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    assert len(files) >= 10

    run = _storescu(node.port, str(src))
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert out.count("Received Store Response (Success)") == len(files), out[-3000:]
    assert node.store is not None and node.flush_records()
    for f in files:
        sent = pydicom.dcmread(f)
        row = instance_by_sop_uid(node.store, sent.SOPInstanceUID)
        assert row is not None, f"{f.name}: no row"
        stored = Path(row.path)
        assert stored.is_file() and sha256_of(stored) == fingerprint_of(node.store, sent.SOPInstanceUID)
        back = pydicom.dcmread(stored)
        assert (back.StudyInstanceUID, back.SOPClassUID) == (sent.StudyInstanceUID, sent.SOPClassUID)
        if "PixelData" in sent:
            assert np.array_equal(back.pixel_array, sent.pixel_array), f"{f.name}: pixels differ"


@pytest.mark.parametrize(("option", "name"), sorted(COMPRESSED.items()))
def test_storescu_compressed_transfer_syntax_is_stored_as_sent(
    node: Node, tmp_path: Path, option: str, name: str
) -> None:
    f = Path(get_testdata_file(name))
    run = _storescu(node.port, option, str(f))
    assert run.returncode == 0 and "Received Store Response (Success)" in run.stdout + run.stderr
    assert node.store is not None
    sent = pydicom.dcmread(f, stop_before_pixels=True)
    assert node.flush_records()
    row = instance_by_sop_uid(node.store, sent.SOPInstanceUID)
    assert row is not None and row.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
    # the node kept the compressed frames it was sent (storescu re-writes the data set around them,
    # so whole-data-set identity is checked with pynetdicom in test_receive_process)
    back, source = pydicom.dcmread(row.path), pydicom.dcmread(f)
    n = int(source.get("NumberOfFrames", 1) or 1)
    assert list(generate_frames(back.PixelData, number_of_frames=n)) == list(
        generate_frames(source.PixelData, number_of_frames=n)
    )


def test_echoscu_gets_success_and_unknown_calling_ae_is_refused(node: Node) -> None:
    exe = need_tool("echoscu")
    ok = subprocess.run(
        [exe, "-v", "-aet", "HEALTHCHECK", "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "Received Echo Response (Success)" in ok.stdout + ok.stderr
    refused = subprocess.run(
        [exe, "-v", "-aet", "STRANGER", "-aec", "DICOMNODE", "127.0.0.1", str(node.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
