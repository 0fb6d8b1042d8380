"""The Part 10 preamble and File Meta Information put in front of every received data set (PS3.10 7.1).

Written by hand (explicit VR little endian): it is the same handful of elements for every instance,
and pydicom's general writer costs more per instance than the rest of the C-STORE can spare
(docs/sizing.md). The tags come from pydicom's dictionary; the parts that never change are encoded
once, at import.
"""

from __future__ import annotations

import struct
import uuid

from pydicom.datadict import tag_for_keyword
from pydicom.uid import UID

from dicomnode import __version__

#: Identifies dicomnode in A-ASSOCIATE-AC and in the file meta of what it stores (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = UID("2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "https://dicomnode.org/").int))
#: Our Implementation Version Name (at most 16 characters, PS3.7 D.3.3.2.2).
IMPLEMENTATION_VERSION_NAME = ("DICOMNODE_" + __version__.replace(".", ""))[:16]

_LENGTH = struct.Struct("<H")


def _prefix(keyword: str, vr: bytes) -> bytes:
    """Group, element and VR of a file meta element with a 2-byte length (PS3.5 7.1.2)."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr)


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


_GROUP_LENGTH = _prefix("FileMetaInformationGroupLength", b"UL") + _LENGTH.pack(4)
_SOP_CLASS = _prefix("MediaStorageSOPClassUID", b"UI")
_SOP_INSTANCE = _prefix("MediaStorageSOPInstanceUID", b"UI")
_TRANSFER_SYNTAX = _prefix("TransferSyntaxUID", b"UI")
_SOURCE_AE = _prefix("SourceApplicationEntityTitle", b"AE")
_PREAMBLE = b"\x00" * 128 + b"DICM"
# OB has a 4-byte length after two reserved bytes (PS3.5 7.1.2); the version is 00 01
_VERSION = _prefix("FileMetaInformationVersion", b"OB") + struct.pack("<HL", 0, 2) + b"\x00\x01"
_IMPLEMENTATION = b"".join(
    prefix + _LENGTH.pack(len(value)) + value
    for prefix, value in (
        (
            _prefix("ImplementationClassUID", b"UI"),
            _even(str(IMPLEMENTATION_CLASS_UID).encode("ascii"), b"\x00"),
        ),
        (
            _prefix("ImplementationVersionName", b"SH"),
            _even(IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "),
        ),
    )
)


def encode_file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information of one instance (PS3.10 7.1).

    ``source_ae`` (the calling AE title) goes into Source Application Entity Title when not empty.
    Raises ValueError for UIDs that cannot go into a file meta (the C-STORE is then refused)."""
    uids = []
    for uid in (sop_class, sop_instance, transfer_syntax):
        raw = uid.encode("ascii")  # UnicodeEncodeError is a ValueError
        if not 0 < len(raw) <= 64:
            raise ValueError(f"UID of {len(raw)} characters")
        uids.append(raw + b"\x00" if len(raw) % 2 else raw)
    body = (
        _VERSION
        + _SOP_CLASS
        + _LENGTH.pack(len(uids[0]))
        + uids[0]
        + _SOP_INSTANCE
        + _LENGTH.pack(len(uids[1]))
        + uids[1]
        + _TRANSFER_SYNTAX
        + _LENGTH.pack(len(uids[2]))
        + uids[2]
        + _IMPLEMENTATION
    )
    ae = source_ae.encode("ascii", "replace")[:16]
    if ae:
        ae = ae + b" " if len(ae) % 2 else ae
        body += _SOURCE_AE + _LENGTH.pack(len(ae)) + ae
    return _PREAMBLE + _GROUP_LENGTH + struct.pack("<L", len(body)) + body


__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "encode_file_meta"]
