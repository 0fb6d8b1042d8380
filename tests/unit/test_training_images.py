"""PNG/JPEG image sets: loaders, patient IDs and splits, and the same tensor as the DICOM the PACS sends."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from dicomnode.model import PreprocessConfig, preprocess
from training.datasets import Sample, load_one, load_source, split_by_patient
from training.image_files import preprocess_image, read_image
from training.image_sets import (
    TableSpec,
    kermany_patient_id,
    load_class_folders,
    load_table,
    shared_data_dir,
)

Image = pytest.importorskip("PIL.Image", reason="Pillow comes with highdicom and the train extra")

KERMANY = shared_data_dir() / "kermany-train"


def _needs_kermany() -> Path:
    if not (KERMANY / "NORMAL").is_dir():
        pytest.skip(f"real data not here: {KERMANY} (set DICOMNODE_DATA_DIR to the shared data folder)")
    return KERMANY


def _radiograph(rng: np.random.Generator, shape: tuple[int, int], bits: int) -> np.ndarray:
    """A smooth grey image with noise, over the full range of ``bits``."""
    r, c = np.mgrid[0 : shape[0], 0 : shape[1]]
    body = np.exp(-(((r - shape[0] / 2) / shape[0]) ** 2 + ((c - shape[1] / 2) / (0.6 * shape[1])) ** 2) * 4)
    img = body + 0.1 * rng.standard_normal(shape)
    img = (img - img.min()) / (img.max() - img.min())
    return np.round(img * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _as_dx_dicom(pixels: np.ndarray, path: Path) -> Path:
    """``pixels`` as a DX For Presentation file: MONOCHROME2, no rescale, no window, no VOI LUT."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("shape", [(96, 80), (300, 300)])
def test_png_and_the_same_pixels_as_dx_dicom_give_the_same_tensor(
    tmp_path: Path, bits: int, shape: tuple
) -> None:
    pixels = _radiograph(np.random.default_rng(bits), shape, bits)
    png = tmp_path / "image.png"
    Image.fromarray(pixels).save(png)
    assert np.array_equal(read_image(png), pixels)  # PNG is lossless: the very same pixels
    dcm = _as_dx_dicom(pixels, tmp_path / "image.dcm")
    for voi in ("header", "percentile"):
        config = PreprocessConfig(size=64, voi=voi)
        from_png = load_one(Sample("p", 0, png), config, None)  # how training reads it
        from_dicom = preprocess(pydicom.dcmread(dcm), config)  # how the worker reads the PACS's file
        assert from_png.shape == (1, 64, 64) and from_png.dtype == np.float32
        np.testing.assert_array_equal(from_png, from_dicom)


def test_a_real_kermany_jpeg_scores_as_its_pixels_wrapped_as_dx_dicom(tmp_path: Path) -> None:
    jpeg = sorted((_needs_kermany() / "PNEUMONIA").glob("*.jpeg"))[0]
    pixels = read_image(jpeg)  # grey replicated in 3 JPEG planes, read as one
    assert pixels.ndim == 2 and pixels.dtype == np.uint8
    dcm = _as_dx_dicom(pixels, tmp_path / "kermany.dcm")
    config = PreprocessConfig(size=128)
    np.testing.assert_array_equal(preprocess_image(jpeg, config), preprocess(pydicom.dcmread(dcm), config))


def test_a_colour_image_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour image"):
        read_image(tmp_path / "colour.png")


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0629-0001-0002.jpeg", "IM-0629"),
        ("NORMAL2-IM-0123-0001.jpeg", "NORMAL2-IM-0123"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("person1628_virus_2822_2.jpeg", "person1628"),
        ("scan.png", "scan"),
    ],
)
def test_kermany_patient_ids(name: str, patient: str) -> None:
    assert kermany_patient_id(name) == patient


