"""The STOW-RS answer (PS3.18 10.5.3): which instances were stored, which failed and why.

Pure: outcomes in, (HTTP status, ``application/dicom+json`` body) out. The Failure Reason of an
instance is the DIMSE status a C-STORE of it would have been answered (PS3.18 Table 10.5.3-2 uses
the same codes; :mod:`dicomnode.net.status`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydicom import Dataset

from dicomnode.dicomweb.parts import PartOutcome
from dicomnode.net import status

__all__ = ["MEDIA_TYPE", "stow_response"]

#: The answer's media type (PS3.18 8.7.3.2)
MEDIA_TYPE = "application/dicom+json"

#: HTTP statuses of a STOW-RS answer (PS3.18 10.5.3.1)
ALL_STORED = 200
SOME_STORED = 202  # some stored, some failed (or stored with a warning)
NONE_STORED = 409


def _item(outcome: PartOutcome) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = outcome.sop_class_uid
    item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    return item


def stow_response(outcomes: Sequence[PartOutcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body (PS3.18 F.2) of a request whose parts ended as ``outcomes``:
    200 when every instance was stored, 409 when none was, 202 in between."""
    body = Dataset()
    stored, failed = [], []
    for outcome in outcomes:
        item = _item(outcome)
        if outcome.status == status.SUCCESS:
            stored.append(item)
        else:
            item.FailureReason = outcome.status
            failed.append(item)
    if stored:
        body.ReferencedSOPSequence = stored
    if failed:
        body.FailedSOPSequence = failed
    code = ALL_STORED if not failed else NONE_STORED if not stored else SOME_STORED
    return code, body.to_json_dict()
