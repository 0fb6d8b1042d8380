"""Result revisions: which earlier SR a new result of the same study supersedes.

A result whose content changed (a late instance re-opened the study, or another model version
scored it) has new UIDs (:func:`dicomnode.results.uids.result_uids` hashes the analysed SOP
Instance UIDs), so a PACS that keeps the first copy of a UID (Orthanc's default, dcm4chee's
"ignore duplicates") stores it beside the old one instead of dropping it. Its SR lists the earlier
SR in the Predecessor Documents Sequence (PS3.3 C.17.2.3), the standard way to say "this document
replaces that one"; a reader of the study takes the newest SR whose predecessors name the others.

The earlier SR's Series and SOP Class UIDs come from its result file (written by the pipeline,
header only read here); when the file is gone (purged by retention, removed by hand) the new SR
goes out without the reference and ``results.predecessor_missing`` says which UID it would have
named.
"""

from __future__ import annotations

import pydicom
import structlog
from pydicom import Dataset
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.rounds import result_file
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Study
from dicomnode.store.records import add_event

__all__ = ["earlier_sr_uid", "predecessor_srs"]

log = structlog.get_logger("dicomnode.delivery.revisions")

#: What the Predecessor Documents Sequence needs of an earlier SR.
_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")


def earlier_sr_uid(store: Store, study_uid: str, sr_uid: str) -> str | None:
    """The SR SOP Instance UID of the study's latest analysis that built one other than ``sr_uid``."""
    with store.session() as s:
        return s.scalars(
            select(Analysis.sr_sop_instance_uid)
            .join(Study, Analysis.study_id == Study.id)
            .where(
                Study.study_uid == study_uid,
                Analysis.sr_sop_instance_uid.is_not(None),
                Analysis.sr_sop_instance_uid != sr_uid,
            )
            .order_by(Analysis.id.desc())
            .limit(1)
        ).first()


def predecessor_srs(settings: Settings, store: Store, study_uid: str, sr_uid: str) -> list[Dataset]:
    """The earlier SR the study's new SR ``sr_uid`` revises, as the header highdicom's
    ``previous_versions`` takes; empty for a first result or a re-send of the same one."""
    earlier = earlier_sr_uid(store, study_uid, sr_uid)
    if earlier is None:
        return []
    path = result_file(settings, study_uid, earlier)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_KEYWORDS))
        header = Dataset()
        for keyword in _KEYWORDS:
            setattr(header, keyword, str(getattr(ds, keyword)))
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as exc:
        log.warning(
            "results.predecessor_missing", study_uid=study_uid, predecessor=earlier, error=type(exc).__name__
        )
        add_event(store, "results.predecessor_missing", study_uid, predecessor=earlier, sr=sr_uid)
        return []
    add_event(store, "results.revised", study_uid, predecessor=earlier, sr=sr_uid)
    return [header]