def _write_png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def test_class_folders_label_the_chosen_positive_class(tmp_path: Path) -> None:
    for name in ("NORMAL/IM-0001-0001.png", "NORMAL/IM-0001-0002.png"):
        _write_png(tmp_path / name)
    (tmp_path / "NORMAL" / "notes.txt").write_text("not an image")
    for name in (
        "PNEUMONIA/person7_bacteria_1.png",
        "PNEUMONIA/person7_virus_2.png",
        "PNEUMONIA/person8_virus_3.png",
    ):
        _write_png(tmp_path / name)
    samples = load_class_folders(tmp_path)
    assert sorted((s.path.name, s.label, s.patient_id) for s in samples if s.path) == [
        ("IM-0001-0001.png", 0, "IM-0001"),
        ("IM-0001-0002.png", 0, "IM-0001"),
        ("person7_bacteria_1.png", 1, "person7"),
        ("person7_virus_2.png", 1, "person7"),
        ("person8_virus_3.png", 1, "person8"),
    ]
    flipped = load_class_folders(tmp_path, positive="NORMAL")
    assert {s.label for s in flipped if s.patient_id == "IM-0001"} == {1}
    with pytest.raises(ValueError, match="positive class 'EFFUSION'"):
        load_class_folders(tmp_path, positive="EFFUSION")


def test_nih_table_labels_the_chosen_finding(tmp_path: Path) -> None:
    rows = [
        ("00000001_000.png", "Cardiomegaly", "1"),
        ("00000001_001.png", "Effusion|Pneumonia", "1"),
        ("00000002_000.png", "No Finding", "2"),
        ("00000003_000.png", "Pneumonia", "3"),
    ]
    with (tmp_path / "Data_Entry_2017.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        for name, labels, patient in rows:
            _write_png(tmp_path / "images" / name)
            w.writerow([name, labels, "0", patient])
    samples = load_table(tmp_path / "Data_Entry_2017.csv", tmp_path / "images")
    assert [(s.label, s.patient_id) for s in samples] == [(0, "1"), (1, "1"), (0, "2"), (1, "3")]
    effusion = load_table(
        tmp_path / "Data_Entry_2017.csv", tmp_path / "images", TableSpec(finding="effusion")
    )
    assert [s.label for s in effusion] == [0, 1, 0, 0]


def _chexpert(tmp_path: Path) -> Path:
    rows = [
        ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "1.0"),
        ("CheXpert-v1.0-small/train/patient00001/study2/view1_frontal.jpg", "-1.0"),
        ("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", ""),
        ("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "0.0"),
    ]
    with (tmp_path / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Path", "Sex", "Frontal/Lateral", "Pneumonia"])
        for path, label in rows:
            _write_png(tmp_path / path)
            w.writerow([path, "Female", "Frontal", label])
    return tmp_path / "train.csv"


@pytest.mark.parametrize(
    ("uncertain", "labels"), [("drop", [1, 0, 0]), ("negative", [1, 0, 0, 0]), ("positive", [1, 1, 0, 0])]
)
def test_chexpert_table_reads_uncertain_labels_as_asked(
    tmp_path: Path, uncertain: str, labels: list[int]
) -> None:
    spec = TableSpec(path_column="Path", label_column="Pneumonia", patient_column="", uncertain=uncertain)
    samples = load_table(_chexpert(tmp_path), tmp_path, spec)
    assert [s.label for s in samples] == labels
    assert samples[0].patient_id == "patient00001" and samples[-1].patient_id == "patient00003"


def test_a_table_without_patients_is_refused(tmp_path: Path) -> None:
    spec = TableSpec(
        path_column="Path", label_column="Pneumonia", patient_column="", patient_pattern=r"subject(\d+)"
    )
    with pytest.raises(ValueError, match="no patient ID"):
        load_table(_chexpert(tmp_path), tmp_path, spec)


def test_the_real_kermany_split_keeps_every_patient_in_one_part() -> None:
    samples, _ = load_source("classes", data_dir=_needs_kermany())
    assert len(samples) == 5216
    split = split_by_patient(samples, val_fraction=0.15, test_fraction=0.15, seed=0)
    parts = [{s.patient_id for s in part} for part in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert sum(map(len, parts)) == len({s.patient_id for s in samples}) < len(samples)
    # a patient with several images (IM-0629 has four) stays whole
    im0629 = [p for p in parts if "IM-0629" in p]
    assert len(im0629) == 1
    for part in (split.train, split.val, split.test):
        assert {s.label for s in part} == {0, 1}
