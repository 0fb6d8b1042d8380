"""Training: reproducible from its printed command, deterministic, resumable, no flips; and the demo
model trains to a clearly separating classifier on phantoms."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dicomnode.model import (  # noqa: E402
    CAM_OUTPUT,
    INPUT_NAME,
    PROBABILITY_OUTPUT,
    PreprocessConfig,
    preprocess,
    read_card,
)
from dicomnode.testing.phantoms import make_phantom, phantom_labels  # noqa: E402
from training.__main__ import build_parser, train_config_from_args  # noqa: E402
from training.demo import DEMO_NAME, ensure_demo_model  # noqa: E402
from training.evaluate import roc_auc  # noqa: E402
from training.train import CHECKPOINT_NAME, TrainConfig, augment_batch, load_checkpoint_model, train  # noqa: E402

if TYPE_CHECKING:
    from tests.unit.conftest import TrainedRun

TinyConfig = Callable[..., TrainConfig]


def _quiet(event: str, **fields: object) -> None:
    pass


@pytest.mark.slow
def test_training_is_deterministic_and_resumes_where_it_stopped(
    trained_run: TrainedRun, tiny_train_config: TinyConfig, tmp_path: Path
) -> None:
    full = trained_run.result  # the shared run has this test's config; it trained without a stop
    # the same run, stopped by the time limit after its first epoch, then resumed
    first = train(tiny_train_config(tmp_path / "split", max_train_seconds=0.0), log=_quiet)
    assert first.epochs_run == 1
    resumed = train(tiny_train_config(tmp_path / "split", resume=True), log=_quiet)
    assert resumed.epochs_run == 2

    a = load_checkpoint_model(trained_run.checkpoint, best=False).state_dict()
    b = load_checkpoint_model(tmp_path / "split" / CHECKPOINT_NAME, best=False).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [h["val_auroc"] for h in full.history] == [h["val_auroc"] for h in resumed.history]

    assert 0.0 <= full.threshold <= 1.0
    assert full.n_train + full.n_val == 48
    card = full.card(name="t", version="1")
    assert card.preprocess == trained_run.config.preprocess.to_dict()
    assert card.architecture == "resnet18-w8" and card.data_fingerprint == full.data_fingerprint
    assert card.metrics["val"]["auroc"] == pytest.approx(full.val_auroc, abs=1e-6)


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_from_other_data(
    trained_run: TrainedRun, tiny_train_config: TinyConfig, tmp_path: Path
) -> None:
    shutil.copy(trained_run.checkpoint, tmp_path / CHECKPOINT_NAME)  # the shared run stays as it is
    with pytest.raises(ValueError, match="other data"):
        train(tiny_train_config(tmp_path, seed=4, resume=True), log=_quiet)


def test_printed_command_rebuilds_the_same_config(tiny_train_config: TinyConfig, tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, lr=0.002, augment=False, workers=2, max_train_seconds=30.0)
    argv = shlex.split(config.command())
    assert argv[:4] == ["python", "-m", "training", "train"]
    assert train_config_from_args(build_parser().parse_args(argv[3:])) == config


def test_augmentation_never_flips_left_and_right() -> None:
    x = torch.zeros(64, 1, 32, 32)
    x[..., :16] = 1.0  # bright on the image left (the patient's right)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    left, right = out[..., :12].mean(dim=(1, 2, 3)), out[..., 20:].mean(dim=(1, 2, 3))
    assert torch.all(left > right + 0.5)
    assert not torch.equal(out[0], out[1])  # random per image


def test_config_errors_say_which_option_to_set() -> None:
    with pytest.raises(ValueError, match="--data-dir"):
        TrainConfig(data="rsna")
    with pytest.raises(ValueError, match="--labels"):
        TrainConfig(data="folder", data_dir=Path("x"))
    with pytest.raises(ValueError, match="--out-dir"):
        TrainConfig(resume=True)


@pytest.fixture(scope="module")
def demo_model(model_path: Path) -> Path:
    """The session's demo model (tests/conftest.py trains it once with ensure_demo_model)."""
    return model_path


@pytest.mark.slow
def test_demo_model_reaches_val_auroc_0_9_and_carries_its_card(demo_model: Path) -> None:
    card = read_card(demo_model)
    assert card.name == DEMO_NAME
    assert card.version.startswith("0.1.0-demo+")
    assert card.metrics["val"]["auroc"] >= 0.9
    assert 0.0 < card.threshold < 1.0
    assert PreprocessConfig.from_dict(card.preprocess).size == card.preprocess["size"]
    # ensure_demo_model reuses the file instead of training again
    before = demo_model.stat().st_mtime_ns
    assert ensure_demo_model(demo_model) == demo_model
    assert demo_model.stat().st_mtime_ns == before


@pytest.mark.slow
def test_demo_model_separates_fresh_full_size_phantoms_through_onnxruntime(demo_model: Path) -> None:
    import onnxruntime as ort

    card = read_card(demo_model)
    config = PreprocessConfig.from_dict(card.preprocess)
    labels = phantom_labels(40, seed=777)
    # fresh phantoms at the default 512-768 px, as the node receives them, never seen in training
    x = np.stack(
        [
            preprocess(make_phantom(np.random.default_rng([777, i]), bool(y)), config)
            for i, y in enumerate(labels)
        ]
    )
    session = ort.InferenceSession(str(demo_model), providers=["CPUExecutionProvider"])
    prob, cam = session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: x})
    assert roc_auc(labels, prob) >= 0.9
    assert prob[labels].mean() - prob[~labels].mean() > 0.4
    assert cam.min() >= 0.0 and cam.max() <= 1.0


def test_device_auto_falls_back_to_cpu_and_cuda_without_gpu_says_what_to_do() -> None:
    import torch

    from training.train import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        resolve_device("tpu")
