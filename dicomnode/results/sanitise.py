"""The header attributes the results copy from a source image, each made valid DICOM first.

Real modalities send values DICOM does not allow: PatientSex ``U`` or ``m``, a birth date ``1960``,
a study date ``2024-01-01``, a time ``25:61``, an age ``45``, strings longer than their VR allows,
a Specific Character Set of ``ISO_IR 6`` that highdicom does not know. highdicom refuses many of
them while it builds the SR or SC (a ValueError that quotes the value), after the model has run,
so one sloppy header would cost a study its result. :func:`sanitised_copy` copies only the
attributes the results need (never pixel data) and makes each one valid, by these rules:

==========================  ======================================================================
value                       what the copy holds
==========================  ======================================================================
enumerated CS (PatientSex)  the value upper-cased or spelled out mapped (``m``, ``male`` -> ``M``)
                            when that is unambiguous; otherwise dropped (``U`` is not M, F or O)
other CS                    upper-cased and trimmed to 16 characters; dropped if still not CS
DA, TM, DT                  kept only when it is one value in the standard's syntax that is a real
                            date or time (PS3.5 Table 6.2-1); otherwise dropped. A year-only date
                            (``1960``) is dropped too: a DA is YYYYMMDD, and padding it would
                            invent a birthday
AS (PatientAge)             ``45Y`` -> ``045Y``; without a unit (``45``) dropped: days, weeks,
                            months or years cannot be told apart
DS                          dropped if not a number; a number longer than 16 characters rounded
                            to fit
IS                          dropped if not an integer of at most 12 characters
AE, SH, LO, ST, LT, PN      trimmed to the VR's maximum length (PN: each component group to 64)
a single-valued attribute   dropped when it carries several values (VM 1 in the dictionary)
with several values
SpecificCharacterSet        kept when highdicom can write it; otherwise left out when every copied
                            text is ASCII (the default repertoire) and ISO_IR 192 (UTF-8) when
                            not: the values are already decoded, so UTF-8 keeps every character
UI, binary, sequences       copied unchanged (a UID is never altered; items are not inspected)
==========================  ======================================================================

A dropped Type 2 attribute is written empty by :func:`dicomnode.results.evidence.evidence_header`.
Values are never logged or returned: only the keywords that changed, for the caller to log.
"""

from __future__ import annotations

import copy
import datetime
import re
from collections.abc import Callable, Iterable
from typing import TypeVar

import highdicom as hd
from pydicom import DataElement, Dataset
from pydicom.datadict import dictionary_VM, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, MAX_VALUE_LEN, TM, format_number_as_ds

__all__ = ["MINIMAL_KEYWORDS", "RESULT_KEYWORDS", "changed_keywords", "full_or_minimal", "sanitised_copy"]

#: What the SR's evidence, image library and source references and the SC's reference read:
#: identity, image geometry and the view (highdicom TID 1601-1604, dicomnode.results.evidence).
_IMAGE = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PatientOrientation",
    "ImagerPixelSpacing",
    "PixelSpacing",
    "NominalScannedPixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ViewPosition",
    "BodyPartExamined",
    "Laterality",
)

