"""The demo model as the node receives it: its card carries intervals, calibration and the drift
monitor's baseline, and the worker's inference reproduces the onnxruntime score on a DICOM file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("onnxruntime")

from dicomnode.model import (  # noqa: E402
    CAM_OUTPUT,
    INPUT_NAME,
    PROBABILITY_OUTPUT,
    SCORE_BIN_EDGES,
    PneumoniaModel,
    PreprocessConfig,
    onnx_session,
    preprocess,
    read_card,
)
from dicomnode.testing.phantoms import make_phantom  # noqa: E402

pytestmark = pytest.mark.slow  # the session's demo model (tests/conftest.py trains it once)


def test_demo_card_has_intervals_calibration_and_the_drift_baseline(model_path: Path) -> None:
    card = read_card(model_path)
    val = card.metrics["val"]
    for key in ("auroc", "average_precision", "sensitivity", "specificity"):
        lo, hi = val[f"{key}_ci"]
        assert 0.0 <= lo <= val[key] <= hi <= 1.0, key
    assert val["ci"]["n"] == 1000 and 0.0 <= val["ece"] <= 1.0
    assert (
        val["tp"] + val["fn"] == val["n_positive"]
        and val["tp"] + val["fp"] + val["tn"] + val["fn"] == val["n"]
    )

    hist = card.metrics["val_score_histogram"]
    assert hist["edges"] == list(SCORE_BIN_EDGES) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert len(hist["fractions"]) == 10 and sum(hist["fractions"]) == pytest.approx(1.0, abs=1e-5)
    assert sum(hist["counts"]) == card.metrics["val_scores_n"] == card.metrics["n_val"] == val["n"]


def test_drift_monitor_reads_the_baseline_from_the_card(model_path: Path) -> None:
    monitoring = pytest.importorskip("dicomnode.ops.drift")
    card = read_card(model_path)
    baseline = monitoring.baseline_from_card(card)
    assert baseline is not None
    assert list(baseline.counts) == card.metrics["val_score_histogram"]["counts"]


def test_node_reproduces_the_onnxruntime_score_on_the_same_dicom(model_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "cxr.dcm"
    pydicom.dcmwrite(path, make_phantom(np.random.default_rng(2024), True), enforce_file_format=True)
    ds = pydicom.dcmread(path)
    config = PreprocessConfig.from_dict(read_card(model_path).preprocess)
    x = preprocess(ds, config)[None]

    node = PneumoniaModel(model_path)
    assert node.preprocess_config == config
    # worker.pipeline: preprocess(ds, model.preprocess_config) -> model.predict
    p_node, cam_node = node.predict(preprocess(ds, node.preprocess_config)[None])
    p_ort, cam_ort = onnx_session(model_path).run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: x})
    assert p_node.shape == (1,) and cam_node.shape == cam_ort.shape
    assert abs(float(p_node[0]) - float(p_ort[0])) <= 1e-6
    assert np.abs(cam_node - cam_ort).max() <= 1e-6
    again, _ = PneumoniaModel(model_path).predict(x)  # a second load scores the same
    assert float(again[0]) == float(p_node[0])
