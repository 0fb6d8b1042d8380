"""An urgent finding as an HL7 v2.5 ORU^R01 over MLLP, for a RIS that takes results that way.

A hook URL ``mllp://host:port`` in ``DICOMNODE_URGENT_HOOK_URLS`` gets this message instead of the
JSON POST (:mod:`dicomnode.delivery.hook`: the same row, retries and events). The message carries
no PID segment (the PATIENT group of ORU_R01 is optional, HL7 v2.5 section 7.3.1): the RIS files
it by the accession number, sent as the filler order number (OBR-3) and placer field 1 (OBR-18),
the IHE Radiology practice. Observations, all preliminary (``P``): the score (NM), the reading
priority (ST, abnormal flag ``A``), the Study Instance UID, the model and the SR's SOP Instance UID.

The message is built and the acknowledgement parsed by hl7apy; MLLP framing is the HL7 minimal
lower layer protocol (a 0x0B byte, the message, 0x1C 0x0D).
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

#: MLLP frame bytes: start block, end block and carriage return
START, END = b"\x0b", b"\x1c\x0d"
#: largest acknowledgement read (a real ACK is a few hundred bytes)
MAX_ACK_BYTES = 64 * 1024
#: MSA-1 codes that mean the receiver accepted the message (original and enhanced mode)
ACCEPTED = frozenset({"AA", "CA"})
#: sending application (MSH-3); MSH-4, the sending facility, is the node's AE title
SENDING_APPLICATION = "DICOMNODE"


def _escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (section 2.7), escape character first."""
    out = text.replace("\\", "\\E\\")
    for char, seq in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, seq)
    return out.replace("\r", " ").replace("\n", " ")


def oru_r01(body: dict[str, Any], *, control_id: str, now: datetime | None = None) -> str:
    """The ORU^R01 (ER7, segments separated by CR) of an urgent-finding body
    (:func:`dicomnode.delivery.hook.payload`); ``control_id`` goes to MSH-10 and comes back in MSA-2."""
    when = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    m = Message("ORU_R01", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = SENDING_APPLICATION
    m.msh.msh_4 = _escape(str(body.get("node_ae_title") or ""))
    m.msh.msh_7 = when
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = _escape(control_id)
    m.msh.msh_11 = "P"
    order = m.add_group("ORU_R01_PATIENT_RESULT").add_group("ORU_R01_ORDER_OBSERVATION")
    accession = _escape(str(body.get("accession_number") or ""))
    order.obr.obr_1 = "1"
    if accession:
        order.obr.obr_3 = accession
        order.obr.obr_18 = accession
    order.obr.obr_4 = "AI-TRIAGE^AI chest radiograph triage^L"
    order.obr.obr_22 = when
    order.obr.obr_25 = "P"
    observations = [
        ("NM", "AI-SCORE^Pneumonia probability^L", f"{float(body['score']):.4f}", ""),
        ("ST", "AI-PRIORITY^Reading priority^L", str(body.get("priority") or ""), "A"),
        ("ST", "STUDY-UID^Study Instance UID^L", str(body.get("study_instance_uid") or ""), ""),
        (
            "ST",
            "AI-MODEL^Model^L",
            f"{body.get('model_name', '')} {body.get('model_version', '')}".strip(),
            "",
        ),
        ("ST", "SR-UID^Result SR SOP Instance UID^L", str(body.get("sr_sop_instance_uid") or ""), ""),
    ]
    for i, (kind, code, value, flag) in enumerate(observations, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(i)
        obx.obx_2 = kind
        obx.obx_3 = code
        obx.obx_5 = _escape(value)
        if flag:
            obx.obx_8 = flag
        obx.obx_11 = "P"
    m.validate()
    return str(m.to_er7())


def send_mllp(url: str, message: str, *, timeout: float) -> tuple[str | None, str | None]:
    """Send ``message`` to ``mllp://host:port`` and read the acknowledgement: (MSA-1 code or None
    without one, error or None when accepted)."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return None, f"{url!r}: use mllp://host:port"
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(START + message.encode() + END)
            ack = b""
            while END not in ack:
                chunk = sock.recv(4096)
                if not chunk:
                    return None, "the receiver closed the connection without an acknowledgement"
                ack += chunk
                if len(ack) > MAX_ACK_BYTES:
                    return None, f"acknowledgement longer than {MAX_ACK_BYTES} bytes"
    except OSError as exc:  # refused, unreachable, timed out
        return None, f"{type(exc).__name__}: {exc}"[:300]
    text = ack.split(END, 1)[0].lstrip(START).decode(errors="replace")
    try:
        msa = parse_message(text.replace("\n", "\r"), find_groups=False).msa
        code, reason = str(msa.msa_1.value), str(msa.msa_3.value or "")
    except Exception as exc:  # not HL7, or no MSA segment
        return None, f"unreadable acknowledgement ({type(exc).__name__})"
    if code in ACCEPTED:
        return code, None
    return code, f"HL7 {code}{': ' + reason if reason else ''}"[:300]


__all__ = ["ACCEPTED", "MAX_ACK_BYTES", "SENDING_APPLICATION", "oru_r01", "send_mllp"]
