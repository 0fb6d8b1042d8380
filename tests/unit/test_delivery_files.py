"""Which result objects the sender sends as their stored files (encoded once), and the setting of
the kept-open delivery associations. No sockets: tests/integration/test_delivery_pool.py sends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import EnhancedSRStorage, ExplicitVRLittleEndian

from dicomnode.config import ConfigError, load_settings
from dicomnode.delivery.sender import encoded_file, enhanced_sr_fallback
from dicomnode.model.card import ModelCard
from dicomnode.results import Finding, build_sr


@pytest.fixture
def stored_sr(
    tmp_path: Path, results_phantom: Callable[..., pydicom.Dataset], results_card: ModelCard
) -> tuple[pydicom.Dataset, Path]:
    sr = build_sr([results_phantom(1, True)], Finding(0.8, results_card.threshold), results_card)
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return sr, path


def test_dataset_read_from_its_file_is_sent_as_that_file(stored_sr: tuple[pydicom.Dataset, Path]) -> None:
    _, path = stored_sr
    assert encoded_file(pydicom.dcmread(path)) == (path, str(ExplicitVRLittleEndian))


def test_dataset_built_in_memory_is_encoded(stored_sr: tuple[pydicom.Dataset, Path]) -> None:
    sr, _ = stored_sr
    assert encoded_file(sr) is None


def test_fallback_copy_in_another_class_is_encoded(stored_sr: tuple[pydicom.Dataset, Path]) -> None:
    _, path = stored_sr
    alt = enhanced_sr_fallback(pydicom.dcmread(path))
    assert alt is not None and alt.SOPClassUID == EnhancedSRStorage
    assert encoded_file(alt) is None
    alt.filename = str(path)  # even pointed at the file: the file holds the other class
    assert encoded_file(alt) is None


def test_file_of_another_instance_or_gone_is_not_sent(
    stored_sr: tuple[pydicom.Dataset, Path], tmp_path: Path
) -> None:
    _, path = stored_sr
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    assert encoded_file(ds) is None
    ds = pydicom.dcmread(path)
    path.unlink()
    assert encoded_file(ds) is None
    ds.filename = str(tmp_path / "not-dicom.txt")
    (tmp_path / "not-dicom.txt").write_text("hello")
    assert encoded_file(ds) is None


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_idle_release_must_be_zero_or_more_seconds(value: str) -> None:
    with pytest.raises(ConfigError, match="DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS"):
        load_settings(env={"DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS": value})
    assert (
        load_settings(env={"DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS": "0"}).delivery_idle_release_seconds == 0
    )
    assert load_settings(env={}).delivery_idle_release_seconds == 5
