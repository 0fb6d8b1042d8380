"""Every coded concept our results carry, each with where it comes from.

Codes that pydicom's code dictionary (``pydicom.sr.codedict.codes``, generated from DICOM PS3.16)
knows are taken from it, so a typo cannot slip in; the few it lacks are built here with their
source named. Meanings are display text only: readers compare codes by value and scheme
(:func:`same_code`).

Constants are immutable :class:`pydicom.sr.coding.Code` values, never highdicom ``CodedConcept``
datasets: highdicom puts a ``CodedConcept`` it is given into the content tree as is, so a shared
one would be shared by every report built, and editing one report would edit the constant.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "ALGORITHM_FAMILY",
    "CHEST_XR_SINGLE_VIEW",
    "CHEST_XR_TWO_VIEWS",
    "FINDING_ABSENT",
    "FINDING_PRESENT",
    "FINDING_SITE",
    "PNEUMONIA",
    "PRIORITY",
    "PRIORITY_ROUTINE",
    "PRIORITY_URGENT",
    "PROBABILITY",
    "PROBABILITY_UNIT",
    "XR_UNSPECIFIED",
    "procedure_reported",
    "same_code",
]

#: The finding: SNOMED CT 233604007 "Pneumonia" (disorder). Not in pydicom's dictionary.
PNEUMONIA = Code(value="233604007", scheme_designator="SCT", meaning="Pneumonia")

#: Values of the qualitative evaluation named :data:`PNEUMONIA`, from DICOM CID 241 "Present/Absent
#: Only": pydicom ``codes.SCT.Present`` (SCT 52101004) and ``codes.SCT.Absent`` (SCT 272519000).
FINDING_PRESENT = codes.SCT.Present
FINDING_ABSENT = codes.SCT.Absent

#: Finding site of the group: pydicom ``codes.SCT.Lung`` (SCT 39607008).
FINDING_SITE = codes.SCT.Lung

#: The probability NUM: pydicom ``codes.DCM.Probability`` (DCM 122157) ...
PROBABILITY = codes.DCM.Probability
#: ... in UCUM "1" (dimensionless): pydicom ``codes.UCUM.NoUnits``.
PROBABILITY_UNIT = codes.UCUM.NoUnits

#: Algorithm family of TID 4019: pydicom ``codes.DCM.ArtificialIntelligence`` (DCM 123110, CID 7162).
ALGORITHM_FAMILY = codes.DCM.ArtificialIntelligence

#: Concept name of the triage evaluation: SNOMED CT 260870009 "Priority" (pydicom
#: ``codes.SCT.Priority``, whose meaning carries the fully specified name's "(attribute)" tag; we
#: display the preferred term). Chosen over DCM 121403 "Level of Significance", whose values
#: (CID 220) grade significance, not reading order.
PRIORITY = Code(value=codes.SCT.Priority.value, scheme_designator="SCT", meaning="Priority")

#: Triage values, two siblings under SNOMED CT 272125009 "Priorities" (qualifier value), the
#: hierarchy HL7 uses for order priority (value set ``qicore-priority``):
#: 103391001 "Urgent" is pydicom ``codes.SCT.UrgentProcedure`` (DICOM CID 3414 "Procedure
#: Urgency", displayed there as "Urgent Procedure"); 50811001 "Routine" is not in pydicom's
#: dictionary (its ``codes.SCT.Routine`` is 373115008, a numeric-estimation technique, and
#: ``RoutineProcedure`` 373113001 is a procedure, not a priority).
PRIORITY_URGENT = Code(value="103391001", scheme_designator="SCT", meaning="Urgent")
PRIORITY_ROUTINE = Code(value="50811001", scheme_designator="SCT", meaning="Routine")

#: Procedure reported (the imaging procedure, not the algorithm), LOINC/RSNA Radiology Playbook:
#: 36554-4 "XR Chest Single view", 36643-5 "XR Chest 2 Views" (as used in IHE RAD IDR examples) ...
CHEST_XR_SINGLE_VIEW = Code(value="36554-4", scheme_designator="LN", meaning="XR Chest Single view")
CHEST_XR_TWO_VIEWS = Code(value="36643-5", scheme_designator="LN", meaning="XR Chest 2 Views")
#: ... and, for more views, pydicom ``codes.LN.XRUnspecifiedBodyRegion`` (LN 43468-8).
XR_UNSPECIFIED = codes.LN.XRUnspecifiedBodyRegion


def procedure_reported(n_images: int) -> Code:
    """The LOINC imaging procedure for a chest radiograph study of ``n_images`` views."""
    if n_images < 1:
        raise ValueError(f"a chest radiograph study has at least one image, got {n_images}")
    if n_images == 1:
        return CHEST_XR_SINGLE_VIEW
    if n_images == 2:
        return CHEST_XR_TWO_VIEWS
    return XR_UNSPECIFIED


def same_code(a: object, b: Code) -> bool:
    """Whether ``a`` (a Code, CodedConcept or code item) is ``b``, by value and scheme only."""
    value = getattr(a, "value", getattr(a, "CodeValue", None))
    scheme = getattr(a, "scheme_designator", getattr(a, "CodingSchemeDesignator", None))
    return value == b.value and scheme == b.scheme_designator
