"""The model card: what a deployed model says about itself.

Written by :mod:`training.export` into the ONNX file's metadata (key :data:`METADATA_KEY`, JSON) and
read back by the worker. Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: ONNX ``metadata_props`` key holding the card as JSON.
METADATA_KEY = "dicomnode.model_card"

#: Names of the graph's input and outputs; the worker relies on them.
INPUT_NAME = "image"  # float32 [N, 1, S, S], preprocessed by dicomnode.model.preprocess
PROBABILITY_OUTPUT = "probability"  # float32 [N], P(pneumonia)
CAM_OUTPUT = "cam"  # float32 [N, h, w], class-activation map scaled to [0, 1] per image


@dataclass(frozen=True)
class ModelCard:
    """Identity, operating point and preprocessing of one trained model."""

    name: str
    version: str
    #: probability at or above which the finding is reported present (picked on validation)
    threshold: float
    #: a UID that changes at every retrain (DICOM Contributing Equipment Device UID)
    device_uid: str
    #: ``dicomnode.model.preprocess.PreprocessConfig.to_dict()``
    preprocess: dict[str, Any]
    manufacturer: str = "dicomnode"
    architecture: str = "resnet"
    created: str = ""
    data_fingerprint: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the ONNX metadata."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse the ONNX metadata value; raises ValueError naming what is missing."""
        data = json.loads(text)
        missing = [k for k in ("name", "version", "threshold", "device_uid", "preprocess") if k not in data]
        if missing:
            raise ValueError(
                f"model card is missing {', '.join(missing)}: re-export the model with training.export"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


__all__ = ["CAM_OUTPUT", "INPUT_NAME", "METADATA_KEY", "PROBABILITY_OUTPUT", "ModelCard"]
