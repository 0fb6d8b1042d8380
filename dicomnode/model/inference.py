"""The ONNX model as the worker runs it: one onnxruntime session per process, batched calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog

from dicomnode.model.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard
from dicomnode.model.preprocess import PreprocessConfig

log = structlog.get_logger("worker.inference")

#: Preferred execution providers, best first; we use those this onnxruntime build offers.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class ModelLoadError(RuntimeError):
    """The model file is missing or is not a dicomnode model."""


class PneumoniaModel:
    """A loaded model: its card, its preprocessing and an onnxruntime session."""

    def __init__(self, path: Path, *, providers: list[str] | None = None, batch_size: int = 8) -> None:
        if not path.is_file():
            raise ModelLoadError(
                f"model file {str(path)!r} not found: set DICOMNODE_MODEL to an .onnx exported by "
                "training.export, or run `dicomnode demo` once to build the demo model"
            )
        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED_PROVIDERS if p in available]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelLoadError(
                f"{str(path)!r} has no {METADATA_KEY!r} metadata: export it with training.export"
            )
        self.card = ModelCard.from_json(meta[METADATA_KEY])
        self.preprocess_config = PreprocessConfig.from_dict(self.card.preprocess)
        self.path = path
        self.batch_size = batch_size
        self.providers = self.session.get_providers()
        if "CUDAExecutionProvider" in PREFERRED_PROVIDERS and "CUDAExecutionProvider" not in self.providers:
            log.info("inference.cpu", reason="CUDAExecutionProvider not available", providers=self.providers)
        log.info(
            "inference.loaded", model=self.card.name, version=self.card.version, providers=self.providers
        )

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N] and class-activation maps [N, h, w] for preprocessed images [N, 1, S, S]."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images of shape [N, 1, S, S], got {images.shape}")
        probs, cams = [], []
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.float32)
            p, c = self.session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: batch})
            probs.append(np.asarray(p).reshape(-1))
            cams.append(np.asarray(c))
        return np.concatenate(probs), np.concatenate(cams)
