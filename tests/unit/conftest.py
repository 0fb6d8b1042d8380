"""Fixtures of the results tests (prefixed so they cannot shadow others): card, phantoms, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.model.card import ModelCard
from dicomnode.model.preprocess import PreprocessConfig
from dicomnode.testing.phantoms import make_phantom


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


@pytest.fixture
def dciodvfy_errors(tmp_path: Path) -> Callable[[pydicom.Dataset], list[str]]:
    """Write a dataset as a Part 10 file and return dciodvfy's lines starting with "Error"."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH")

    def errors(ds: pydicom.Dataset) -> list[str]:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return errors
