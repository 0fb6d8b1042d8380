"""Loaders (folder + CSV, RSNA layout), the patient-level split, and array loading."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.model.preprocess import PreprocessConfig
from dicomnode.testing.phantoms import make_phantom, write_phantom_studies
from training import datasets


def _write(path: Path, patient_id: str, positive: bool, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_phantom(np.random.default_rng(seed), positive, patient_id=patient_id, size=48)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_rsna_layout_labels_each_patient_with_its_max_target(tmp_path: Path) -> None:
    rows = [
        ("a1", "", "", "", "", 0),
        ("b2", 10, 20, 30, 40, 1),
        ("b2", 50, 60, 30, 40, 1),
        ("c3", "", "", "", "", 0),
        ("c3", 1, 2, 3, 4, 1),  # one box among rows: still positive
    ]
    with (tmp_path / datasets.RSNA_LABELS).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientId", "x", "y", "width", "height", "Target"])
        w.writerows(rows)
    for i, pid in enumerate(("a1", "b2", "c3")):
        _write(tmp_path / datasets.RSNA_IMAGES / f"{pid}.dcm", pid, pid != "a1", i)
    samples = datasets.load_rsna(tmp_path)
    assert [(s.patient_id, s.label) for s in samples] == [("a1", 0), ("b2", 1), ("c3", 1)]
    assert samples[1].path == tmp_path / datasets.RSNA_IMAGES / "b2.dcm"


def test_rsna_loader_says_what_layout_it_expects(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stage_2_train_labels.csv"):
        datasets.load_rsna(tmp_path)


def test_folder_loader_reads_the_csv_and_falls_back_to_the_header_patient_id(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "x" / "one.dcm", "P1", True, 1)
    _write(tmp_path / "two.dcm", "P2", False, 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,patient_id\nx/one.dcm,1,\ntwo.dcm,0,OTHER\n")
    samples = datasets.load_folder(tmp_path, labels)
    assert [(s.patient_id, s.label) for s in samples] == [("P1", 1), ("OTHER", 0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,target\none.dcm,1\n")
    with pytest.raises(ValueError, match="needs path and label"):
        datasets.load_folder(tmp_path, bad)


def test_phantom_folder_round_trips_through_the_labels_csv(tmp_path: Path) -> None:
    studies = write_phantom_studies(tmp_path / "ph", 4, seed=3, size=48)
    csv_path = datasets.write_labels_csv(
        datasets.samples_from_phantom_studies(studies), tmp_path / "labels.csv", root=tmp_path / "ph"
    )
    samples = datasets.load_folder(tmp_path / "ph", csv_path)
    assert sorted((s.patient_id, s.label) for s in samples) == sorted(
        (s.patient_id, int(s.positive)) for s in studies
    )


def _many(n_patients: int, images_per_patient: int = 2) -> list[datasets.Sample]:
    rng = np.random.default_rng(0)
    out = []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        out += [datasets.Sample(f"P{p}", label, Path(f"P{p}_{k}.dcm")) for k in range(images_per_patient)]
    return out


def test_split_is_patient_disjoint_stratified_and_seeded() -> None:
    samples = _many(200)
    split = datasets.split_by_patient(samples, val_fraction=0.2, test_fraction=0.1, seed=5)
    parts = [split.train, split.val, split.test]
    patients = [{s.patient_id for s in part} for part in parts]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])
    assert not (patients[1] & patients[2])
    assert sum(len(p) for p in parts) == len(samples)
    rate = np.mean([s.label for s in samples])
    for part in parts:
        assert abs(np.mean([s.label for s in part]) - rate) < 0.05
    again = datasets.split_by_patient(samples, val_fraction=0.2, test_fraction=0.1, seed=5)
    assert again == split
    other = datasets.split_by_patient(samples, val_fraction=0.2, test_fraction=0.1, seed=6)
    assert {s.patient_id for s in other.val} != patients[1]


def test_split_refuses_a_validation_set_without_both_classes() -> None:
    samples = [datasets.Sample(f"P{i}", int(i == 0), None, i) for i in range(10)]
    with pytest.raises(ValueError, match="need more cases"):
        datasets.split_by_patient(samples, val_fraction=0.2)


def test_load_arrays_makes_phantoms_deterministically_and_threads_change_nothing() -> None:
    spec = datasets.PhantomSpec(seed=4, size=64)
    samples = datasets.phantom_samples(40, spec)
    config = PreprocessConfig(size=32)
    x1, y1 = datasets.load_arrays(samples, config, phantom=spec)
    x2, y2 = datasets.load_arrays(samples, config, phantom=spec, workers=2)
    assert x1.shape == (40, 1, 32, 32) and x1.dtype == np.float32
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert y1.sum() == 20


def test_fingerprint_changes_with_labels_and_settings() -> None:
    samples = _many(10)
    base = datasets.fingerprint(samples, "x")
    assert base == datasets.fingerprint(list(reversed(samples)), "x")
    flipped = [datasets.Sample(s.patient_id, 1 - s.label, s.path) for s in samples]
    assert datasets.fingerprint(flipped, "x") != base
    assert datasets.fingerprint(samples, "y") != base