#: Root attributes of the Patient (PS3.3 C.7.1.1), Clinical Trial Subject (C.7.1.3), General Study
#: (C.7.2.1), Patient Study (C.7.2.2) and Clinical Trial Study (C.7.2.3) modules: what highdicom
#: copies from the first evidence into the SR (``SOPClass.copy_patient_and_study_information``).
_PATIENT_STUDY = (
    # Patient
    "ReferencedPatientSequence", "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "SourcePatientGroupIdentificationSequence",
    "GroupOfPatientsIdentificationSequence", "PatientBirthDate", "PatientBirthTime",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject", "StrainDescription",
    "StrainNomenclature", "StrainStockSequence", "StrainAdditionalInformation", "StrainCodeSequence",
    "GeneticModificationsSequence", "OtherPatientNames", "OtherPatientIDsSequence",
    "ReferencedPatientPhotoSequence", "EthnicGroupCodeSequence", "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence", "PatientBreedDescription", "PatientBreedCodeSequence",
    "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientComments", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    # Clinical Trial Subject
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "IssuerOfClinicalTrialProtocolID", "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialSiteID",
    "ClinicalTrialSiteName", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSubjectID",
    "IssuerOfClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
    "IssuerOfClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # General Study
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName", "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
    "ConsultingPhysicianIdentificationSequence", "StudyDescription", "ProcedureCodeSequence",
    "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
    "PhysiciansReadingStudyIdentificationSequence", "ReferencedStudySequence", "StudyID",
    "RequestingService", "RequestingServiceCodeSequence", "ReasonForPerformedProcedureCodeSequence",
    # Patient Study
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientSizeCodeSequence", "PatientBodyMassIndex", "MeasuredAPDimension",
    "MeasuredLateralDimension", "PatientWeight", "MedicalAlerts", "Allergies", "Occupation",
    "SmokingStatus", "AdditionalPatientHistory", "PregnancyStatus", "LastMenstrualDate",
    "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription",
    "IssuerOfServiceEpisodeIDSequence", "PatientState",
    # Clinical Trial Study
    "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
    "LongitudinalTemporalOffsetFromEvent", "LongitudinalTemporalEventType",
    "ClinicalTrialTimePointTypeCodeSequence", "IssuerOfClinicalTrialTimePointID",
    "ConsentForClinicalTrialUseSequence",
)  # fmt: skip

#: What highdicom's Contributing Equipment item for the acquisition reads
#: (``ContributingEquipment.for_image_acquisition``).
_EQUIPMENT = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "InstitutionAddress",
    "StationName",
    "AcquisitionDateTime",
    "AcquisitionDate",
    "AcquisitionTime",
)

#: Every attribute :func:`sanitised_copy` copies, when the source has it.
RESULT_KEYWORDS: tuple[str, ...] = _IMAGE + _PATIENT_STUDY + _EQUIPMENT

#: What a minimal copy keeps: the image's identity and geometry, and what files the result with
#: the patient and the order (PatientID, PatientName, issuer, AccessionNumber, StudyID).
MINIMAL_KEYWORDS: tuple[str, ...] = tuple(k for k in _IMAGE if k != "SpecificCharacterSet") + (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
)

#: Enumerated values (PS3.3 C.7.1.1 Patient, C.7.2.2 Patient Study, C.7.3.1 General Series) and the
#: spelled-out forms that name one of them unambiguously.
_ENUMERATED: dict[str, tuple[frozenset[str], dict[str, str]]] = {
    "PatientSex": (frozenset({"M", "F", "O"}), {"MALE": "M", "FEMALE": "F", "OTHER": "O"}),
    "PatientSexNeutered": (frozenset({"ALTERED", "UNALTERED"}), {}),
    "PatientIdentityRemoved": (frozenset({"YES", "NO"}), {}),
    "QualityControlSubject": (frozenset({"YES", "NO"}), {}),
    "SmokingStatus": (frozenset({"YES", "NO", "UNKNOWN"}), {}),
    "LongitudinalTemporalEventType": (frozenset({"ENROLLMENT", "BASELINE"}), {}),
    "Laterality": (frozenset({"R", "L"}), {"RIGHT": "R", "LEFT": "L"}),
}

