"""``dicomnode train evaluate``: an exported model scored on labelled images through the node's path,
and confidence intervals that resample patients, not images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.cli.training import cmd_train
from dicomnode.model import PneumoniaModel, preprocess
from tests.tiny_model import write_tiny_model
from tests.unit.test_training_images import _as_dx_dicom
from training.assess import EVALUATION_JSON, EVALUATION_MD, evaluate_model
from training.datasets import load_source
from training.evaluate import bootstrap_ci, evaluate_scores, roc_auc
from training.image_files import read_image
from training.image_sets import shared_data_dir

Image = pytest.importorskip("PIL.Image", reason="Pillow comes with highdicom and the train extra")

KERMANY = shared_data_dir() / "kermany-train"


def _kermany_subset(tmp_path: Path, per_class: int = 6) -> Path:
    """A class-folder copy (symlinks) of a few real Kermany images, or skip where the data is absent."""
    if not (KERMANY / "NORMAL").is_dir():
        pytest.skip(f"real data not here: {KERMANY} (set DICOMNODE_DATA_DIR to the shared data folder)")
    root = tmp_path / "kermany"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for src in sorted((KERMANY / cls).glob("*.jpeg"))[:per_class]:
            (root / cls / src.name).symlink_to(src)
    return root


def test_evaluate_scores_real_images_as_the_worker_would(tmp_path: Path) -> None:
    root = _kermany_subset(tmp_path)
    model_path = write_tiny_model(tmp_path / "tiny.onnx")
    samples, _ = load_source("classes", data_dir=root)
    ev = evaluate_model(model_path, samples, bootstrap=50)
    assert ev.metrics["n"] == 12 and ev.metrics["n_failed"] == 0
    assert ev.metrics["threshold"] == pytest.approx(0.5)
    # the scores are the worker's: its model object on the node's preprocessing of the same pixels
    model = PneumoniaModel(model_path)
    first = samples[0]
    assert first.path is not None
    ds = pydicom.dcmread(_as_dx_dicom(read_image(first.path), tmp_path / "first.dcm"))
    worker_score = model.predict(preprocess(ds, model.preprocess_config)[None])[0][0]
    assert ev.scores[0] == pytest.approx(worker_score, abs=1e-6)


def test_dicomnode_train_evaluate_writes_metrics_and_the_report(tmp_path: Path) -> None:
    root = _kermany_subset(tmp_path)
    model_path = write_tiny_model(tmp_path / "tiny.onnx")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_path), "--data", "classes", "--data-dir", str(root)]
    assert cmd_train([*argv, "--out", str(out), "--bootstrap", "50"]) == 0
    result = json.loads((out / EVALUATION_JSON).read_text())
    assert result["metrics"]["n"] == 12 and len(result["metrics"]["auroc_ci"]) == 2
    assert result["metrics"]["ci"]["method"] == "percentile bootstrap over patients"
    assert "AUROC" in (out / EVALUATION_MD).read_text()
    for png in ("roc.png", "pr.png", "calibration.png", "scores.png"):
        assert (out / png).stat().st_size > 1000
    # one part of a split: the validation part only
    assert cmd_train([*argv, "--out", str(tmp_path / "val"), "--split", "val", "--val-fraction", "0.5"]) == 0
    assert json.loads((tmp_path / "val" / EVALUATION_JSON).read_text())["metrics"]["n"] < 12


def test_a_bad_file_is_left_out_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for cls, value in (("NORMAL", 40), ("PNEUMONIA", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32), value + i, np.uint8)).save(root / cls / f"person{cls}{i}_x.png")
    (root / "PNEUMONIA" / "broken.png").write_bytes(b"not a png")
    samples, _ = load_source("classes", data_dir=root)
    ev = evaluate_model(write_tiny_model(tmp_path / "tiny.onnx"), samples, bootstrap=0)
    assert ev.metrics["n"] == 6 and [k for k, _ in ev.failed] == ["broken.png"]


def test_patient_bootstrap_is_wider_than_image_bootstrap_when_images_cluster() -> None:
    rng = np.random.default_rng(0)
    # 40 patients with 10 near-identical images each: 40 independent cases, not 400
    patient_label = np.arange(40) % 2
    patient_score = rng.normal(patient_label * 1.0, 1.0)
    y = np.repeat(patient_label, 10)
    s = np.repeat(patient_score, 10) + rng.normal(0, 0.01, 400)
    groups = np.repeat(np.arange(40), 10)
    by_image = bootstrap_ci(y, s, roc_auc, n=300, seed=1)
    by_patient = bootstrap_ci(y, s, roc_auc, n=300, seed=1, groups=groups)
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])
    m = evaluate_scores(y, s, threshold=0.5, bootstrap=100, groups=groups)
    assert m["n_patients"] == 40 and m["ci"]["method"] == "percentile bootstrap over patients"


def test_patient_bootstrap_with_one_image_each_is_the_image_bootstrap() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.random(60)
    by_image = bootstrap_ci(y, s, roc_auc, n=200, seed=2)
    assert bootstrap_ci(y, s, roc_auc, n=200, seed=2, groups=np.arange(60)) == by_image
