"""End to end through ``python -m training``: a miniature RSNA Kaggle download trains through the
RSNA loader, exports a model with its card and writes the report; ``quantize`` makes an INT8 copy
calibrated on the same validation split that the node loads."""

from __future__ import annotations

import contextlib
import csv
import io
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dicomnode.model import PneumoniaModel, PreprocessConfig, read_card  # noqa: E402
from dicomnode.testing.phantoms import make_phantom  # noqa: E402
from training import datasets  # noqa: E402
from training.__main__ import main  # noqa: E402
from training.quantize import QUANTIZATION_KEY  # noqa: E402

N_PATIENTS = 60
SPLIT_ARGS = ["--val-fraction", "0.25", "--test-fraction", "0.2"]


def _write_rsna(root: Path) -> None:
    """``stage_2_train_images/<patientId>.dcm`` + ``stage_2_train_labels.csv`` as Kaggle ships them:
    one row per box for positives (two or three boxes), one row with empty box columns otherwise."""
    images = root / datasets.RSNA_IMAGES
    images.mkdir(parents=True)
    rows: list[list[object]] = []
    for i in range(N_PATIENTS):
        pid = f"{i:08x}-7f3c-4e1a-9b2d-{i * 7919:012x}"
        positive = i % 2 == 1
        ds = make_phantom(np.random.default_rng([31, i]), positive, patient_id=pid, size=64)
        pydicom.dcmwrite(images / f"{pid}.dcm", ds, enforce_file_format=True)
        if positive:
            for b in range(2 + i % 3 // 2):
                rows.append([pid, 100 + 40 * b, 200, 180, 260, 1])
        else:
            rows.append([pid, "", "", "", "", 0])
    with (root / datasets.RSNA_LABELS).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        writer.writerows(rows)


def _cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


pytestmark = pytest.mark.slow  # every test reads rsna_run, which trains


@pytest.fixture(scope="module")
def rsna_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One tiny CLI training on the miniature RSNA folder, then one CLI quantisation (~10 s).

    Its own run, not the shared ``trained_run``: these tests are of the ``train`` and ``quantize``
    commands themselves (arguments, RSNA loader, report, card, INT8 copy)."""
    tmp = tmp_path_factory.mktemp("rsna")
    root = tmp / "rsna"
    _write_rsna(root)
    data = ["--data", "rsna", "--data-dir", str(root), *SPLIT_ARGS]
    rc, train_log = _cli(
        ["train", *data]
        + ["--image-size", "32", "--width", "8", "--epochs", "2", "--batch-size", "8", "--threads", "2"]
        + ["--bootstrap", "200", "--seed", "1", "--out-dir", str(tmp / "ckpt"), "--onnx", str(tmp / "m.onnx")]
        + ["--report", str(tmp / "report"), "--name", "rsna-tiny", "--version", "0.0.1"]
    )
    assert rc == 0, train_log
    rc_q, quantize_log = _cli(
        [
            "quantize",
            "--model",
            str(tmp / "m.onnx"),
            "--out",
            str(tmp / "m-int8.onnx"),
            "--n-calibration",
            "8",
        ]
        + ["--seed", "1", *data]
    )
    assert rc_q == 0, quantize_log
    return {"tmp": tmp, "root": root, "train_log": train_log, "quantize_log": quantize_log}


def test_rsna_layout_trains_through_the_cli_and_exports_its_card(rsna_run: dict[str, object]) -> None:
    tmp, root = Path(str(rsna_run["tmp"])), Path(str(rsna_run["root"]))
    card = read_card(tmp / "m.onnx")
    assert (card.name, card.architecture) == ("rsna-tiny", "resnet18-w8")
    assert re.fullmatch(r"0\.0\.1\+[0-9a-f]{8}", card.version), card.version  # --version + the weights' hash
    m = card.metrics
    assert m["n_train"] + m["n_val"] + m["n_test"] == N_PATIENTS and m["n_test"] > 0
    split, _, fingerprint = datasets.split_source(
        "rsna", PreprocessConfig(size=32), data_dir=root, val_fraction=0.25, test_fraction=0.2, seed=1
    )
    assert card.data_fingerprint == fingerprint
    assert m["n_val"] == len(split.val) == m["val_scores_n"] == sum(m["val_score_histogram"]["counts"])
    for part in ("val", "test"):
        for key in ("auroc", "average_precision", "sensitivity", "specificity"):
            lo, hi = m[part][f"{key}_ci"]
            assert lo <= m[part][key] <= hi
        assert {"tp", "fp", "tn", "fn", "ece", "precision", "recall", "f1", "accuracy"} <= set(m[part])
    assert m["test"]["threshold"] == m["val"]["threshold"] == pytest.approx(card.threshold, abs=1e-6)
    assert "--data rsna" in str(rsna_run["train_log"])


def test_cli_report_has_the_plots_and_the_table(rsna_run: dict[str, object]) -> None:
    report = Path(str(rsna_run["tmp"])) / "report"
    text = (report / "report.md").read_text()
    assert "| AUROC |" in text and "rsna-tiny 0.0.1" in text and "--data rsna" in text
    for name in ("roc.png", "pr.png", "calibration.png", "loss.png", "val_auroc.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        assert int.from_bytes(data[16:20], "big") > 100 and int.from_bytes(data[20:24], "big") > 100


def test_int8_copy_keeps_the_card_and_reports_the_auroc_change(rsna_run: dict[str, object]) -> None:
    tmp = Path(str(rsna_run["tmp"]))
    fp32, int8 = read_card(tmp / "m.onnx"), read_card(tmp / "m-int8.onnx")
    assert "match=True" in str(rsna_run["quantize_log"])
    assert int8.version == f"{fp32.version}.int8" and int8.device_uid != fp32.device_uid
    assert (int8.name, int8.preprocess, int8.data_fingerprint) == (
        fp32.name,
        fp32.preprocess,
        fp32.data_fingerprint,
    )
    q = int8.metrics[QUANTIZATION_KEY]
    assert q["fp32_version"] == fp32.version and q["format"] == "QDQ" and q["calibration_images"] == 8
    assert q["fp32_auroc"] == pytest.approx(fp32.metrics["val"]["auroc"], abs=1e-6)
    assert q["int8_auroc"] == pytest.approx(int8.metrics["val"]["auroc"], abs=1e-6)
    assert q["auroc_change"] == pytest.approx(q["int8_auroc"] - q["fp32_auroc"], abs=2e-6)
    assert int8.threshold == pytest.approx(q["int8_threshold"], abs=1e-6)
    assert sum(int8.metrics["val_score_histogram"]["counts"]) == fp32.metrics["n_val"]
    assert q["fp32_test"] == fp32.metrics["test"]  # the fp32 numbers stay on record
    assert int8.metrics["test"]["n"] == fp32.metrics["n_test"]
    assert int8.metrics["test"]["threshold"] == pytest.approx(int8.threshold, abs=1e-6)

    # the node loads it; the float head keeps probabilities continuous and CAMs finite
    x = np.random.default_rng(0).standard_normal((16, 1, 32, 32)).astype(np.float32)
    p, cam = PneumoniaModel(tmp / "m-int8.onnx").predict(x)
    assert len(np.unique(p)) == 16 and np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
