"""Fixtures of the unit tests: the results tests' card and phantoms (prefixed so they cannot shadow
others), and the training tests' one shared tiny training run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.model.card import ModelCard
from dicomnode.model.preprocess import PreprocessConfig
from dicomnode.testing.phantoms import make_phantom

if TYPE_CHECKING:
    from training.train import TrainConfig, TrainResult


@pytest.fixture
def results_card() -> ModelCard:
    return ModelCard(
        name="pneumonia-resnet18",
        version="2024.06.1",
        threshold=0.42,
        device_uid=generate_uid(entropy_srcs=["test-device"]),
        preprocess=PreprocessConfig(size=64).to_dict(),
    )


@pytest.fixture
def results_phantom() -> Callable[..., pydicom.Dataset]:
    """make_phantom with a seed instead of a generator: ``phantom(seed, positive, **kw)``."""

    def make(seed: int = 0, positive: bool = True, **kwargs: object) -> pydicom.Dataset:
        kwargs.setdefault("size", 256)
        return make_phantom(np.random.default_rng(seed), positive, **kwargs)  # type: ignore[arg-type]

    return make


def _tiny_train_config(out_dir: Path, **changes: object) -> TrainConfig:
    from training.model import ModelConfig
    from training.train import TrainConfig

    base: dict[str, Any] = dict(
        n_phantoms=48,
        phantom_size=64,
        preprocess=PreprocessConfig(size=64),
        model=ModelConfig(depth=18, width=8),
        epochs=2,
        batch_size=8,
        seed=3,
        threads=1,
        out_dir=out_dir,
    )
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[..., TrainConfig]:
    """``make(out_dir, **changes)``: the training tests' tiny run (48 phantoms, 64 px, 2 epochs of a
    ResNet-18 of width 8); :func:`trained_run` is this config at ``changes={}``. Needs torch."""
    pytest.importorskip("torch")
    return _tiny_train_config


@dataclass(frozen=True)
class TrainedRun:
    """The shared run: its config, its result, its checkpoint and its exported ONNX file."""

    config: TrainConfig
    result: TrainResult
    checkpoint: Path
    onnx: Path
    card: ModelCard


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One tiny training run and its export, shared by the tests that need a trained model but not
    a run of their own (training and exporting take ~20 s on two cores, most of it the export).

    Read-only: a test that resumes or rewrites a run copies the checkpoint first. The ONNX file is
    alone in its folder, as :func:`training.export.export_onnx` leaves it.
    """
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from training.export import export_onnx
    from training.train import CHECKPOINT_NAME, train

    root = tmp_path_factory.mktemp("trained")
    config = _tiny_train_config(root / "run")
    result = train(config, log=lambda event, **fields: None)
    card = result.card(name="tiny-trained", version="0.0.1")
    onnx = export_onnx(result.model, root / "export" / "m.onnx", card)
    return TrainedRun(config, result, root / "run" / CHECKPOINT_NAME, onnx, card)
