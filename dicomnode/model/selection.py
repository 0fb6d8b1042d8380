"""Which instances the chest model reads: projection radiographs of the chest, frontal views.

Rules are settings (``DICOMNODE_SELECT_MODALITIES``, ``..._BODY_PARTS``, ``..._VIEWS``,
``DICOMNODE_SELECT_SECONDARY_CAPTURE``) and every decision is recorded with the analysis, so "why
was this study not analysed?" has an answer.

Secondary Capture (PS3.3 A.8.1) is the class of images that did not come from the modality as
acquired: screen captures, scanned film and documents, images converted by another program (the
NIH ChestX-ray14 and RSNA pneumonia challenge DICOMs are 8-bit Secondary Captures), and the node's
own heatmaps. It is not read by default: on a hospital's network the radiographs the model is for
arrive as CR/DX from the modality, and a capture's pixels have been windowed, scaled or annotated by
software the model card says nothing about. With ``secondary_capture`` on, a single-frame
Secondary Capture is read when it is grey (MONOCHROME1/2, one sample: the node's heatmaps and most
screen captures are RGB) and carries a Modality, body part and view the other rules accept (a
capture whose Modality is ``OT`` stays unread under the default modalities).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

#: SOP classes of projection radiography the model can read.
PROJECTION_SOP_CLASSES = frozenset(
    {
        str(ComputedRadiographyImageStorage),
        str(DigitalXRayImageStorageForPresentation),
        str(DigitalXRayImageStorageForProcessing),
    }
)


#: Single-frame Secondary Capture: read only when :attr:`SelectionRules.secondary_capture` is on.
SECONDARY_CAPTURE_SOP_CLASS = str(SecondaryCaptureImageStorage)

#: Photometric interpretations of a grey radiograph (a Secondary Capture must have one to be read).
_GREY = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class SelectionRules:
    """What an instance must be for the model to read it. An empty tuple accepts anything;
    the value "" in a tuple accepts a missing attribute (many modalities leave them empty).
    ``secondary_capture`` also reads grey Secondary Capture images that pass the other rules."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "")
    views: tuple[str, ...] = ("PA", "AP", "")
    secondary_capture: bool = False


@dataclass(frozen=True)
class Decision:
    """The verdict on one instance."""

    sop_instance_uid: str
    selected: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        """The decision as recorded with the analysis."""
        return {"sop_instance_uid": self.sop_instance_uid, "selected": self.selected, "reason": self.reason}


def _value(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def select(ds: Dataset, rules: SelectionRules) -> Decision:
    """Decide whether the model reads ``ds`` (header only; pixel data is not touched)."""
    uid = str(ds.get("SOPInstanceUID", ""))
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SECONDARY_CAPTURE_SOP_CLASS:
        if not rules.secondary_capture:
            return Decision(
                uid, False, "Secondary Capture is not read (DICOMNODE_SELECT_SECONDARY_CAPTURE is off)"
            )
        grey = _value(ds, "PhotometricInterpretation")
        if grey not in _GREY or ds.get("SamplesPerPixel", 1) != 1:
            return Decision(uid, False, f"Secondary Capture in {grey or '(no photometric)'}, not grey")
    elif sop_class not in PROJECTION_SOP_CLASSES:
        return Decision(uid, False, f"SOP class {sop_class} is not CR/DX")
    for keyword, allowed, what in (
        ("Modality", rules.modalities, "modality"),
        ("BodyPartExamined", rules.body_parts, "body part"),
        ("ViewPosition", rules.views, "view"),
    ):
        value = _value(ds, keyword)
        if allowed and value not in allowed:
            return Decision(uid, False, f"{what} {value or '(empty)'} not in {list(allowed)}")
    if "PixelData" not in ds:
        return Decision(uid, False, "no pixel data")
    return Decision(uid, True, "frontal chest radiograph")


__all__ = ["PROJECTION_SOP_CLASSES", "SECONDARY_CAPTURE_SOP_CLASS", "Decision", "SelectionRules", "select"]
