"""Read one of our pneumonia triage SRs back into a flat summary (worklist, audits, tests)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)
from pydicom.valuerep import DA, TM

from dicomnode.results import codes
from dicomnode.results.finding import Priority

__all__ = ["SRSummary", "read_sr"]

#: SR SOP classes that can carry our TID 1500 report, and highdicom's class for each.
_SR_CLASSES: dict[str, type[hd.sr.EnhancedSR | hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR]] = {
    Comprehensive3DSRStorage: hd.sr.Comprehensive3DSR,
    ComprehensiveSRStorage: hd.sr.ComprehensiveSR,
    EnhancedSRStorage: hd.sr.EnhancedSR,
}


@dataclass(frozen=True)
class SRSummary:
    """What one pneumonia triage SR says."""

    study_uid: str
    sop_instance_uid: str
    probability: float
    present: bool
    priority: Priority
    model_name: str
    model_version: str
    #: the SR's Content Date and Time (when the result was made): timezone-aware when the SR
    #: carries Timezone Offset From UTC, else naive (the local time of the node that made it);
    #: None when absent
    observed_at: dt.datetime | None


def read_sr(source: Dataset | str | Path) -> SRSummary:
    """Summarise a pneumonia triage SR given as a dataset or a file path.

    Raises ValueError when ``source`` is not an SR, has no TID 1500 measurement group for
    pneumonia (SCT 233604007), or lacks its probability, presence or priority.
    """
    if isinstance(source, Dataset):
        ds = source
        where = f"dataset {source.get('SOPInstanceUID', '(no SOPInstanceUID)')}"
    else:
        where = str(source)
        try:
            ds = pydicom.dcmread(source)
        except InvalidDicomError as exc:
            raise ValueError(f"{where} is not a DICOM file: {exc}") from exc

    sop_class = str(ds.get("SOPClassUID", ""))
    sr_class = _SR_CLASSES.get(sop_class)
    if sr_class is None:
        raise ValueError(
            f"{where} is not a pneumonia triage SR: SOP class {sop_class or '(none)'} is not "
            "Comprehensive 3D, Comprehensive or Enhanced SR"
        )
    if not codes.same_code(_first(ds, "ConceptNameCodeSequence"), dcm_codes.DCM.ImagingMeasurementReport):
        raise ValueError(f"{where} is not a pneumonia triage SR: its root is not TID 1500")
    try:
        sr = sr_class.from_dataset(ds, copy=True)
        report = sr.content
        if not isinstance(report, hd.sr.MeasurementReport):
            report = hd.sr.MeasurementReport.from_sequence(report)
        groups = report.get_image_measurement_groups(finding_type=codes.PNEUMONIA)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where} is not a readable TID 1500 report: {exc}") from exc
    if not groups:
        raise ValueError(f"{where} has no measurement group for pneumonia (SCT 233604007)")
    if len(groups) > 1:
        raise ValueError(f"{where} has {len(groups)} pneumonia groups; ours have exactly one")
    group = groups[0]

    probabilities = group.get_measurements(name=codes.PROBABILITY)
    if len(probabilities) != 1:
        raise ValueError(f"{where}: expected one Probability (DCM 122157), found {len(probabilities)}")
    probability = float(probabilities[0].value)

    presence = _evaluation(group, codes.PNEUMONIA, where)
    if codes.same_code(presence, codes.FINDING_PRESENT):
        present = True
    elif codes.same_code(presence, codes.FINDING_ABSENT):
        present = False
    else:
        raise ValueError(f"{where}: pneumonia evaluation is {presence.CodeValue}, not Present/Absent")

    level = _evaluation(group, codes.PRIORITY, where)
    if codes.same_code(level, codes.PRIORITY_URGENT):
        priority = Priority.URGENT
    elif codes.same_code(level, codes.PRIORITY_ROUTINE):
        priority = Priority.ROUTINE
    else:
        raise ValueError(f"{where}: priority is {level.CodeValue}, not Urgent/Routine")

    return SRSummary(
        study_uid=str(ds.StudyInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        probability=probability,
        present=present,
        priority=priority,
        model_name=_text(group, dcm_codes.DCM.AlgorithmName, where),
        model_version=_text(group, dcm_codes.DCM.AlgorithmVersion, where),
        observed_at=_content_datetime(ds),
    )


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _evaluation(
    group: hd.sr.MeasurementsAndQualitativeEvaluations, name: object, where: str
) -> hd.sr.CodedConcept:
    found = group.get_qualitative_evaluations(name=name)  # type: ignore[arg-type]
    if len(found) != 1:
        meaning = getattr(name, "meaning", name)
        raise ValueError(f"{where}: expected one '{meaning}' evaluation, found {len(found)}")
    return found[0].value  # type: ignore[return-value]  # highdicom annotates it as a number


def _text(group: hd.sr.MeasurementsAndQualitativeEvaluations, name: object, where: str) -> str:
    items = hd.sr.utils.find_content_items(group[0], name=name, recursive=True)  # type: ignore[arg-type]
    if not items:
        raise ValueError(f"{where}: no '{getattr(name, 'meaning', name)}' in the pneumonia group")
    return str(items[0].TextValue)


def _content_datetime(ds: Dataset) -> dt.datetime | None:
    """Content Date + Time; aware when the SR has Timezone Offset From UTC, else naive local."""
    date, time = ds.get("ContentDate"), ds.get("ContentTime")
    if not date or not time:
        return None
    try:
        day, clock = DA(date), TM(time)
    except ValueError:
        return None
    if not isinstance(day, dt.date) or not isinstance(clock, dt.time):
        return None
    return dt.datetime.combine(day, clock, tzinfo=_utc_offset(ds.get("TimezoneOffsetFromUTC")))


def _utc_offset(value: object) -> dt.timezone | None:
    """PS3.3 C.12.1.1.8 "+HHMM"/"-HHMM" as a timezone; None when absent or malformed."""
    text = str(value or "")
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:])
    return dt.timezone(dt.timedelta(minutes=minutes if text[0] == "+" else -minutes))
