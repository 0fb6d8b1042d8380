"""Storage Commitment Push Model reports (PS3.4 J.3.3) as the listener receives them.

A PACS that committed to (or failed) our results sends an N-EVENT-REPORT-RQ on a new association
it requests, taking the SCP role by SCP/SCU role selection (Orthanc proposes SCU 0, SCP 1). The
listener accepts that context (:func:`dicomnode.net.contexts.supported_contexts`), keeps the data
set in memory up to :data:`MAX_REPORT_BYTES`, decodes it here and hands a
:class:`CommitmentReport` to its callback, whose status it answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.uid import UID

#: Storage Commitment Push Model SOP Class (PS3.4 J.3), and its well-known instance (J.3.5).
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Event Type IDs (PS3.4 J.3.3.1): all committed; some failed.
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2
#: A report listing ~20,000 objects fits; a longer one is refused and its association aborted.
MAX_REPORT_BYTES = 4 << 20


@dataclass(frozen=True)
class CommitmentReport:
    """One decoded N-EVENT-REPORT of the Storage Commitment Push Model."""

    calling_ae: str
    event_type: int
    transaction_uid: str
    committed: tuple[str, ...]  # SOP Instance UIDs of the Referenced SOP Sequence
    #: (SOP Instance UID, Failure Reason) of the Failed SOP Sequence
    failed: tuple[tuple[str, int | None], ...]


#: What the node does with a report: the DIMSE status to answer (0x0000 when recorded).
CommitmentCallback = Callable[[CommitmentReport], int]


def decode_report(calling_ae: str, event_type: int, transfer_syntax: str, data: bytes) -> CommitmentReport:
    """The report in an N-EVENT-REPORT-RQ's data set; ValueError when it has no Transaction UID."""
    ts = UID(transfer_syntax)
    ds = read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)
    uid = str(ds.get("TransactionUID", "") or "")
    if not uid:
        raise ValueError("storage commitment report without Transaction UID (0008,1195)")
    committed = tuple(
        str(item.get("ReferencedSOPInstanceUID", "")) for item in ds.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        (
            str(item.get("ReferencedSOPInstanceUID", "")),
            int(item.FailureReason) if item.get("FailureReason") is not None else None,
        )
        for item in ds.get("FailedSOPSequence", [])
    )
    return CommitmentReport(calling_ae, event_type, uid, committed, failed)


__all__ = [
    "EVENT_ALL_COMMITTED",
    "EVENT_SOME_FAILED",
    "MAX_REPORT_BYTES",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "CommitmentCallback",
    "CommitmentReport",
    "decode_report",
]
