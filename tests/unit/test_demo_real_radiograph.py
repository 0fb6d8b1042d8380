"""The demo's real radiograph: RG1 from pydicom-data as a study of its own, or a line saying how to
install the package (and the demo goes on) where it is missing."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pydicom.data
import pytest

from dicomnode.cli.demo import REAL_RADIOGRAPH, real_radiograph


def test_real_radiograph_is_rg1_as_a_new_study(tmp_path: Path) -> None:
    source = pydicom.data.get_testdata_file(REAL_RADIOGRAPH, download=False)
    if not isinstance(source, str):
        pytest.skip(
            "pydicom-data is not installed: `.venv/bin/pip install pydicom-data` (the dev extra has it)"
        )
    path = real_radiograph(tmp_path)
    assert path is not None
    sent, original = (pydicom.dcmread(p, stop_before_pixels=True) for p in (path, source))
    assert (sent.Modality, sent.BodyPartExamined, sent.ViewPosition) == ("CR", "CHEST", "PA")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert sent.get(keyword) != original.get(keyword), keyword  # each run is a new study
    assert sent.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID


def test_without_pydicom_data_the_demo_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pydicom.data, "get_testdata_file", lambda name, download=True: None)
    assert real_radiograph(tmp_path) is None
    out = capsys.readouterr().out
    assert "pip install pydicom-data" in out and "Going on without it." in out
    assert list(tmp_path.iterdir()) == []
