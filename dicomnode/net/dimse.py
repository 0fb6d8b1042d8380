"""DIMSE command sets: decode a request, encode a response (implicit VR little endian, PS3.7 6.3.1, E.1).

Only the C-STORE and C-ECHO services are spoken here (PS3.7 9.3.1, 9.3.5), and N-EVENT-REPORT for
storage commitment reports (10.3.1); any other request gets
:data:`dicomnode.net.status.UNRECOGNISED_OPERATION`. Command Field values come from pynetdicom's
message table, tags from pydicom's dictionary; both are looked up once, at import, so the
per-message path uses plain integers.
"""

from __future__ import annotations

import struct

from pydicom.datadict import tag_for_keyword
from pynetdicom.dimse_messages import _MESSAGE_TYPES

from dicomnode.net import status
from dicomnode.net.pdu import ProtocolError

_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, length
_US = struct.Struct("<H")

#: Command Field value by message name ("C-STORE-RQ": 0x0001, ...), from pynetdicom (PS3.7 E.1).
COMMAND_FIELDS: dict[str, int] = {name: field for field, (name, _) in _MESSAGE_TYPES.items()}
C_STORE_RQ = COMMAND_FIELDS["C-STORE-RQ"]
C_STORE_RSP = COMMAND_FIELDS["C-STORE-RSP"]
C_ECHO_RQ = COMMAND_FIELDS["C-ECHO-RQ"]
C_ECHO_RSP = COMMAND_FIELDS["C-ECHO-RSP"]
C_CANCEL_RQ = COMMAND_FIELDS["C-CANCEL-RQ"]
#: Storage Commitment reports to our requests (PS3.7 10.3.1; :mod:`dicomnode.net.commitment_report`).
N_EVENT_REPORT_RQ = COMMAND_FIELDS["N-EVENT-REPORT-RQ"]
#: The bit that makes a request's Command Field its response's (PS3.7 E.1).
RESPONSE_BIT = 0x8000
#: Command Data Set Type when no data set follows; any other value means one does (PS3.7 E.1).
NO_DATA_SET = 0x0101


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None and tag >> 16 == 0x0000, keyword  # command elements are group 0000
    return int(tag)


AFFECTED_SOP_CLASS_UID = _tag("AffectedSOPClassUID")
COMMAND_FIELD = _tag("CommandField")
MESSAGE_ID = _tag("MessageID")
MESSAGE_ID_BEING_RESPONDED_TO = _tag("MessageIDBeingRespondedTo")
COMMAND_DATA_SET_TYPE = _tag("CommandDataSetType")
STATUS = _tag("Status")
AFFECTED_SOP_INSTANCE_UID = _tag("AffectedSOPInstanceUID")
EVENT_TYPE_ID = _tag("EventTypeID")
_GROUP_LENGTH = _ELEMENT.pack(0, _tag("CommandGroupLength"), 4)
_NO_DATA_SET_VALUE = _US.pack(NO_DATA_SET)


def decode_command(data: bytes) -> dict[int, bytes]:
    """Raw values of a command set by tag; raises :class:`ProtocolError` when it does not parse."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("command set ends inside an element header")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            raise ProtocolError(f"command set element ({group:04X},{elem:04X}) is malformed")
        out[elem] = data[pos : pos + length]
        pos += length
    return out


def command_us(values: dict[int, bytes], tag: int) -> int | None:
    """A US element of a decoded command set, or None when it is missing or not 2 bytes long."""
    raw = values.get(tag & 0xFFFF)
    return _US.unpack(raw)[0] if raw is not None and len(raw) == 2 else None


def command_ui(values: dict[int, bytes], tag: int) -> str | None:
    """A UI element of a decoded command set without its padding, or None when it is missing."""
    raw = values.get(tag & 0xFFFF)
    if raw is None:
        return None
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set with its group length; ``elements`` as (tag, raw value), in tag order."""
    body = b"".join(_ELEMENT.pack(0, tag & 0xFFFF, len(v)) + v for tag, v in elements)
    return _GROUP_LENGTH + struct.pack("<L", len(body)) + body


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def response(command: int, message_id: int, sop_class: str, sop_instance: str | None, code: int) -> bytes:
    """The command set of a response without a data set: ``command`` is its Command Field,
    ``message_id`` the request's Message ID, ``code`` the status."""
    elements = [
        (AFFECTED_SOP_CLASS_UID, _uid_value(sop_class)),
        (COMMAND_FIELD, _US.pack(command)),
        (MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(message_id)),
        (COMMAND_DATA_SET_TYPE, _NO_DATA_SET_VALUE),
        (STATUS, _US.pack(code)),
    ]
    if sop_instance is not None:
        elements.append((AFFECTED_SOP_INSTANCE_UID, _uid_value(sop_instance)))
    return encode_command(elements)


def c_store_rsp(message_id: int, sop_class: str, sop_instance: str | None, code: int) -> bytes:
    """C-STORE-RSP (PS3.7 9.3.1.2) with status ``code``."""
    return response(C_STORE_RSP, message_id, sop_class, sop_instance, code)


def c_echo_rsp(message_id: int, sop_class: str) -> bytes:
    """C-ECHO-RSP (PS3.7 9.3.5.2): always Success."""
    return response(C_ECHO_RSP, message_id, sop_class, None, status.SUCCESS)


__all__ = [
    "AFFECTED_SOP_CLASS_UID",
    "AFFECTED_SOP_INSTANCE_UID",
    "COMMAND_DATA_SET_TYPE",
    "COMMAND_FIELD",
    "COMMAND_FIELDS",
    "C_CANCEL_RQ",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_STORE_RQ",
    "C_STORE_RSP",
    "EVENT_TYPE_ID",
    "MESSAGE_ID",
    "MESSAGE_ID_BEING_RESPONDED_TO",
    "NO_DATA_SET",
    "N_EVENT_REPORT_RQ",
    "RESPONSE_BIT",
    "STATUS",
    "c_echo_rsp",
    "c_store_rsp",
    "command_ui",
    "command_us",
    "decode_command",
    "encode_command",
    "response",
]
