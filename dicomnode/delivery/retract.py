"""Withdraw a model version's results at the PACS: IHE IOCM rejection notes (``dicomnode retract``).

When a model version is withdrawn (a safety problem found after go-live), the SRs and heatmaps it
delivered are still in the PACS, and a worklist may still sort by them. For each study that got
results from the version, the node builds one Key Object Selection Document whose title is
(113037, DCM, "Rejected for Patient Safety Reasons"), the IHE IOCM (Imaging Object Change
Management) rejection note, referencing every SR and SC of that version it delivered for the study,
and sends it to every destination that accepted one of them (as recorded in SQL, whether or not the
destination is still configured). An IOCM-aware PACS hides or deletes the rejected instances; one
that is not (Orthanc, for one) stores the note in the study beside them, where a reader sees it
as a "Rejected for Patient Safety Reasons" series.

Every send is recorded as an event, ``results.retracted`` or ``results.retract_failed`` (model
version, destination, the note's and the rejected SOP Instance UIDs, the DIMSE status), so
``dicomnode audit events --kind results.retracted`` and ``audit events --study UID`` show it. The
note's UIDs are derived from the study and version, so retracting again sends the same note (a
PACS replaces it, or keeps the one it has). The note is also written beside the results
(``results/<study>/<uid>.dcm``).

Not done here: stopping the version from analysing more studies (install another model:
docs/models.md), and the SR class a destination got through the Enhanced SR fallback, which the
note references under the class the node built (Comprehensive 3D SR).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from io import BytesIO

import highdicom as hd
import pydicom
import structlog
from pydicom import Dataset
from pydicom.sr.coding import Code
from sqlalchemy import select

from dicomnode.config import Destination, Settings, parse_destinations
from dicomnode.delivery.rounds import result_file
from dicomnode.delivery.sender import send_once
from dicomnode.delivery.stow import StowAuth
from dicomnode.delivery.stow import send_once as stow_send_once
from dicomnode.results.uids import derived_uid, series_description
from dicomnode.storage import write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, DeliveryAttempt, Study
from dicomnode.store.records import add_event

__all__ = [
    "REJECTED_FOR_PATIENT_SAFETY",
    "RETRACTION_SERIES_NUMBER",
    "Retraction",
    "build_rejection_note",
    "delivered_results",
    "retract_version",
]

log = structlog.get_logger("dicomnode.retract")

#: The IOCM rejection note's title (CID 7011, PS3.16).
REJECTED_FOR_PATIENT_SAFETY = Code("113037", "DCM", "Rejected for Patient Safety Reasons")
#: Series Number of the rejection notes (the SR is 9901, the heatmap 9902).
RETRACTION_SERIES_NUMBER = 9903
RETRACTION_DESCRIPTIONS = (
    "AI results of {version} withdrawn: patient safety",
    "AI {version} withdrawn",
)


@dataclass(frozen=True)
class Retraction:
    """One rejection note for one study, sent (or not) to one destination."""

    study_uid: str
    model_version: str
    destination: str
    note_sop_instance_uid: str | None
    rejected: tuple[str, ...]
    success: bool
    status: int | None
    error: str | None


def delivered_results(store: Store, model_version: str) -> dict[str, dict[str, set[str]]]:
    """study UID -> destination -> SOP Instance UIDs of results of ``model_version`` that the
    destination accepted (a successful delivery attempt), over every analysis by the version."""
    with store.session() as s:
        rows = s.execute(
            select(Study.study_uid, DeliveryAttempt.destination, DeliveryAttempt.sop_instance_uid)
            .join(Analysis, Analysis.id == DeliveryAttempt.analysis_id)
            .join(Study, Study.id == Analysis.study_id)
            .where(Analysis.model_version == model_version, DeliveryAttempt.success.is_(True))
            .distinct()
        ).all()
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for study_uid, destination, sop_uid in rows:
        out[study_uid][destination].add(sop_uid)
    return {study: dict(per_dest) for study, per_dest in out.items()}


def build_rejection_note(results: list[Dataset], model_version: str, *, manufacturer: str) -> Dataset:
    """The IOCM rejection note (a KOS titled :data:`REJECTED_FOR_PATIENT_SAFETY`) referencing
    ``results``, all of one study; its UIDs are derived from the study and ``model_version``."""
    if not results:
        raise ValueError("no results to reject")
    study_uid = str(results[0].StudyInstanceUID)
    if any(str(ds.StudyInstanceUID) != study_uid for ds in results):
        raise ValueError("a rejection note references the instances of one study")
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_PATIENT_SAFETY,
        referenced_objects=results,
        description=f"Model {model_version} withdrawn; its results here are rejected"[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=results,
        content=content,
        series_instance_uid=derived_uid(study_uid, model_version, "rejection-series"),
        series_number=RETRACTION_SERIES_NUMBER,
        sop_instance_uid=derived_uid(study_uid, model_version, "rejection-note"),
        instance_number=1,
        manufacturer=manufacturer,
    )
    note.SeriesDescription = series_description(RETRACTION_DESCRIPTIONS, model_version)
    return note


def _destination(text: str) -> Destination | None:
    try:
        parsed = parse_destinations(text)
    except Exception:
        return None
    return parsed[0] if len(parsed) == 1 else None


def _read(settings: Settings, study_uid: str, uids: set[str]) -> tuple[list[Dataset], list[str]]:
    """The stored result files with these UIDs (sorted), and the UIDs whose file is gone."""
    found: list[Dataset] = []
    missing: list[str] = []
    for uid in sorted(uids):
        path = result_file(settings, study_uid, uid)
        if path.is_file():
            found.append(pydicom.dcmread(path))
        else:
            missing.append(uid)
    return found, missing


def retract_version(
    settings: Settings, store: Store, model_version: str, *, dry_run: bool = False
) -> list[Retraction]:
    """Send a rejection note for every study ``model_version`` delivered results for, to each
    destination that accepted them; record each send as an event. ``dry_run``: build nothing,
    send nothing, record nothing: the sends that would be made (``success`` False, no note UID)."""
    out: list[Retraction] = []
    for study_uid, per_destination in sorted(delivered_results(store, model_version).items()):
        every = set().union(*per_destination.values())
        if dry_run:
            out += [
                Retraction(study_uid, model_version, d, None, tuple(sorted(every)), False, None, "dry run")
                for d in sorted(per_destination)
            ]
            continue
        results, missing = _read(settings, study_uid, every)
        note: Dataset | None = None
        error = None
        if missing:
            error = f"result files gone ({len(missing)} of {len(every)}): {', '.join(missing)}"
        if results:
            try:
                note = build_rejection_note(results, model_version, manufacturer=_manufacturer(results))
                write_atomic(result_file(settings, study_uid, str(note.SOPInstanceUID)), _encode(note))
            except Exception as exc:  # a result file the note cannot cite: say which study, go on
                note, error = None, f"rejection note not built: {type(exc).__name__}: {exc}"[:500]
        rejected = tuple(str(ds.SOPInstanceUID) for ds in results) if note is not None else ()
        for text in sorted(per_destination):
            dest = _destination(text)
            if note is None or dest is None:
                why = error or f"destination {text!r} recorded in SQL cannot be parsed"
                out.append(
                    _record(store, Retraction(study_uid, model_version, text, None, (), False, None, why))
                )
                continue
            if dest.is_stow:  # the configured entry: its ca=/cert= options and our credentials
                dest = next((d for d in settings.destinations if str(d) == text), dest)
                attempt = stow_send_once([note], dest, auth=StowAuth.from_settings(settings))[0]
            else:
                attempt = send_once([note], dest, calling_ae=settings.ae_title)[0]
            out.append(
                _record(
                    store,
                    Retraction(
                        study_uid,
                        model_version,
                        text,
                        str(note.SOPInstanceUID),
                        rejected,
                        attempt.success,
                        attempt.status,
                        attempt.error if not attempt.success else error,
                    ),
                )
            )
    return out


def _manufacturer(results: list[Dataset]) -> str:
    return str(results[0].get("Manufacturer", "") or "dicomnode")


def _encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _record(store: Store, r: Retraction) -> Retraction:
    kind = "results.retracted" if r.success else "results.retract_failed"
    add_event(
        store,
        kind,
        r.study_uid,
        model_version=r.model_version,
        destination=r.destination,
        note_sop_instance_uid=r.note_sop_instance_uid,
        rejected=list(r.rejected),
        status=r.status,
        error=r.error,
    )
    log.info(kind, study_uid=r.study_uid, destination=r.destination, model_version=r.model_version)
    return r
