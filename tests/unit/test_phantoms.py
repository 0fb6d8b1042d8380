"""Phantoms are valid, realistic-looking DICOM radiographs, deterministic per seed."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from dicomnode.model.preprocess import PreprocessConfig, preprocess
from dicomnode.testing.phantoms import (
    PhantomStudy,
    make_phantom,
    phantom_labels,
    write_phantom_studies,
)
from training.evaluate import roc_auc


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.mark.parametrize(
    ("modality", "sop_class"),
    [("DX", DigitalXRayImageStorageForPresentation), ("CR", ComputedRadiographyImageStorage)],
)
def test_phantom_round_trips_through_dcmwrite_and_dcmread(modality: str, sop_class: str) -> None:
    ds = make_phantom(np.random.default_rng(1), True, modality=modality, size=96)
    back = _round_trip(ds)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPClassUID == sop_class == back.SOPClassUID
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.preamble == b"\x00" * 128
    assert back.pixel_array.shape == (96, 96)
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
    assert back.Modality == modality


def test_phantom_has_the_headers_a_pacs_sends_for_a_chest_radiograph() -> None:
    ds = make_phantom(
        np.random.default_rng(2),
        False,
        study_uid="1.2.3.4",
        patient_id="PH0042",
        patient_name="PHANTOM^0042",
        size=80,
    )
    for keyword in (
        "SOPInstanceUID", "SeriesInstanceUID", "PatientBirthDate", "StudyDate", "StudyTime",
        "AccessionNumber", "StudyID", "Manufacturer", "InstitutionName", "ImagerPixelSpacing",
        "PixelSpacing", "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope",
        "SeriesNumber", "InstanceNumber", "ContentDate", "ContentTime",
    ):  # fmt: skip
        assert keyword in ds and ds[keyword].value not in (None, ""), keyword
    assert "ReferringPhysicianName" in ds  # Type 2: present, may be empty
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert ds.PatientID == "PH0042" and str(ds.PatientName) == "PHANTOM^0042"
    assert ds.PatientSex in ("F", "M")
    assert ds.BodyPartExamined == "CHEST"
    assert ds.ViewPosition == "PA"
    assert list(ds.PatientOrientation) == ["L", "F"]
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ImageLaterality == "U"
    assert ds.SamplesPerPixel == 1 and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert 10 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
    assert ds.pixel_array.max() <= 2**ds.BitsStored - 1
    expected_shape = {"MONOCHROME1": "INVERSE", "MONOCHROME2": "IDENTITY"}
    assert ds.PresentationLUTShape == expected_shape[ds.PhotometricInterpretation]
    assert 349 <= float(ds.ImagerPixelSpacing[0]) * ds.Columns <= 431  # a 35-43 cm detector
    assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])  # magnification corrected
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Chest"


def test_phantoms_vary_photometric_interpretation_and_bit_depth() -> None:
    rng = np.random.default_rng(3)
    seen = [make_phantom(rng, bool(i % 2), size=64) for i in range(24)]
    assert {d.PhotometricInterpretation for d in seen} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({d.BitsStored for d in seen}) >= 3
    assert len({d.SOPInstanceUID for d in seen}) == 24


def test_default_size_is_between_512_and_768() -> None:
    ds = make_phantom(np.random.default_rng(4), False)
    assert 512 <= ds.Rows <= 768 and ds.Rows == ds.Columns


@pytest.mark.parametrize("view", ["AP", "LL"])
def test_other_views_are_recorded(view: str) -> None:
    ds = make_phantom(np.random.default_rng(5), False, view=view, size=64)
    assert ds.ViewPosition == view
    assert ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"


def test_bad_arguments_say_what_to_use() -> None:
    with pytest.raises(ValueError, match="'DX' or 'CR'"):
        make_phantom(np.random.default_rng(0), True, modality="CT")
    with pytest.raises(ValueError, match="view"):
        make_phantom(np.random.default_rng(0), True, view="XX")


@pytest.mark.process
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_phantom_passes_dciodvfy_without_errors(tmp_path: Path, modality: str) -> None:
    ds = make_phantom(np.random.default_rng(6), True, modality=modality, size=64)
    path = tmp_path / "p.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_write_phantom_studies_layout_labels_and_patients(tmp_path: Path) -> None:
    studies = write_phantom_studies(tmp_path, 6, seed=7, positive_fraction=0.5, size=64)
    assert len(studies) == 6 and sum(s.positive for s in studies) == 3
    assert len({s.patient_id for s in studies}) == 6
    for s in studies:
        assert isinstance(s, PhantomStudy)
        assert len(s.paths) == 1
        ds = pydicom.dcmread(s.paths[0])
        assert s.paths[0] == tmp_path / s.study_uid / f"{ds.SOPInstanceUID}.dcm"
        assert ds.StudyInstanceUID == s.study_uid
        assert ds.PatientID == s.patient_id and str(ds.PatientName) == s.patient_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        studies[0].positive = False  # type: ignore[misc]


def test_write_phantom_studies_is_deterministic_per_seed(tmp_path: Path) -> None:
    a = write_phantom_studies(tmp_path / "a", 3, seed=11, size=64)
    b = write_phantom_studies(tmp_path / "b", 3, seed=11, size=64)
    c = write_phantom_studies(tmp_path / "c", 3, seed=12, size=64)
    assert [s.study_uid for s in a] == [s.study_uid for s in b]
    for sa, sb in zip(a, b, strict=True):
        assert sa.paths[0].name == sb.paths[0].name
        assert sa.paths[0].read_bytes() == sb.paths[0].read_bytes()
    assert not {s.study_uid for s in a} & {s.study_uid for s in c}


@pytest.mark.slow
def test_mean_intensity_does_not_give_the_class_away() -> None:
    config = PreprocessConfig(size=64)
    labels = phantom_labels(80, seed=21)
    means = [
        float(preprocess(make_phantom(np.random.default_rng([21, i]), bool(y), size=128), config).mean())
        for i, y in enumerate(labels)
    ]
    assert 0.3 <= roc_auc(labels, np.array(means)) <= 0.7


def test_opacities_only_add_density_inside_the_lungs() -> None:
    # same generator state: same anatomy, distractors and noise, with and without opacities
    from dicomnode.testing.phantoms import chest_density

    pos = chest_density(np.random.default_rng(31), 128, positive=True)
    neg = chest_density(np.random.default_rng(31), 128, positive=False)
    assert pos.shape == neg.shape == (128, 128) and pos.dtype == np.float32
    diff = pos - neg
    assert diff.min() >= -1e-6  # opacities never make the image darker
    assert diff.max() > 0.05  # and are visible
    changed_cols = np.nonzero(diff.max(axis=0) > 1e-3)[0]
    # the lungs lie inside the torso: the outer eighth on each side never changes
    assert changed_cols.min() > 128 // 8 and changed_cols.max() < 128 - 128 // 8
