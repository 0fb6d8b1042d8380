"""The header of a received data set: what the node needs from it, parsed up to the Series Instance UID.

Pixel data is never decoded here. :func:`read_header_from` parses the first bytes of a data set as
they came off the network (kept by the receive file), so the file is usually not read back;
:func:`read_header` parses a Part 10 file and has the last word when the first bytes do not suffice.

A deflated data set (PS3.5 A.5) is inflated only as far as its header needs, in growing steps and
never past :data:`HEADER_INFLATE_BYTES` (:mod:`dicomnode.storage.inflate`): a deflate bomb costs the
parse a few MiB, not what it inflates to. A header that does not end within that much raises
:class:`~dicomnode.storage.InflateLimitError`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomnode.storage import InflateLimitError, inflate_prefixes, is_deflated, normalise_uid, read_file_meta

#: Attributes that name the stored file and its row: each must be present and encoded as UI.
_UID_TAGS: dict[str, int] = {
    keyword: int(tag_for_keyword(keyword) or 0)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
}
#: The last top-level attribute the parse reads: Series Instance UID (0020,000E). Everything the
#: handler needs (SOP Class/Instance UID, Accession Number, Modality, Study/Series UID) comes before.
_LAST_HEADER_TAG = _UID_TAGS["SeriesInstanceUID"]
_SOP_CLASS_UID_TAG = _UID_TAGS["SOPClassUID"]
#: How much of a deflated data set the header parse inflates at most. The attributes before the
#: Series Instance UID are a few KiB in real files (private groups 0009/0019 included); a data set
#: whose header does not end within this is refused, whatever it inflates to.
HEADER_INFLATE_BYTES = 4 << 20


@dataclass(frozen=True)
class InstanceHeader:
    """What the node needs from a data set's header (no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    accession_number: str | None
    transfer_syntax_uid: str


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_HEADER_TAG


def read_header(path: str | Path) -> InstanceHeader:
    """Parse a Part 10 file up to its Series Instance UID; raises on anything unreadable, and
    :class:`~dicomnode.storage.InflateLimitError` for a deflated header past
    :data:`HEADER_INFLATE_BYTES`."""
    with open(path, "rb") as fh:
        meta = read_file_meta(fh)
        transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
        if is_deflated(transfer_syntax):
            return _header_of(_read_deflated(fh), transfer_syntax)
        fh.seek(0)
        ds = read_partial(fh, stop_when=_past_header, defer_size=4096)
    return _header_of(ds, str(ds.file_meta.get("TransferSyntaxUID", "") or ""))


def _read_deflated(fh: BinaryIO) -> Dataset:
    """The header of the deflated data set at ``fh``, inflated a step at a time until the parse
    reaches past the Series Instance UID (or the data set ends)."""
    for inflated, ended in inflate_prefixes(fh, HEADER_INFLATE_BYTES):
        fp = io.BytesIO(inflated)
        try:
            ds = read_dataset(fp, False, True, stop_when=_past_header, defer_size=4096)
        except EOFError:  # an element cut off at the end of this step
            if ended:
                raise
            continue
        if ended or fp.tell() < len(inflated):  # the whole data set, or stopped at the stop tag
            return ds
    raise InflateLimitError(
        f"the header of a deflated data set does not end within its first {HEADER_INFLATE_BYTES} "
        "bytes inflated (a deflate bomb?)"
    )


def read_header_from(head: bytes, transfer_syntax_uid: str) -> InstanceHeader | None:
    """Parse the header from the first bytes of a data set as it came off the network (no file
    meta), or None when ``head`` does not reach past the Series Instance UID, the data set is
    deflated or anything goes wrong: then :func:`read_header` on the file decides."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax or ts.is_deflated:
        return None
    fp = io.BytesIO(head)
    try:
        ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_past_header, defer_size=4096)
    except Exception:  # e.g. an element cut off at the end of ``head``
        return None
    if fp.tell() >= len(head):  # ran out of bytes rather than reaching the stop tag
        return None
    try:
        return _header_of(ds, transfer_syntax_uid)
    except Exception:
        return None  # the whole file gives the error its proper name


def _uid(ds: Dataset, keyword: str, tag: int) -> str:
    """A UID attribute as text; raises KeyError when missing, ValueError when not encoded as UI.

    Straight from the raw bytes as pydicom read them: ``convert_UI`` less the :class:`UID` object
    and its validation regex, a large share of the header parse on every C-STORE (docs/sizing.md).
    Padding is removed and the UID checked by the node's one UID rule
    (:func:`dicomnode.storage.normalise_uid`): raises UnsafeUIDError (a ValueError) when it is not a
    valid UID, so the file, its SQL row and its results folder always agree on it."""
    elem = ds.get_item(tag)
    if elem is None:
        raise KeyError(keyword)
    # None: implicit VR, where the dictionary says UI; UN: explicit VR from a writer that did not
    # know the tag, which pydicom reads as UI too (config.replace_un_with_known_vr). Any other VR
    # takes pydicom's path below, which names what is wrong with it.
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.VR in (None, "UI", "UN"):
        return normalise_uid(elem.value.decode("latin-1"), keyword)
    vr = ds[keyword].VR  # NotImplementedError for a VR that does not exist
    if vr != "UI":
        raise ValueError(f"{keyword} is encoded with VR {vr}, not UI")
    return normalise_uid(str(ds[keyword].value), keyword)


def _text(ds: Dataset, keyword: str) -> str | None:
    """A short text attribute (Modality, Accession Number) as sent, all values joined with ``\\``
    as they were encoded; None when absent or empty. Not checked here: what SQL cannot hold is
    dropped, and said so, when the row is made (:func:`dicomnode.store.records.fit_to_columns`)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value) or None
    return str(value) or None


def _header_of(ds: Dataset, transfer_syntax_uid: str) -> InstanceHeader:
    ts = UID(transfer_syntax_uid)
    first = ds.get_item(_SOP_CLASS_UID_TAG)  # still raw: it says how it was actually read
    if ts.is_transfer_syntax and isinstance(first, RawDataElement):
        if (first.is_implicit_VR, first.is_little_endian) != (ts.is_implicit_VR, ts.is_little_endian):
            # pydicom reads on with a guess; any other reader of the stored file would not
            raise ValueError(f"data set encoding does not match transfer syntax {ts}")
    uids = {keyword: _uid(ds, keyword, tag) for keyword, tag in _UID_TAGS.items()}
    return InstanceHeader(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_text(ds, "Modality"),
        accession_number=_text(ds, "AccessionNumber"),
        transfer_syntax_uid=transfer_syntax_uid,
    )


__all__ = ["HEADER_INFLATE_BYTES", "InstanceHeader", "read_header", "read_header_from"]
