"""Export a trained :class:`~training.model.ResNetCAM` to ONNX with its model card inside.

The file has one input :data:`~dicomnode.model.card.INPUT_NAME` ``float32 [N, 1, S, S]`` (dynamic batch)
and two outputs, :data:`~dicomnode.model.card.PROBABILITY_OUTPUT` ``[N]`` and
:data:`~dicomnode.model.card.CAM_OUTPUT` ``[N, h, w]``; ``card.to_json()`` is stored under
:data:`~dicomnode.model.card.METADATA_KEY` in the model's ``metadata_props``. The export is checked with
onnxruntime against torch before it replaces ``path`` (written atomically), so a file at ``path``
is always a verified model. Read the card back without torch: :func:`dicomnode.model.read_card`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from dicomnode.model import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard
from dicomnode.model.card import check_version
from training.model import ResNetCAM

#: ONNX opset of exported models (onnxruntime >= 1.18 runs it)
OPSET = 18
#: largest tolerated |onnxruntime - torch| on either output
DEFAULT_ATOL = 1e-4


class ExportMismatchError(RuntimeError):
    """onnxruntime and torch disagree on the exported model."""


def export_onnx(model: ResNetCAM, path: Path, card: ModelCard, *, atol: float = DEFAULT_ATOL) -> Path:
    """Export ``model`` to ``path`` with ``card`` in its metadata; verify it; return ``path``.

    The input size comes from ``card.preprocess["size"]``. Raises :class:`ExportMismatchError`
    when onnxruntime's outputs differ from torch's by more than ``atol`` on random input.
    """
    check_version(card.version)  # it names the model in DICOM (LO, 64 characters) and SQL
    size = int(card.preprocess.get("size", 0))
    if size <= 0:
        raise ValueError(
            "card.preprocess has no size: build the card with TrainResult.card(...) so it "
            "carries PreprocessConfig.to_dict()"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            raw = Path(tmp) / "raw.onnx"
            _torch_export(model, raw, size)
            proto = onnx.load(str(raw))
            onnx.helper.set_model_props(proto, {METADATA_KEY: card.to_json()})
            proto.doc_string = f"{card.name} {card.version}: P(pneumonia) and its CAM"
            proto.producer_name = "dicomnode.training"
            onnx.checker.check_model(proto)
            final = Path(tmp) / "model.onnx"
            onnx.save(proto, str(final))
            verify_onnx(model, final, size, atol=atol)
            os.replace(final, path)
    finally:
        model.train(was_training)
    return path


def _torch_export(model: ResNetCAM, path: Path, size: int) -> None:
    example = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # quiet the "torchvision is not installed" notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[PROBABILITY_OUTPUT, CAM_OUTPUT],
                dynamic_shapes={"x": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)


def verify_onnx(
    model: ResNetCAM, path: Path, size: int, *, atol: float = DEFAULT_ATOL, seed: int = 0
) -> float:
    """Compare onnxruntime with torch on random batches of 1 and 3; return the max abs diff."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for n in (1, 3):
        x = rng.standard_normal((n, 1, size, size)).astype(np.float32)
        prob, cam = session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: x})
        with torch.no_grad():
            t_prob, t_cam = model(torch.from_numpy(x))
        for name, a, b in (("probability", prob, t_prob), ("cam", cam, t_cam)):
            if a.shape != tuple(b.shape):
                raise ExportMismatchError(
                    f"exported {name} has shape {a.shape}, torch gives {tuple(b.shape)}: the "
                    "export is broken; report it with the torch and onnx versions"
                )
            worst = max(worst, float(np.max(np.abs(a - b.numpy()))))
    if worst > atol:
        raise ExportMismatchError(
            f"onnxruntime differs from torch by {worst:.2e} (> {atol:.0e}) on random input: "
            "do not deploy this file; check the torch/onnxruntime versions or export in float32"
        )
    return worst


__all__ = ["DEFAULT_ATOL", "OPSET", "ExportMismatchError", "export_onnx", "verify_onnx"]
