"""Deflated data sets (Deflated Explicit VR Little Endian, PS3.5 A.5) opened within a byte cap.

pydicom inflates a deflated data set in one unbounded ``zlib.decompress``: about 1 MB on the wire
that inflates to 1 GiB takes the reader to 1 GiB and more. Everything here inflates in steps with
``zlib.decompressobj(...).decompress(data, max_length)``, so what it holds never passes the cap it
was given: :func:`inflate_prefixes` for the header parse (only as far as the header needs),
:func:`inflated_size` to measure a data set without holding it, and :func:`read_instance`, the one
way the rest of the node opens a stored instance that may be deflated.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import dcmread, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID

#: Compressed bytes read from the file per step.
INFLATE_CHUNK = 1 << 16


class InflateLimitError(ValueError):
    """A deflated data set inflates past the cap it is read with (a deflate bomb, or a cap set too
    low: DICOMNODE_MAX_INFLATED_BYTES)."""


class DeflateError(ValueError):
    """A deflated data set is not a valid deflate stream."""


def _not_group_0002(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def read_file_meta(fh: BinaryIO) -> FileMetaDataset:
    """The preamble and File Meta Information of the Part 10 file open as ``fh`` (PS3.10 7.1);
    leaves ``fh`` at the first byte of the data set. Raises InvalidDicomError without a preamble."""
    read_preamble(fh, False)
    return FileMetaDataset(
        read_dataset(fh, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_0002)
    )


def is_deflated(transfer_syntax_uid: str) -> bool:
    ts = UID(transfer_syntax_uid)
    return ts.is_transfer_syntax and ts.is_deflated


def _inflater() -> zlib._Decompress:
    return zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, no zlib header (PS3.5 A.5)


def _step(inflater: zlib._Decompress, fh: BinaryIO, room: int) -> bytes | None:
    """At most ``room`` (> 0) more inflated bytes; None once the stream (or the file) has ended."""
    try:
        # eof first: the even-length padding after the last block (PS3.5 A.5) can stay behind as
        # unconsumed input once a length-capped call reached the end of the stream
        if inflater.eof:
            return None
        if inflater.unconsumed_tail:
            tail = inflater.unconsumed_tail
            part = inflater.decompress(tail, room)
            if not part and not inflater.eof and inflater.unconsumed_tail == tail:
                raise DeflateError("not a valid deflate stream: no progress on its remaining input")
            return part
        data = fh.read(INFLATE_CHUNK)
        if not data:
            return None
        return inflater.decompress(data, room)
    except zlib.error as exc:
        raise DeflateError(f"not a valid deflate stream: {exc}") from None


def inflate_prefixes(fh: BinaryIO, limit: int, first: int = 1 << 16) -> Iterator[tuple[bytes, bool]]:
    """The deflated data set from ``fh`` (positioned at its first byte) inflated in growing steps:
    yields (the first ``first`` inflated bytes, ended), then twice as many, ... up to ``limit``.
    ``ended`` is True when the prefix is the whole data set. Stops after the prefix of ``limit``
    bytes: a caller that needs more than that raises :class:`InflateLimitError` itself."""
    inflater = _inflater()
    out = bytearray()
    target = min(first, limit)
    ended = False
    while True:
        while len(out) < target:
            part = _step(inflater, fh, target - len(out))
            if part is None:
                ended = True
                break
            out += part
        yield bytes(out), ended
        if ended or len(out) >= limit:
            return
        target = min(target * 2, limit)


def inflated_size(fh: BinaryIO, limit: int) -> int:
    """How many bytes the deflated data set from ``fh`` inflates to, counted without holding more
    than one step of it; raises :class:`InflateLimitError` as soon as it passes ``limit`` and
    :class:`DeflateError` when the stream is corrupt."""
    inflater = _inflater()
    size = 0
    while True:
        part = _step(inflater, fh, min(INFLATE_CHUNK * 16, limit - size + 1))
        if part is None:
            return size
        size += len(part)
        if size > limit:
            raise InflateLimitError(
                f"deflated data set inflates to more than {limit} bytes (DICOMNODE_MAX_INFLATED_BYTES)"
            )


def read_instance(
    path: str | Path, *, max_inflated_bytes: int, defer_size: str | int | None = None
) -> FileDataset:
    """A stored Part 10 file as pydicom reads it (``dcmread``), except that a deflated data set is
    measured first and inflated only when it fits ``max_inflated_bytes`` (0: no cap); raises
    :class:`InflateLimitError` otherwise. Other transfer syntaxes are read as they are, with
    ``defer_size``; a deflated one is held in memory whole (it has no file offsets to defer to)."""
    with open(path, "rb") as fh:
        meta = read_file_meta(fh)
        if not is_deflated(str(meta.get("TransferSyntaxUID", "") or "")):
            return dcmread(path, defer_size=defer_size)
        start = fh.tell()
        if max_inflated_bytes:
            inflated_size(fh, max_inflated_bytes)
            fh.seek(start)
        inflater = _inflater()
        data = bytearray()
        while (part := _step(inflater, fh, INFLATE_CHUNK * 16)) is not None:
            data += part
    buffer = io.BytesIO(data)
    dataset: Dataset = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True)
    ds = FileDataset(str(path), dataset, file_meta=meta, is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True, dataset._character_set)
    return ds


__all__ = [
    "INFLATE_CHUNK",
    "DeflateError",
    "InflateLimitError",
    "inflate_prefixes",
    "inflated_size",
    "is_deflated",
    "read_file_meta",
    "read_instance",
]
