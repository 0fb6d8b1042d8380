"""The SCP's header parse from the first received bytes agrees with the parse of the stored file."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomnode.receive.header import read_header, read_header_from
from dicomnode.testing.phantoms import make_phantom

_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def _data_set_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    (meta_len,) = struct.unpack("<L", raw[140:144])
    return raw[144 + meta_len :]


def _ts(path: Path) -> str:
    return read_header(path).transfer_syntax_uid


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
    ],
)
def test_head_parse_equals_file_parse(name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    head = _data_set_bytes(path)[: 1 << 16]
    assert read_header_from(head, _ts(path)) == read_header(path)


def test_phantom_header_from_its_first_bytes(tmp_path: Path) -> None:
    ds = make_phantom(np.random.default_rng(1), True, size=256)
    f = tmp_path / "p.dcm"
    ds.save_as(f, enforce_file_format=True)
    hdr = read_header_from(_data_set_bytes(f)[:4096], str(ds.file_meta.TransferSyntaxUID))
    assert hdr == read_header(f) and hdr is not None and hdr.sop_instance_uid == ds.SOPInstanceUID


def test_head_that_stops_short_or_is_deflated_defers_to_the_file() -> None:
    path = Path(str(get_testdata_file("CT_small.dcm")))
    body = _data_set_bytes(path)
    assert read_header_from(body[:300], _ts(path)) is None  # ends before the Series Instance UID
    deflated = Path(str(get_testdata_file("image_dfl.dcm")))
    assert read_header_from(_data_set_bytes(deflated), _ts(deflated)) is None


def test_head_in_the_wrong_encoding_defers_to_the_file() -> None:
    path = Path(str(get_testdata_file("MR_small_implicit.dcm")))  # implicit VR body
    assert read_header_from(_data_set_bytes(path)[: 1 << 16], "1.2.840.10008.1.2.1") is None


def _pydicom_test_files() -> list[Path]:
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_header_uids_read_raw_equal_pydicoms_decoded_values() -> None:
    """The header parse takes the four UIDs from the raw bytes (no UID objects): on every file
    shipped with pydicom it gives what pydicom's own decoding gives, and fails where it fails."""
    compared = 0
    for path in _pydicom_test_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about the odd files in its corpus
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                expected = [str(ds[k].value) for k in _UIDS]
                vrs_ok = all(ds[k].VR == "UI" for k in _UIDS)
            except Exception:
                continue  # not readable as a Part 10 file with all four UIDs: nothing to compare
            try:
                hdr = read_header(path)
            except ValueError as exc:  # refused: encoded against its transfer syntax, or a UID not UI
                assert "does not match transfer syntax" in str(exc) or not vrs_ok, path.name
                continue
        got = [hdr.sop_class_uid, hdr.sop_instance_uid, hdr.study_uid, hdr.series_uid]
        assert got == expected, path.name
        compared += 1
    assert compared > 100  # the corpus has about 140 such files
