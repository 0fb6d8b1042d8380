"""Header-only copies of source images, completed so highdicom can cite them.

highdicom reads Type 2 patient and study attributes from the evidence it is given, and its TID 1602
image library entry for projection radiographs (CR, DX, MG, ...) reads PatientOrientation and
ImagerPixelSpacing. Real modalities leave some of these out, and send others invalid. We work on a
copy of just the attributes the results need, made valid (:mod:`dicomnode.results.sanitise`), and
fill the gaps there: the caller's dataset is never changed, and no pixel data is copied.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from pydicom import Dataset

from dicomnode.results.sanitise import sanitised_copy

__all__ = ["chest_orientation", "evidence_header", "library_ready", "same_study"]

#: Type 2 attributes of the Patient and General Study modules that highdicom copies from evidence.
_TYPE2_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

#: Conventional display orientation (row direction, column direction) of a chest radiograph by
#: ViewPosition, used only when the source carries no PatientOrientation: frontal views are hung
#: with the patient's left on the viewer's right, laterals facing the viewer's left (LL) or right.
_ORIENTATION_BY_VIEW = {
    "PA": ("L", "F"),
    "AP": ("L", "F"),
    "LL": ("P", "F"),
    "RL": ("A", "F"),
}


def chest_orientation(ds: Dataset) -> tuple[str, str]:
    """PatientOrientation of ``ds``, or the conventional one for its view when it has none."""
    value = ds.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return _ORIENTATION_BY_VIEW.get(str(ds.get("ViewPosition", "")).upper(), ("L", "F"))


def evidence_header(ds: Dataset, *, minimal: bool = False) -> Dataset:
    """A valid copy of the attributes of ``ds`` the results need, Type 2 gaps filled empty.

    The copy is :func:`~dicomnode.results.sanitise.sanitised_copy` (``minimal`` keeps only what
    files the result with the patient and study). For projection radiographs a missing
    PatientOrientation is taken from the view (:func:`chest_orientation`) and a missing
    ImagerPixelSpacing from PixelSpacing (or
    NominalScannedPixelSpacing); when no spacing is known at all, ImagerPixelSpacing stays absent
    and :func:`library_ready` says so, so the image is cited as evidence but left out of
    the image library rather than described with an invented spacing.
    """
    header, _ = sanitised_copy(ds, minimal=minimal)
    if hasattr(ds, "file_meta"):
        header.file_meta = copy.deepcopy(ds.file_meta)
    for keyword in _TYPE2_EMPTY:
        if keyword not in header:
            setattr(header, keyword, None)
    if not _has_two_values(header, "PatientOrientation"):
        header.PatientOrientation = list(chest_orientation(header))
    if not _has_two_values(header, "ImagerPixelSpacing"):
        for keyword in ("PixelSpacing", "NominalScannedPixelSpacing"):
            if _has_two_values(header, keyword):
                header.ImagerPixelSpacing = list(header[keyword].value)
                break
        else:
            if "ImagerPixelSpacing" in header:
                del header.ImagerPixelSpacing
    return header


#: Modalities whose TID 1602 entry highdicom describes with projection geometry (TID 1603) or
#: with cross-sectional geometry (TID 1604), and the attributes it then reads.
_PROJECTION = frozenset({"CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"})
_CROSS_SECTIONAL = frozenset({"CT", "MR", "PT"})


def library_ready(header: Dataset) -> bool:
    """Whether highdicom can describe ``header`` in the SR image library without guessing."""
    modality = str(header.get("Modality", ""))
    if modality in _PROJECTION:
        return _has_two_values(header, "PatientOrientation") and _has_two_values(header, "ImagerPixelSpacing")
    if modality in _CROSS_SECTIONAL:
        return all(
            k in header
            for k in ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness")
        )
    return True


def same_study(sources: Sequence[Dataset], what: str) -> str:
    """The StudyInstanceUID all ``sources`` share; ValueError naming ``what`` otherwise."""
    if not sources:
        raise ValueError(f"{what} needs at least one source image")
    uids = {str(ds.get("StudyInstanceUID", "")) for ds in sources}
    if "" in uids:
        raise ValueError(f"{what}: a source image has no StudyInstanceUID")
    if len(uids) != 1:
        raise ValueError(
            f"{what}: source images come from {len(uids)} studies ({', '.join(sorted(uids))}); "
            "build one result per study"
        )
    return uids.pop()


def _has_two_values(ds: Dataset, keyword: str) -> bool:
    value = ds.get(keyword)
    if value is None or isinstance(value, str):
        return False
    try:
        return len(value) == 2 and all(str(v) != "" for v in value)
    except TypeError:
        return False
