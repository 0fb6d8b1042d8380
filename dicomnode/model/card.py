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

#: The base of a trained model's version when ``train --version`` is not given (the version is
#: ``<base>+<8 hex of the weights' SHA-256>``: :func:`weights_version`).
DEFAULT_BASE_VERSION = "0.1.0"
#: Longest model version: it goes into Software Versions (LO, 64 characters) and SQL's
#: ``analyses.model_version`` (64), and into the Series Description of the results.
MAX_VERSION_LENGTH = 64
#: Hex digits of the weights' SHA-256 in a derived version.
WEIGHTS_DIGITS = 8

#: Names of the graph's input and outputs; the worker relies on them.
INPUT_NAME = "image"  # float32 [N, 1, S, S], preprocessed by dicomnode.model.preprocess
PROBABILITY_OUTPUT = "probability"  # float32 [N], P(pneumonia)
CAM_OUTPUT = "cam"  # float32 [N, h, w], class-activation map scaled to [0, 1] per image

#: Key of the quantisation record in an INT8 model's ``card.metrics`` (``training.quantize``):
#: ``fp32_version`` (the model it was made from) and, given labelled validation images,
#: ``auroc_change`` (INT8 AUROC minus fp32 AUROC), which the worker checks before using it.
QUANTIZATION_KEY = "quantization"


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


def check_version(version: str) -> str:
    """``version`` if it can name a model in DICOM and SQL; ValueError naming the fix otherwise:
    non-empty, at most :data:`MAX_VERSION_LENGTH` characters, printable ASCII without a backslash
    (the value separator of DICOM text)."""
    if not version or not version.strip():
        raise ValueError("model version is empty: give train --version BASE (the weights' hash is added)")
    if len(version) > MAX_VERSION_LENGTH:
        raise ValueError(
            f"model version {version!r} is over {MAX_VERSION_LENGTH} characters: use a shorter base"
        )
    if not version.isascii() or not version.isprintable() or "\\" in version:
        raise ValueError(f"model version {version!r} must be printable ASCII without a backslash")
    return version


def weights_version(base: str, weights_sha256: str) -> str:
    """The version of a trained model: ``base`` with the first :data:`WEIGHTS_DIGITS` hex digits of
    its weights' SHA-256 as build metadata (``0.1.0`` -> ``0.1.0+1a2b3c4d``; a ``base`` that has a
    build part already gets them after a dot: ``1.2.0+site3`` -> ``1.2.0+site3.1a2b3c4d``).

    Two models with different weights never share a version, so their results never share UIDs
    (:mod:`dicomnode.results.uids`) and ``audit --model-version`` tells them apart; the same
    weights exported twice keep theirs."""
    digest = weights_sha256.strip().lower()
    if len(digest) < WEIGHTS_DIGITS or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"weights_sha256 must be a hex SHA-256, got {weights_sha256!r}")
    base = base.strip()
    if not base:
        raise ValueError("model version base is empty: give train --version BASE, e.g. 1.0.0")
    separator = "." if "+" in base else "+"
    return check_version(f"{base}{separator}{digest[:WEIGHTS_DIGITS]}")


__all__ = [
    "CAM_OUTPUT",
    "DEFAULT_BASE_VERSION",
    "INPUT_NAME",
    "MAX_VERSION_LENGTH",
    "METADATA_KEY",
    "PROBABILITY_OUTPUT",
    "QUANTIZATION_KEY",
    "ModelCard",
    "check_version",
    "weights_version",
]
