"""The model contract and training's torch-free modules import without torch; the CLI writes
phantoms. (Which package may import which: tests/unit/test_layout.py.)"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from training.__main__ import main

REPO = Path(__file__).resolve().parents[2]

TORCH_FREE = (
    "dicomnode.model",
    "dicomnode.testing.phantoms",
    "training",
    "training.__main__",
    "training.datasets",
    "training.evaluate",
    "training.demo",
    "training.plots",
    "training.report",
    "training.quantize",
)


def _run_without_torch(code: str) -> subprocess.CompletedProcess[str]:
    # a None entry in sys.modules makes `import torch` raise ImportError, as if not installed
    prelude = "import sys; sys.modules['torch'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # a subprocess importing onnx and onnxruntime.quantization
@pytest.mark.process
def test_contract_and_torch_free_training_modules_import_without_torch() -> None:
    imports = "; ".join(f"import {m}" for m in TORCH_FREE)
    out = _run_without_torch(f"{imports}\nprint('ok')")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.process
def test_config_and_the_model_contract_import_neither_onnxruntime_nor_training() -> None:
    # every command loads dicomnode.config; onnxruntime loads only when a model is opened
    heavy = ("onnxruntime", "onnx", "structlog", "training")
    out = _run_without_torch(
        f"import dicomnode.config, dicomnode.model\nprint([m for m in {heavy!r} if m in sys.modules])"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.process
def test_demo_model_without_torch_says_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "from pathlib import Path\nfrom training.demo import ensure_demo_model\n"
        f"try:\n    ensure_demo_model(Path({str(tmp_path / 'm.onnx')!r}))\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = _run_without_torch(code)
    assert out.returncode == 0, out.stderr
    assert "pip install torch==2.13.0 && pip install -e .[train]" in out.stdout


def test_phantoms_command_writes_studies_and_a_labels_csv(tmp_path: Path) -> None:
    out_dir, labels = tmp_path / "ph", tmp_path / "labels.csv"
    args = ["phantoms", "--out", str(out_dir), "-n", "4", "--size", "48", "--labels", str(labels)]
    assert main(args) == 0
    files = sorted(out_dir.glob("*/*.dcm"))
    assert len(files) == 4
    with labels.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["label"] for r in rows) == ["0", "0", "1", "1"]
    for row in rows:
        ds = pydicom.dcmread(out_dir / row["path"])
        assert ds.PatientID == row["patient_id"]


def test_every_command_the_dicomnode_passthrough_knows_is_a_training_command() -> None:
    from training.__main__ import COMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == COMMANDS
