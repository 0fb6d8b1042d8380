"""The model as DICOM equipment: its Contributing Equipment item and the checks on its card."""

from __future__ import annotations

import math

import highdicom as hd
from pydicom.sr.codedict import codes as dcm_codes

from dicomnode.model.card import ModelCard
from dicomnode.results.finding import Finding
from dicomnode.results.uids import is_uid

__all__ = ["check_inputs", "model_equipment"]


def model_equipment(card: ModelCard) -> hd.ContributingEquipment:
    """Contributing Equipment item naming the model, as IHE AIR asks (PS3.3 C.12.1).

    Purpose DCM 109102 "Processing Equipment"; manufacturer, model name, software version and
    Device UID from the card. highdicom takes no Device UID argument, so it is set on the item
    (Type 3 in the SOP Common Contributing Equipment Sequence).
    """
    item = hd.ContributingEquipment(
        manufacturer=card.manufacturer,
        purpose_of_reference=dcm_codes.DCM.ProcessingEquipment,
        manufacturer_model_name=card.name,
        software_versions=card.version,
        contribution_description=f"AI pneumonia triage by {card.name} {card.version}",
    )
    # the Device UID changes at every retrain (ModelCard.device_uid)
    item.DeviceUID = card.device_uid
    return item


def check_inputs(finding: Finding, card: ModelCard) -> None:
    """Raise TypeError/ValueError if ``finding`` and ``card`` cannot make a result together."""
    if not isinstance(finding, Finding):
        raise TypeError(f"finding must be a dicomnode.results.Finding, got {type(finding).__name__}")
    if not isinstance(card, ModelCard):
        raise TypeError(f"card must be a dicomnode.model.card.ModelCard, got {type(card).__name__}")
    if not math.isclose(finding.threshold, card.threshold, rel_tol=0.0, abs_tol=1e-9):
        raise ValueError(
            f"finding threshold {finding.threshold} differs from model card threshold "
            f"{card.threshold}: build the Finding with threshold=card.threshold"
        )
    if not is_uid(card.device_uid):
        raise ValueError(
            f"model card device_uid {card.device_uid!r} is not a DICOM UID: re-export the model "
            "with training.export"
        )
    for name in ("name", "version", "manufacturer"):
        if not getattr(card, name):
            raise ValueError(f"model card {name} is empty: re-export the model with training.export")
