"""Which received instances may re-open an analysed study: no feedback loops with the PACS.

The most common routing rule on a PACS, "forward CR/DX studies to the AI node" (an Orthanc
``OnStableStudy`` rule, a PACS auto-route on study stability), sends the *whole* study each time
it changes: the images again, and the SR and heatmap SC the node delivered. Were each of them to
re-open the study, the node would analyse and deliver again, the PACS would see a change and
forward again: one extra analysis per study, and an endless loop where the PACS overwrites
instances it already holds (Orthanc's ``OverwriteInstances``). So an instance that arrives for a
study that has already left RECEIVING is stored (Success: the forward must not fail and be retried
for ever) and recorded, but does not re-open the study, when it is

- :data:`PRODUCED_HERE`: one of the node's own results (its SOP Instance UID is the SR or SC of
  one of the study's analyses, as recorded in SQL);
- :data:`NOT_READ`: of a SOP class the model never reads (SR, KOS, PR, every class but CR/DX,
  :data:`READ_SOP_CLASSES`, the classes of :data:`dicomnode.model.selection.PROJECTION_SOP_CLASSES`,
  and Secondary Capture, which the model reads with ``DICOMNODE_SELECT_SECONDARY_CAPTURE``: an SC
  that is not the node's own heatmap may re-open the study): it cannot change the result;
- :data:`UNCHANGED`: an instance the node already holds, sent again with the same data set, byte
  for byte (the File Meta Information, which names the sender, aside).

Everything else re-opens it as before: a new image, or a stored image sent again with another data
set. The decision is :attr:`dicomnode.store.records.InstanceRecord.passive`; the row records it as an
``instance.not_reopening`` event naming the reason (never patient data).
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import select

from dicomnode.receive.header import InstanceHeader
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Study

__all__ = [
    "NOT_READ",
    "PRODUCED_HERE",
    "READ_SOP_CLASSES",
    "SECONDARY_CAPTURE",
    "UNCHANGED",
    "dataset_offset",
    "not_reopening_reason",
    "own_result_uids",
    "passive_reason",
    "same_dataset",
]

PRODUCED_HERE = "produced by this node"
NOT_READ = "not read by the model"
UNCHANGED = "re-sent unchanged"

#: The SOP classes the model reads (receive may not import dicomnode.model: the same set as
#: ``dicomnode.model.selection.PROJECTION_SOP_CLASSES``, which a test holds them to).
READ_SOP_CLASSES = frozenset(
    {
        str(ComputedRadiographyImageStorage),
        str(DigitalXRayImageStorageForPresentation),
        str(DigitalXRayImageStorageForProcessing),
    }
)

#: Secondary Capture: read by the model only with DICOMNODE_SELECT_SECONDARY_CAPTURE (a setting
#: the receive path does not see), so one that is not the node's own heatmap may re-open a study.
SECONDARY_CAPTURE = str(SecondaryCaptureImageStorage)

_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + "DICM"
_CHUNK = 1 << 20


def dataset_offset(head: bytes) -> int:
    """Where the data set starts in a Part 10 file that begins with ``head``: after the File Meta
    Information, whose length its first element, (0002,0000) UL, gives (PS3.10 7.1). Raises
    ValueError when ``head`` is not such a file."""
    if len(head) < _PREAMBLE_AND_PREFIX + 12 or head[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    group, element, vr, length = struct.unpack_from("<HH2sH", head, _PREAMBLE_AND_PREFIX)
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise ValueError("the File Meta Information has no group length")
    (group_length,) = struct.unpack_from("<L", head, _PREAMBLE_AND_PREFIX + 8)
    return _PREAMBLE_AND_PREFIX + 12 + int(group_length)


def same_dataset(new: str | Path, old: str | Path) -> bool:
    """Whether two stored Part 10 files hold the same data set, byte for byte (their File Meta
    Information, with the sender's AE title, may differ). False when either cannot be read."""
    try:
        with open(new, "rb") as a, open(old, "rb") as b:
            start_a = dataset_offset(a.read(4096))
            start_b = dataset_offset(b.read(4096))
            size_a = a.seek(0, 2) - start_a
            size_b = b.seek(0, 2) - start_b
            if size_a != size_b:
                return False
            a.seek(start_a)
            b.seek(start_b)
            while True:
                chunk = a.read(_CHUNK)
                if chunk != b.read(_CHUNK):
                    return False
                if not chunk:
                    return True
    except (OSError, ValueError, struct.error):
        return False


def own_result_uids(store: Store, study_uid: str) -> frozenset[str]:
    """The SOP Instance UIDs of the results the node made for ``study_uid``: the SR and SC of
    every analysis of it, every revision and model version, as SQL recorded them."""
    with store.session() as s:
        rows = s.execute(
            select(Analysis.sr_sop_instance_uid, Analysis.sc_sop_instance_uid)
            .join(Study, Study.id == Analysis.study_id)
            .where(Study.study_uid == study_uid)
        ).all()
    return frozenset(u for row in rows for u in row if u)


def not_reopening_reason(
    store: Store,
    *,
    study_uid: str,
    sop_instance_uid: str,
    sop_class_uid: str,
    unchanged: bool = False,
) -> str | None:
    """Why this instance must not re-open its study once analysed (one of :data:`PRODUCED_HERE`,
    :data:`NOT_READ`, :data:`UNCHANGED`, with detail), or None: it may.

    ``unchanged``: the caller found the instance already stored with the same data set
    (:func:`same_dataset`). The database is asked only for instances the model does not read (to
    tell the node's own results from other objects); should it fail, the instance is still one the
    model does not read."""
    if sop_class_uid not in READ_SOP_CLASSES:
        try:
            if sop_instance_uid in own_result_uids(store, study_uid):
                return f"{PRODUCED_HERE} (result of an earlier analysis)"
        except Exception:  # the database is down: the SOP class alone decides
            pass
        if sop_class_uid != SECONDARY_CAPTURE:
            return f"{NOT_READ} (SOP class {sop_class_uid})"
    if unchanged:
        return f"{UNCHANGED} (same data set as the stored instance)"
    return None


def passive_reason(store: Store, hdr: InstanceHeader, received: str | Path, target: Path) -> str | None:
    """:func:`not_reopening_reason` for an instance received into ``received`` and about to be
    stored at ``target``; call it before the move, while ``target`` still holds what was stored
    before (a re-send of the same data set is then :data:`UNCHANGED`)."""
    unchanged = target.is_file() and same_dataset(received, target)
    return not_reopening_reason(
        store,
        study_uid=hdr.study_uid,
        sop_instance_uid=hdr.sop_instance_uid,
        sop_class_uid=hdr.sop_class_uid,
        unchanged=unchanged,
    )
