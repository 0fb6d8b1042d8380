"""Which instances the chest model reads: projection radiographs of the chest, frontal views.

Rules are settings (``DICOMNODE_SELECT_MODALITIES``, ``..._BODY_PARTS``, ``..._VIEWS``) and every
decision is recorded with the analysis, so "why was this study not analysed?" has an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)

#: SOP classes of projection radiography the model can read.
PROJECTION_SOP_CLASSES = frozenset(
    {
        str(ComputedRadiographyImageStorage),
        str(DigitalXRayImageStorageForPresentation),
        str(DigitalXRayImageStorageForProcessing),
    }
)


@dataclass(frozen=True)
class SelectionRules:
    """What an instance must be for the model to read it. An empty tuple accepts anything;
    the value "" in a tuple accepts a missing attribute (many modalities leave them empty)."""

    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "")
    views: tuple[str, ...] = ("PA", "AP", "")


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
    if sop_class not in PROJECTION_SOP_CLASSES:
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


__all__ = ["PROJECTION_SOP_CLASSES", "Decision", "SelectionRules", "select"]
