"""The real-data recipe's options: repeatable from the printed command, the schedule a time budget
shortens, balanced sampling."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

pytest.importorskip("torch")

from training.__main__ import build_parser, train_config_from_args  # noqa: E402
from training.image_sets import TableSpec  # noqa: E402
from training.train import TrainConfig, _lr_lambda  # noqa: E402


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(data="classes", data_dir=Path("kermany"), positive_class="PNEUMONIA", clip_grad=1.0),
        TrainConfig(
            data="table",
            labels_csv=Path("train.csv"),
            data_dir=Path("chexpert"),
            table=TableSpec(
                path_column="Path", label_column="Pneumonia", patient_column="", uncertain="positive"
            ),
            balance="sampler",
            max_train_seconds=1500.0,
        ),
    ],
)
def test_printed_command_repeats_an_image_set_run(config: TrainConfig) -> None:
    argv = shlex.split(config.command())
    assert train_config_from_args(build_parser().parse_args(argv[3:])) == config


def test_a_shortened_schedule_still_anneals_to_zero() -> None:
    total = [1000]
    f = _lr_lambda(total, warmup_steps=100)
    assert f(0) == pytest.approx(0.01) and f(99) == pytest.approx(1.0)
    assert f(550) == pytest.approx(0.5)
    total[0] = 600  # the time budget cut the run to 60 % of its steps
    assert f(599) == pytest.approx(0.0, abs=1e-4) and f(350) == pytest.approx(0.5)


def test_config_refuses_unknown_balance_and_negative_clip() -> None:
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(balance="oversample")
    with pytest.raises(ValueError, match="clip_grad"):
        TrainConfig(clip_grad=-1.0)
    with pytest.raises(ValueError, match="--labels"):
        TrainConfig(data="table")
