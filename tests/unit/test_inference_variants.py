"""Which model a worker runs, and how: the INT8 copy by measurement and by its card, inputs and
outputs bound on the device, TensorRT first when asked for (dicomnode/model/session.py).

Real onnxruntime sessions on the tiny model (tests/tiny_model.py); the "INT8 copy" is a second tiny
model with a quantisation record in its card (a real quantised file would take seconds to make
and is tested in tests/unit/test_training_quantize.py). Whether INT8 is faster on this CPU is
measured, so the tests that need one answer set the margin it must beat: 0 (any time passes) or
one no model can beat.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicomnode.config import Settings
from dicomnode.model import session as session_module
from dicomnode.model.card import QUANTIZATION_KEY, ModelCard
from dicomnode.model.session import (
    GPU_BATCH_SIZE,
    TENSORRT_PROVIDER,
    PneumoniaModel,
    int8_path,
    int8_refusal,
    predict_onnx,
    time_runs,
    worker_providers,
)
from tests.tiny_model import SIZE, tiny_card, write_tiny_model


def _int8_card(fp32: ModelCard, **record: Any) -> ModelCard:
    quantization = {"fp32_version": fp32.version, "auroc_change": -0.002, **record}
    return replace(
        fp32, version=f"{fp32.version}+int8", threshold=0.45, metrics={QUANTIZATION_KEY: quantization}
    )


def _models(tmp_path: Path, **record: Any) -> tuple[Path, Path]:
    """The tiny model and, beside it, an "INT8 copy" (another weight, so its scores differ)."""
    fp32 = write_tiny_model(tmp_path / "m.onnx")
    int8 = write_tiny_model(int8_path(fp32), _int8_card(tiny_card(), **record), weight=3.0)
    return fp32, int8


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((n, 1, SIZE, SIZE), dtype=np.float32)


def test_the_int8_copy_sits_beside_the_model_with_the_readme_name() -> None:
    assert int8_path(Path("models/pneumonia.onnx")) == Path("models/pneumonia-int8.onnx")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"fp32_version": "9.9.9"}, "quantised from model version '9.9.9'"),
        ({"auroc_change": None}, "records no AUROC change"),
        ({"auroc_change": -0.03}, "loses 0.0300 AUROC, more than DICOMNODE_INT8_MAX_AUROC_DROP=0.01"),
    ],
)
def test_an_int8_copy_that_is_not_this_models_or_loses_too_much_is_refused(
    record: dict[str, Any], expected: str
) -> None:
    fp32 = tiny_card()
    refusal = int8_refusal(fp32, _int8_card(fp32, **record), 0.01)
    assert refusal is not None and expected in refusal


def test_an_int8_copy_within_the_allowed_drop_may_stand_in() -> None:
    fp32 = tiny_card()
    assert int8_refusal(fp32, _int8_card(fp32, auroc_change=-0.01), 0.01) is None
    assert int8_refusal(fp32, _int8_card(fp32, auroc_change=0.004), 0.0) is None
    no_record = replace(fp32, version="x+int8")
    assert "no quantisation record" in (int8_refusal(fp32, no_record, 0.01) or "")
    other_size = replace(_int8_card(fp32), preprocess={**fp32.preprocess, "size": SIZE * 2})
    assert "preprocessing differs" in (int8_refusal(fp32, other_size, 0.01) or "")


def test_a_cpu_worker_runs_int8_when_it_is_faster_and_records_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32, int8 = _models(tmp_path)
    monkeypatch.setattr(session_module, "INT8_MIN_SPEEDUP", 0.0)  # any timing passes

    model = PneumoniaModel.from_settings(Settings(storage_dir=tmp_path / "node", model=fp32))

    assert model.int8 is not None and model.int8.used
    assert model.int8.fp32_ms is not None and model.int8.fp32_ms > 0
    assert model.int8.int8_ms is not None and model.int8.int8_ms > 0
    assert model.int8.auroc_change == pytest.approx(-0.002)
    # the INT8 card is the model's now: its version goes into the analysis rows and results
    assert model.card.version == "0.0.1-test+int8" and model.card.threshold == pytest.approx(0.45)
    assert model.path == int8
    p, cam = model.predict(_images())
    expected_p, expected_cam = predict_onnx(int8, _images())
    np.testing.assert_allclose(p, expected_p, rtol=1e-6)
    np.testing.assert_allclose(cam, expected_cam, rtol=1e-6)


def test_a_cpu_worker_keeps_fp32_when_int8_is_not_faster_by_the_margin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32, _ = _models(tmp_path)
    monkeypatch.setattr(session_module, "INT8_MIN_SPEEDUP", 1e9)

    model = PneumoniaModel(fp32, int8_max_auroc_drop=0.01)

    assert model.int8 is not None and not model.int8.used and "not" in model.int8.reason
    assert model.int8.fp32_ms is not None and model.int8.int8_ms is not None  # both were timed
    assert model.card.version == "0.0.1-test" and model.path == fp32
    np.testing.assert_allclose(model.predict(_images())[0], predict_onnx(fp32, _images())[0], rtol=1e-6)


def test_an_int8_copy_that_loses_too_much_auroc_is_not_even_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32, _ = _models(tmp_path, auroc_change=-0.05)
    monkeypatch.setattr(session_module, "INT8_MIN_SPEEDUP", 0.0)

    model = PneumoniaModel(fp32, int8_max_auroc_drop=0.01)

    assert model.int8 is not None and not model.int8.used
    assert "DICOMNODE_INT8_MAX_AUROC_DROP" in model.int8.reason and model.int8.fp32_ms is None
    assert model.card.version == "0.0.1-test"


@pytest.mark.parametrize("drop", [None, -1.0])
def test_int8_is_never_considered_when_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: float | None
) -> None:
    fp32, _ = _models(tmp_path)
    monkeypatch.setattr(session_module, "INT8_MIN_SPEEDUP", 0.0)
    model = PneumoniaModel(fp32, int8_max_auroc_drop=drop)
    assert model.int8 is None and model.card.version == "0.0.1-test"


def test_without_an_int8_copy_there_is_no_decision(tmp_path: Path) -> None:
    model = PneumoniaModel(write_tiny_model(tmp_path / "m.onnx"), int8_max_auroc_drop=0.01)
    assert model.int8 is None


def test_inputs_and_outputs_bound_on_the_device_score_as_a_plain_run(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "m.onnx")
    bound = PneumoniaModel(path, io_binding=True, batch_size=2)  # 5 images: batches of 2, 2 and 1
    plain = PneumoniaModel(path, io_binding=False)
    assert bound.io_binding and not plain.io_binding and not bound.on_gpu
    images = _images(5)
    (p1, c1), (p2, c2) = bound.predict(images), plain.predict(images)
    assert p1.shape == (5,) and c1.shape == (5, 8, 8)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(c1, c2)


def test_a_cpu_worker_scores_eight_images_a_call_and_binds_nothing(tmp_path: Path) -> None:
    model = PneumoniaModel(write_tiny_model(tmp_path / "m.onnx"))
    assert model.providers[0] == "CPUExecutionProvider" and model.batch_size == 8 and not model.io_binding


def test_tensorrt_comes_first_with_one_profile_for_every_batch_and_an_engine_cache(tmp_path: Path) -> None:
    available = [TENSORRT_PROVIDER, "CUDAExecutionProvider", "CPUExecutionProvider"]
    card = tiny_card()

    chosen = worker_providers(available, tensorrt=True, card=card, cache_dir=tmp_path / "trt")

    name, options = chosen[0]
    assert name == TENSORRT_PROVIDER and chosen[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_profile_min_shapes"] == f"image:1x1x{SIZE}x{SIZE}"
    assert options["trt_profile_max_shapes"] == f"image:{GPU_BATCH_SIZE}x1x{SIZE}x{SIZE}"
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert options["trt_fp16_enable"] is False
    # not asked for, or not installed: the list is the preferred providers this build has
    assert worker_providers(available, tensorrt=False) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert worker_providers(["CPUExecutionProvider"], tensorrt=True) == ["CPUExecutionProvider"]


def test_the_timing_is_bounded_in_calls_and_takes_at_least_three() -> None:
    calls = {"a": 0, "b": 0}

    def count(name: str) -> Any:
        return lambda: calls.__setitem__(name, calls[name] + 1)

    ms = time_runs({"a": count("a"), "b": count("b")}, max_runs=5, max_seconds=60)
    assert calls == {"a": 6, "b": 6} and set(ms) == {"a", "b"}  # one warm-up, five timed
    calls.update(a=0, b=0)
    time_runs({"a": count("a"), "b": count("b")}, max_runs=10, max_seconds=0)
    assert calls == {"a": 4, "b": 4}  # out of time at once: still three timed
