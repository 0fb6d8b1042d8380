"""INT8 quantisation as a library call: the QOperator format, and inputs it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dicomnode.model import read_card  # noqa: E402
from training.quantize import QUANTIZATION_KEY, quantize_int8  # noqa: E402

if TYPE_CHECKING:
    from tests.unit.conftest import TrainedRun


@pytest.mark.slow
def test_qoperator_format_and_bad_calibration_input(trained_run: TrainedRun, tmp_path: Path) -> None:
    fp32 = trained_run.onnx
    size = trained_run.config.preprocess.size
    x = np.random.default_rng(1).standard_normal((8, 1, size, size)).astype(np.float32)
    out = quantize_int8(fp32, tmp_path / "qop.onnx", x, quant_format="qoperator")
    card = read_card(out)
    assert card.metrics[QUANTIZATION_KEY]["format"] == "QOperator"
    assert "fp32_auroc" not in card.metrics[QUANTIZATION_KEY]  # no labelled validation given
    assert card.threshold == read_card(fp32).threshold
    with pytest.raises(ValueError, match=rf"\[N >= 1, 1, {size}, {size}\]"):
        quantize_int8(fp32, tmp_path / "bad.onnx", x[:, :, :16, :16])
