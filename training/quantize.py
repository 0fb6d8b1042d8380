"""INT8 post-training quantisation of an exported model with onnxruntime's quantisation tools.

:func:`quantize_int8` takes a verified fp32 file from :mod:`training.export`, calibrates activation
ranges on preprocessed validation images (static quantisation, QDQ format, per-channel weights by
default), and writes an INT8 file that the worker loads exactly like the fp32 one: same input and
outputs, and the model card in the metadata with ``version`` suffixed ``+int8`` (``.int8`` when
the version already has a ``+`` build part), a new Device UID, and a ``quantization`` block that
records how it was made and, given labelled validation images, fp32 AUROC against INT8 AUROC.

The head stays in float: everything downstream of the last feature map (global pool, fc, sigmoid,
and the CAM's einsum, ReLU, max and division) is excluded from quantisation. It costs nothing
(under 0.1 % of the FLOPs) and matters: quantised, the probability output is rounded to 256
levels (ties wreck AUROC and the threshold) and the CAM's per-image maximum can round to zero
(the division then gives NaN).

Given validation images with labels, the INT8 model is re-evaluated there: its threshold is picked
again for the card's target sensitivity, and ``metrics["val"]`` and the drift monitor's
``metrics["val_score_histogram"]`` describe the INT8 model (the fp32 ones move under
``metrics["quantization"]``).

Command line: ``python -m training quantize --model FP32 --out INT8 [data options]``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydicom.uid import generate_uid

from dicomnode.model import INPUT_NAME, METADATA_KEY, ModelCard, predict_onnx, read_card, score_histogram
from dicomnode.model.card import QUANTIZATION_KEY  # re-exported: the card's key, one definition
from training.evaluate import evaluate_scores, roc_auc, round_metrics

#: quantisation formats: QDQ (QuantizeLinear/DequantizeLinear pairs around float ops, which
#: onnxruntime fuses into integer kernels) or QOperator (QLinearConv and friends in the graph)
FORMATS = ("qdq", "qoperator")
#: activation-range calibration methods of onnxruntime
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def int8_version(version: str) -> str:
    """``version`` marked as INT8: ``1.2.0`` -> ``1.2.0+int8``, ``0.1.0-demo+ab12`` -> ``0.1.0-demo+ab12.int8``."""
    return f"{version}.int8" if "+" in version else f"{version}+int8"


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes downstream of the last feature map (the input of the global average pool)."""
    pools = [n for n in model.graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool")]
    if len(pools) != 1:
        raise ValueError(
            f"expected one global pooling node, found {len(pools)}: quantize_int8 takes models "
            "exported by training.export"
        )
    reached = {pools[0].input[0]}
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(i in reached for i in node.input):
            names.append(node.name)
            reached.update(node.output)
    return names


class _Batches:
    """onnxruntime CalibrationDataReader over an array of preprocessed images."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [np.ascontiguousarray(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _check_images(images: np.ndarray, size: int, what: str) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (1, size, size) or len(images) == 0:
        raise ValueError(
            f"{what} has shape {images.shape}: need preprocessed images [N >= 1, 1, {size}, {size}] "
            "(dicomnode.model.preprocess with the card's PreprocessConfig)"
        )
    return images


def quantize_int8(
    fp32_onnx: Path,
    out: Path,
    calibration: np.ndarray,
    *,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    quant_format: str = "qdq",
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    batch_size: int = 8,
    bootstrap: int = 1000,
) -> Path:
    """Write an INT8 version of the dicomnode model ``fp32_onnx`` to ``out`` and return ``out``.

    ``calibration`` are preprocessed validation images ``[N, 1, S, S]`` (a few hundred are
    plenty). ``validation = (images, labels)`` evaluates fp32 and INT8 on labelled images and
    re-picks the threshold for the INT8 model (see the module docstring); ``test`` (needs
    ``validation``) evaluates INT8 on the test split at that threshold. ``reduce_range``
    quantises weights to 7 bits, for x86 CPUs without VNNI where 8-bit U8S8 products can
    saturate. Written atomically; raises ValueError on bad inputs.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in FORMATS:
        raise ValueError(f"quant_format={quant_format!r} is unknown: use one of {FORMATS}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(
            f"calibrate_method={calibrate_method!r} is unknown: use one of {CALIBRATION_METHODS}"
        )
    fp32_onnx, out = Path(fp32_onnx), Path(out)
    card = read_card(fp32_onnx)
    size = int(card.preprocess["size"])
    calibration = _check_images(calibration, size, "calibration")
    out.parent.mkdir(parents=True, exist_ok=True)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[calibrate_method]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        # constant folding and Conv+BN fusion before quantising (onnxruntime's recommended step;
        # symbolic shape inference is skipped: the float graph's shapes are already inferred)
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
        excluded = head_nodes(onnx.load(str(pre)))
        raw = Path(tmp) / "int8.onnx"
        quantize_static(
            str(pre),
            str(raw),
            _Batches(calibration, batch_size),
            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=method,
        )
        record: dict[str, Any] = {
            "fp32_version": card.version,
            "fp32_device_uid": card.device_uid,
            "tool": "onnxruntime.quantization.quantize_static",
            "format": quant_format.upper() if quant_format == "qdq" else "QOperator",
            "per_channel": per_channel,
            "reduce_range": reduce_range,
            "activations": "uint8",
            "weights": "int8",
            "calibrate_method": calibrate_method,
            "calibration_images": len(calibration),
            "float_nodes": excluded,
        }
        metrics = dict(card.metrics)
        threshold = card.threshold
        if test is not None and validation is None:
            raise ValueError("test needs validation too: the INT8 threshold is picked on validation")
        if validation is not None:
            threshold = _evaluate_int8(fp32_onnx, raw, validation, size, card, metrics, record, bootstrap)
        if test is not None:
            images = _check_images(test[0], size, "test images")
            p8, _ = predict_onnx(raw, images)
            int8_test = evaluate_scores(test[1], p8, threshold=threshold, bootstrap=bootstrap)
            metrics["test"] = round_metrics(int8_test)
            record["int8_test_auroc"] = round(float(int8_test["auroc"]), 6)
        metrics[QUANTIZATION_KEY] = record
        int8_card = replace(
            card,
            version=int8_version(card.version),
            threshold=float(threshold),
            device_uid=generate_uid(entropy_srcs=["dicomnode-int8", card.device_uid, _sha256(raw)]),
            metrics=metrics,
        )
        proto = onnx.load(str(raw))
        onnx.helper.set_model_props(proto, {METADATA_KEY: int8_card.to_json()})
        proto.doc_string = f"{int8_card.name} {int8_card.version}: INT8 P(pneumonia) and its CAM"
        proto.producer_name = "dicomnode.training"
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        read_card(final)  # loads in onnxruntime, has the card and the worker's input and outputs
        os.replace(final, out)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _evaluate_int8(
    fp32: Path,
    int8: Path,
    validation: tuple[np.ndarray, np.ndarray],
    size: int,
    card: ModelCard,
    metrics: dict[str, Any],
    record: dict[str, Any],
    bootstrap: int,
) -> float:
    """Score both files on the labelled images, fill ``metrics`` and ``record``; return the
    INT8 threshold."""
    images = _check_images(validation[0], size, "validation images")
    labels = np.asarray(validation[1]).astype(bool).ravel()
    if labels.size != len(images):
        raise ValueError(f"validation has {len(images)} images but {labels.size} labels")
    p32, cam32 = predict_onnx(fp32, images)
    p8, cam8 = predict_onnx(int8, images)
    target = float(metrics.get("target_sensitivity", 0.9))
    int8_val = evaluate_scores(labels, p8, target_sensitivity=target, bootstrap=bootstrap)
    auroc32, auroc8 = roc_auc(labels, p32), float(int8_val["auroc"])
    record.update(
        {
            "validation_images": int(labels.size),
            "fp32_auroc": round(auroc32, 6),
            "int8_auroc": round(auroc8, 6),
            "auroc_change": round(auroc8 - auroc32, 6),
            "fp32_threshold": card.threshold,
            "int8_threshold": round(float(int8_val["threshold"]), 6),
            "max_abs_probability_diff": round(float(np.max(np.abs(p8 - p32))), 6),
            "mean_abs_cam_diff": round(float(np.mean(np.abs(cam8 - cam32))), 6),
        }
    )
    for key in ("val", "test"):
        if key in metrics:
            record[f"fp32_{key}"] = metrics.pop(key)
    if "val_score_histogram" in metrics:
        record["fp32_val_score_histogram"] = metrics.pop("val_score_histogram")
    metrics["val"] = round_metrics(int8_val)
    metrics["val_score_histogram"] = round_metrics(score_histogram(p8))
    metrics["val_scores_n"] = int(labels.size)
    return float(int8_val["threshold"])


__all__ = [
    "CALIBRATION_METHODS",
    "FORMATS",
    "QUANTIZATION_KEY",
    "head_nodes",
    "int8_version",
    "quantize_int8",
]
