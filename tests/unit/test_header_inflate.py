"""Deflated data sets are inflated within a cap: the header parse a few MiB, a whole read the limit.

A deflate bomb (issue 13.1) is ~1 KiB on the wire per MiB inflated. pydicom inflates a deflated data
set in one ``zlib.decompress``; the node's readers (:mod:`dicomnode.storage.inflate`) never do.
Peak memory is measured with tracemalloc, which sees zlib's output buffers (Python bytes).
"""

from __future__ import annotations

import io
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from dicomnode.receive.header import HEADER_INFLATE_BYTES, read_header
from dicomnode.storage import (
    DeflateError,
    InflateLimitError,
    encode_file_meta,
    inflate_prefixes,
    inflated_size,
    read_file_meta,
    read_instance,
)
from dicomnode.testing.hostile import GiB, MiB, deflate_bomb_chunks, header_dataset
from dicomnode.testing.phantoms import make_phantom

#: What any bounded reader here may hold at its peak (the header parse: the inflated prefix, the
#: parser's copy of it and one step); a reader that inflated the bomb holds 1 GiB.
PEAK_BOUND = 4 * HEADER_INFLATE_BYTES


def _bomb_file(tmp_path: Path, inflated: int = GiB, *, before_uids: bool = False) -> tuple[Path, Any]:
    """A Part 10 file, as the node stores one, holding a deflate bomb; and its header data set."""
    ds = header_dataset()
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"bomb-{before_uids}.dcm"
    with open(path, "wb") as fh:
        fh.write(encode_file_meta(ds.SOPClassUID, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian, "BOMB"))
        for chunk in deflate_bomb_chunks(inflated, before_uids=before_uids, header=ds):
            fh.write(chunk)
    assert path.stat().st_size < inflated // 500  # ~1 MB for 1 GiB
    return path, ds


def _peak(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()`` and the peak of Python allocations while it ran, in bytes (raised exceptions kept)."""
    tracemalloc.start()
    try:
        try:
            result: Any = call()
        except Exception as exc:  # noqa: BLE001 - returned for the test to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_header_of_a_deflate_bomb_is_parsed_without_inflating_the_bomb(tmp_path: Path) -> None:
    path, ds = _bomb_file(tmp_path)
    hdr, peak = _peak(lambda: read_header(path))
    assert not isinstance(hdr, BaseException), hdr
    assert peak < PEAK_BOUND, f"parsing the header of a 1 GiB deflate bomb peaked at {peak >> 20} MiB"
    assert (hdr.sop_instance_uid, hdr.study_uid, hdr.series_uid) == (
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert hdr.transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_deflate_bomb_inside_the_header_is_refused_within_the_header_cap(tmp_path: Path) -> None:
    path, _ = _bomb_file(tmp_path, before_uids=True)
    err, peak = _peak(lambda: read_header(path))
    assert isinstance(err, InflateLimitError), err
    assert peak < PEAK_BOUND, f"refusing the header peaked at {peak >> 20} MiB"


def _measure(path: Path, limit: int) -> int:
    with open(path, "rb") as fh:
        read_file_meta(fh)
        return inflated_size(fh, limit)


def test_inflated_size_stops_at_the_limit_holding_one_step(tmp_path: Path) -> None:
    bomb, _ = _bomb_file(tmp_path)
    # inflating costs time, not memory: a short limit keeps the test quick
    err, peak = _peak(lambda: _measure(bomb, 64 * MiB))
    assert isinstance(err, InflateLimitError)
    assert peak < PEAK_BOUND
    small, _ = _bomb_file(tmp_path / "small", 16 * MiB)
    assert 16 * MiB - 4096 < _measure(small, 64 * MiB) < 16 * MiB + 4096


def test_read_instance_refuses_a_bomb_past_the_cap_before_inflating_it(tmp_path: Path) -> None:
    path, _ = _bomb_file(tmp_path)
    err, peak = _peak(lambda: read_instance(path, max_inflated_bytes=64 * MiB))
    assert isinstance(err, InflateLimitError)
    assert peak < PEAK_BOUND, f"refusing a 1 GiB bomb held {peak >> 20} MiB"


def _deflated_phantom(tmp_path: Path) -> tuple[Path, Path]:
    ds = make_phantom(np.random.default_rng(3), True, size=256)
    plain, deflated = tmp_path / "plain.dcm", tmp_path / "deflated.dcm"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(plain, enforce_file_format=True)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(deflated, enforce_file_format=True)
    return plain, deflated


def test_real_deflated_instance_reads_as_its_inflated_twin(tmp_path: Path) -> None:
    plain, deflated = _deflated_phantom(tmp_path)
    assert deflated.stat().st_size < plain.stat().st_size
    a, b = read_header(plain), read_header(deflated)
    assert (a.sop_instance_uid, a.study_uid, a.series_uid, a.modality, a.accession_number) == (
        b.sop_instance_uid,
        b.study_uid,
        b.series_uid,
        b.modality,
        b.accession_number,
    )
    ds = read_instance(deflated, max_inflated_bytes=4 * MiB, defer_size="64 KB")
    ref = pydicom.dcmread(plain)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert ds.SOPInstanceUID == ref.SOPInstanceUID
    np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)
    with pytest.raises(InflateLimitError):
        read_instance(deflated, max_inflated_bytes=64 * 1024)
    # not deflated: read as it is, whatever the cap
    assert read_instance(plain, max_inflated_bytes=1).SOPInstanceUID == ref.SOPInstanceUID


def test_corrupt_deflate_stream_is_an_error_not_garbage(tmp_path: Path) -> None:
    _, deflated = _deflated_phantom(tmp_path)
    raw = bytearray(deflated.read_bytes())
    with open(deflated, "rb") as fh:
        read_file_meta(fh)
        start = fh.tell()
    raw[start : start + 64] = bytes(range(0x80, 0xC0))  # not a deflate block header sequence
    deflated.write_bytes(bytes(raw))
    with pytest.raises((DeflateError, ValueError, EOFError)):
        read_header(deflated)
    with open(deflated, "rb") as fh:
        read_file_meta(fh)
        with pytest.raises(DeflateError):
            inflated_size(fh, GiB)


def _inflate_steps(data: bytes, limit: int) -> Iterator[tuple[bytes, bool]]:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return inflate_prefixes(io.BytesIO(z.compress(data) + z.flush()), limit, first=1024)


def test_inflate_prefixes_double_up_to_the_limit_and_say_when_the_data_ended() -> None:
    data = (bytes(range(256)) * 64)[:15000]
    steps = list(_inflate_steps(data, 1 << 20))
    assert [len(p) for p, _ in steps] == [1024, 2048, 4096, 8192, 15000]
    assert [ended for _, ended in steps] == [False, False, False, False, True]
    assert steps[-1][0] == data
    capped = list(_inflate_steps(data, 3000))
    assert [len(p) for p, _ in capped] == [1024, 2048, 3000]
    assert not capped[-1][1]


def test_an_odd_stream_padded_to_even_length_is_measured_to_its_end(tmp_path: Path) -> None:
    # the pad byte after the last block can stay as unconsumed input of a length-capped inflate
    # once the stream has ended: measuring must stop there, not ask zlib for more forever
    for i in range(8):  # UIDs of random length: about half of these streams end padded
        path, _ = _bomb_file(tmp_path / str(i), 16 * MiB)
        assert 16 * MiB - 4096 < _measure(path, 64 * MiB) < 16 * MiB + 4096