#: One value of DA, TM, DT as PS3.5 Table 6.2-1 writes it (no query ranges, no ACR-NEMA dots or
#: colons); the parse into pydicom's DA/TM/DT then rejects impossible dates and times.
_SYNTAX = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"([01]\d|2[0-3])([0-5]\d((60|[0-5]\d)(\.\d{1,6})?)?)?"),
    "DT": re.compile(
        r"\d{4}((0[1-9]|1[0-2])(([0-2]\d|3[01])(([01]\d|2[0-3])"
        r"([0-5]\d((60|[0-5]\d)(\.\d{1,6})?)?)?)?)?)?([+-][01]\d[0-5]\d)?"
    ),
}
_PARSE = {"DA": DA, "TM": TM, "DT": DT}
_NATIVE = {"DA": datetime.date, "TM": datetime.time, "DT": datetime.datetime}
_AGE = re.compile(r"(\d{1,3})([DWMY])")
_CS = re.compile(r"[A-Z0-9 _]*")
_DS = re.compile(r"[+\-]?(\d+|\d+\.\d*|\.\d+)([eE][+\-]?\d+)?")
_IS = re.compile(r"[+\-]?\d+")
_TRUNCATED_VRS = ("AE", "SH", "LO", "ST", "LT", "CS")
#: The defined terms highdicom writes (:class:`highdicom.SpecificCharacterSetValues`); of them,
#: those it accepts in a multi-valued Specific Character Set (with code extensions, PS3.3
#: C.12.1.1.2) and, of those, the multi-byte ones it refuses as the first value.
_CHARSETS = frozenset(v.value for v in hd.SpecificCharacterSetValues)
_MULTI_BYTE = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149"})
_EXTENSIONS = _MULTI_BYTE | {
    f"ISO 2022 IR {n}" for n in (6, 100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13, 166)
}

#: The string VRs checked (UI is not: a UID is never altered; UR, UC and UT have no limit we apply).
_CHECKED_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"})
#: VRs whose text is decoded with the Specific Character Set (PS3.5 6.1.2.3).
_DECODED_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})

_DROP = object()


def sanitised_copy(ds: Dataset, *, minimal: bool = False) -> tuple[Dataset, list[str]]:
    """A new dataset with :data:`RESULT_KEYWORDS` of ``ds`` made valid, and the keywords changed.

    ``ds`` is not modified and its pixel data is never read or copied. ``minimal=True`` keeps
    only :data:`MINIMAL_KEYWORDS` (and a character set they need), for a result that must go out
    even when the full header cannot be written. The changed keywords are in the order of
    :data:`RESULT_KEYWORDS`, each once; an attribute that could not be decoded at all counts as
    changed (dropped). Rules: the module docstring.
    """
    keywords = MINIMAL_KEYWORDS if minimal else RESULT_KEYWORDS
    copied = Dataset()
    changed: list[str] = []
    for keyword in keywords:
        if keyword == "SpecificCharacterSet":
            continue
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        try:
            elem = ds[tag]  # decodes a raw element: may fail on broken bytes
        except Exception:
            changed.append(keyword)
            continue
        value = _valid_value(keyword, elem)
        if value is _DROP:
            changed.append(keyword)
            continue
        if value is not elem.value:
            changed.append(keyword)
            copied.add(DataElement(elem.tag, elem.VR, value))
        else:
            copied.add(copy.deepcopy(elem))
    charset = _charset(ds.get("SpecificCharacterSet"), copied, minimal=minimal)
    if charset is not None:
        copied.SpecificCharacterSet = charset
    if not minimal and charset != (ds.get("SpecificCharacterSet") or None):
        changed.insert(0, "SpecificCharacterSet")
    return copied, changed


def changed_keywords(sources: Iterable[Dataset]) -> list[str]:
    """The keywords :func:`sanitised_copy` changes in any of ``sources``, sorted, each once.

    For the one log line per study that says which attributes the results do not carry as sent.
    """
    return sorted({k for ds in sources for k in sanitised_copy(ds)[1]})


def _valid_value(keyword: str, elem: DataElement) -> object:
    """``elem.value`` itself when valid, a corrected value, or ``_DROP``."""
    vr = str(elem.VR)
    value = elem.value
    if vr not in _CHECKED_VRS or value is None or value == "":
        return value  # UIDs, binary values, sequences and empty values: as they are
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    if len(values) > 1 and dictionary_VM(elem.tag) == "1":
        return _DROP
    fixed: list[object] = []
    for v in values:
        f = _valid_one(keyword, vr, v)
        if f is _DROP:
            return _DROP
        fixed.append(f)
    if all(f is v for f, v in zip(fixed, values, strict=True)):
        return value
    return fixed[0] if len(fixed) == 1 else fixed


