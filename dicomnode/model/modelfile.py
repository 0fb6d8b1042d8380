"""An exported ONNX model file, read with onnxruntime only (no torch, no onnx): its card, its scores.

The worker calls :func:`read_card` when it loads a model: the card says how to preprocess
(``PreprocessConfig.from_dict(card.preprocess)``), which threshold to report at, and what to put
in the results' Contributing Equipment. Training-side tools (quantisation, the benchmark) score
files with :func:`predict_onnx`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.model.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard

if TYPE_CHECKING:
    import onnxruntime as ort


def read_card(path: Path) -> ModelCard:
    """Return the :class:`~dicomnode.model.card.ModelCard` stored in the ONNX file at ``path``.

    Raises FileNotFoundError if there is no file, and ValueError if it is not a dicomnode model
    (no card, or inputs/outputs other than those in :mod:`dicomnode.model.card`).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no model at {path}: export one with training.export.export_onnx, or make the demo "
            "model with `python -m training demo-model --out PATH`"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model ({exc}): re-export it") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{path} has no {METADATA_KEY!r} metadata: it was not exported by "
            "training.export.export_onnx; re-export it there"
        )
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [INPUT_NAME] or not {PROBABILITY_OUTPUT, CAM_OUTPUT} <= outputs:
        raise ValueError(
            f"{path} has inputs {inputs} and outputs {sorted(outputs)}; dicomnode needs input "
            f"{INPUT_NAME!r} and outputs {PROBABILITY_OUTPUT!r}, {CAM_OUTPUT!r}: re-export it"
        )
    return ModelCard.from_json(meta[METADATA_KEY])


def onnx_session(path: Path, *, threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session for ``path`` (all graph optimisations; ``threads`` intra-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_onnx(
    path: Path, images: np.ndarray, *, batch_size: int = 32, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N] and CAMs [N, h, w] of the model at ``path`` for preprocessed images
    ``[N, 1, S, S]``, on the CPU in batches of ``batch_size``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected preprocessed images [N, 1, S, S], got shape {images.shape}")
    session = onnx_session(path, threads=threads)
    probs, cams = [], []
    for i in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)
        p, c = session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: batch})
        probs.append(np.asarray(p).reshape(-1))
        cams.append(np.asarray(c))
    if not probs:
        raise ValueError("no images to score")
    return np.concatenate(probs), np.concatenate(cams)


__all__ = ["onnx_session", "predict_onnx", "read_card"]