def _valid_one(keyword: str, vr: str, v: object) -> object:
    """One value made valid for ``vr`` (``v`` itself when it already is), or ``_DROP``."""
    if vr in _SYNTAX:
        if isinstance(v, _NATIVE[vr]):
            return v
        text = str(v).strip()
        if not _SYNTAX[vr].fullmatch(text):
            return _DROP
        try:
            _PARSE[vr](text)
        except (ValueError, OverflowError):
            return _DROP
        return v
    text = str(v)
    if vr == "AS":
        match = _AGE.fullmatch(text.strip().upper())
        if match is None:
            return _DROP
        age = f"{int(match[1]):03d}{match[2]}"
        return v if age == text else age
    if vr == "DS":
        if not _DS.fullmatch(text.strip()):
            return _DROP
        if len(text) <= MAX_VALUE_LEN["DS"]:
            return v
        return format_number_as_ds(float(text))
    if vr == "IS":
        return v if _IS.fullmatch(text.strip()) and len(text) <= MAX_VALUE_LEN["IS"] else _DROP
    if vr == "CS":
        return _valid_cs(keyword, v, text)
    if vr == "PN":
        groups = text.split("=")
        if len(groups) <= 3 and all(len(g) <= 64 for g in groups):
            return v
        return "=".join(g[:64] for g in groups[:3])
    if vr in _TRUNCATED_VRS and len(text) > MAX_VALUE_LEN[vr]:
        return text[: MAX_VALUE_LEN[vr]]
    return v


def _valid_cs(keyword: str, v: object, text: str) -> object:
    cs = text.strip().upper()
    enumerated = _ENUMERATED.get(keyword)
    if enumerated is not None:
        allowed, spelled = enumerated
        cs = spelled.get(cs, cs)
        if cs not in allowed:
            return _DROP
    cs = cs[: MAX_VALUE_LEN["CS"]]
    if not _CS.fullmatch(cs):
        return _DROP
    return v if cs == text else cs


def _charset(source: object, copied: Dataset, *, minimal: bool) -> str | list[str] | None:
    """The Specific Character Set the copy is written with: the source's when highdicom can
    write it (and not ``minimal``), else none for ASCII text and ISO_IR 192 otherwise."""
    if not minimal and source is not None and _writable_charset(source):
        return source  # type: ignore[return-value]  # str or MultiValue of str, as read
    if all(_is_ascii(elem.value) for elem in copied if elem.VR in _DECODED_VRS):
        return None
    return "ISO_IR 192"


def _writable_charset(value: object) -> bool:
    """Whether highdicom accepts ``value`` (``highdicom.valuerep._check_specific_character_set``)."""
    terms = [str(t) for t in value] if isinstance(value, (MultiValue, list, tuple)) else [str(value)]
    if not terms or any(t not in _CHARSETS for t in terms):
        return False
    if len(terms) == 1:
        return terms[0] not in _EXTENSIONS
    return terms[0] not in _MULTI_BYTE and all(t in _EXTENSIONS for t in terms)


def _is_ascii(value: object) -> bool:
    if isinstance(value, (MultiValue, list, tuple)):
        return all(_is_ascii(v) for v in value)
    return value is None or str(value).isascii()


T = TypeVar("T")


def full_or_minimal(
    build: Callable[[bool], T], on_refused: Callable[[str], object] | None = None
) -> tuple[T, str | None]:
    """``build(False)``, the result with the full header; should highdicom or pydicom still refuse
    the header, ``build(True)``, filed with the patient and study only, and the type of what the
    full one raised (never its text: it may quote a header value), which ``on_refused`` is given
    before the minimal build."""
    try:
        return build(False), None
    except Exception as exc:
        error = type(exc).__name__
        if on_refused is not None:
            on_refused(error)
        return build(True), error
