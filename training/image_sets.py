"""Published image sets as training samples: a folder of class folders, or a table of image paths.

*Class folders* (Kermany et al. 2018, ``chest_xray/train/{NORMAL,PNEUMONIA}/*.jpeg``): one
sub-folder per class; the positive class is chosen by name, every other sub-folder is negative.
The patient is parsed from the file name (:func:`kermany_patient_id`); a name no rule matches is
its own patient (its stem), so give another ``patient_id`` function where a set names patients
differently, or the split cannot keep a patient's images together.

*Tables*: a CSV with a path column, a label column and a patient column, in the shapes published
with the large chest X-ray sets:

- NIH ChestX-ray14 ``Data_Entry_2017.csv``: ``Image Index`` (file name), ``Finding Labels``
  (findings joined by ``|``, or ``No Finding``), ``Patient ID``. The label is 1 when the chosen
  finding (e.g. ``Pneumonia``) is among the findings.
- CheXpert / MIMIC-CXR-JPG: ``Path``, one column per finding holding ``1`` (positive), ``0``
  (negative), ``-1`` (uncertain) or blank (not mentioned, taken as negative, as the CheXpert
  authors do); uncertain labels are dropped, or read as negative or positive
  (:data:`UNCERTAIN_POLICIES`, the "U-Ignore / U-Zeros / U-Ones" of Irvin et al. 2019). Where the
  table has no patient column, a regular expression finds the patient in the path (CheXpert:
  ``patient00001``; MIMIC-CXR-JPG: ``p10000032``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.datasets import Sample
from training.image_files import is_image_file

#: how an uncertain (-1) label is read: "drop" the image, or call it "negative" or "positive"
UNCERTAIN_POLICIES = ("drop", "negative", "positive")

#: Kermany file names: ``IM-0115-0001``, ``NORMAL2-IM-0123-0001``, ``person1000_bacteria_2931``
_KERMANY_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-")
_KERMANY_PERSON = re.compile(r"^(person\d+)_")

#: environment variable naming the shared real-data folder (default: ``../shared/data`` beside the
#: repository), read by the real-data benchmark and tests
DATA_DIR_ENV = "DICOMNODE_DATA_DIR"

#: the patient in a CheXpert (``patient00001``) or MIMIC-CXR-JPG (``p10000032``) path
DEFAULT_PATIENT_PATTERN = r"(patient\d+|p\d{8})"


def shared_data_dir() -> Path:
    """The shared real-data folder: ``$DICOMNODE_DATA_DIR``, else ``../shared/data`` from the
    repository root (it may not exist: callers skip or say so)."""
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def kermany_patient_id(name: str) -> str:
    """The patient of a Kermany file name (without its folder); the stem where no rule matches.

    >>> kermany_patient_id("IM-0115-0001.jpeg"), kermany_patient_id("NORMAL2-IM-0123-0001.jpeg")
    ('IM-0115', 'NORMAL2-IM-0123')
    >>> kermany_patient_id("person1000_bacteria_2931.jpeg"), kermany_patient_id("IM-0629-0001-0002.jpeg")
    ('person1000', 'IM-0629')
    """
    stem = Path(name).stem
    match = _KERMANY_IM.match(stem) or _KERMANY_PERSON.match(stem)
    return match.group(1) if match else stem


def load_class_folders(
    root: Path,
    *,
    positive: str = "PNEUMONIA",
    patient_id: Callable[[str], str] = kermany_patient_id,
) -> list[Sample]:
    """Samples from ``root/<class>/*.{png,jpg,jpeg}``: label 1 in the ``positive`` folder, else 0."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder: give the folder holding one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if positive not in classes:
        raise ValueError(
            f"{root} has class folders {classes}: the positive class {positive!r} is not among them "
            "(choose it with --positive-class)"
        )
    if len(classes) < 2:
        raise ValueError(f"{root} has only the class folder {classes}: need a negative class folder too")
    samples = []
    for name in classes:
        label = int(name == positive)
        for path in sorted((root / name).iterdir()):
            if path.is_file() and is_image_file(path):
                samples.append(Sample(patient_id(path.name), label, path))
    for label in (0, 1):
        if not any(s.label == label for s in samples):
            raise ValueError(f"{root}: no {'positive' if label else 'negative'} PNG/JPEG images found")
    return samples


@dataclass(frozen=True)
class TableSpec:
    """Which columns of an image table mean what, and how its labels are read."""

    #: column holding the image path (relative to the image folder) or file name
    path_column: str = "Image Index"
    #: column holding the label: findings joined by ``|`` (NIH) or 1/0/-1/blank (CheXpert)
    label_column: str = "Finding Labels"
    #: the positive finding when the label column lists findings (case-insensitive)
    finding: str = "Pneumonia"
    #: column holding the patient ID; "" (or a table without it): found in the path by ``patient_pattern``
    patient_column: str = "Patient ID"
    patient_pattern: str = DEFAULT_PATIENT_PATTERN
    #: how a -1 (uncertain) label is read, one of :data:`UNCERTAIN_POLICIES`
    uncertain: str = "drop"

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain={self.uncertain!r} is unknown: use one of {UNCERTAIN_POLICIES}")
        try:
            re.compile(self.patient_pattern)
        except re.error as exc:
            raise ValueError(
                f"patient_pattern {self.patient_pattern!r} is not a regular expression: {exc}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def read_table_label(value: str, spec: TableSpec) -> int | None:
    """1, 0 or None (drop) for one label cell, as ``spec`` says.

    >>> spec = TableSpec()
    >>> read_table_label("Effusion|Pneumonia", spec), read_table_label("No Finding", spec)
    (1, 0)
    >>> read_table_label("-1.0", spec), read_table_label("", spec), read_table_label("1", spec)
    (None, 0, 1)
    """
    text = value.strip()
    if not text:
        return 0  # CheXpert: not mentioned in the report
    try:
        number = float(text)
    except ValueError:
        findings = {f.strip().lower() for f in text.split("|")}
        return int(spec.finding.strip().lower() in findings)
    if number == -1:
        return {"drop": None, "negative": 0, "positive": 1}[spec.uncertain]
    if number not in (0, 1):
        raise ValueError(f"label {value!r} is not 1, 0, -1 or blank")
    return int(number)


def load_table(csv_path: Path, image_root: Path | None = None, spec: TableSpec | None = None) -> list[Sample]:
    """Samples from an image table (see the module doc); paths relative to ``image_root``
    (default: the CSV's folder). Rows whose image file is missing are an error."""
    spec = spec or TableSpec()
    csv_path = Path(csv_path)
    root = Path(image_root) if image_root is not None else csv_path.parent
    if not csv_path.is_file():
        raise FileNotFoundError(f"image table {csv_path} not found")
    pattern = re.compile(spec.patient_pattern)
    samples: list[Sample] = []
    dropped = 0
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        missing = [c for c in (spec.path_column, spec.label_column) if c not in cols]
        if missing:
            raise ValueError(
                f"{csv_path} has no column {', '.join(map(repr, missing))} (it has {sorted(cols)}): "
                "choose them with --path-column and --label-column"
            )
        use_column = bool(spec.patient_column) and spec.patient_column in cols
        for line, row in enumerate(reader, start=2):
            try:
                label = read_table_label(row[spec.label_column] or "", spec)
            except ValueError as exc:
                raise ValueError(f"{csv_path}:{line}: {exc}") from None
            if label is None:
                dropped += 1
                continue
            rel = Path(row[spec.path_column])
            path = rel if rel.is_absolute() else root / rel
            if not path.is_file():
                raise FileNotFoundError(f"{csv_path}:{line}: image {path} does not exist")
            patient = (row[spec.patient_column] or "").strip() if use_column else ""
            if not patient:
                found = pattern.search(rel.as_posix())
                if found is None:
                    raise ValueError(
                        f"{csv_path}:{line}: no patient ID: the table has no {spec.patient_column!r} "
                        f"column and the path does not match {spec.patient_pattern!r}; give "
                        "--patient-column or --patient-pattern (splits must be by patient)"
                    )
                patient = found.group(1) if found.groups() else found.group(0)
            samples.append(Sample(patient, label, path))
    if not samples:
        raise ValueError(f"{csv_path} lists no usable images ({dropped} dropped as uncertain)")
    if dropped:
        print(f"datasets.table uncertain_dropped={dropped} used={len(samples)}", flush=True)
    return samples


__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_PATIENT_PATTERN",
    "UNCERTAIN_POLICIES",
    "TableSpec",
    "kermany_patient_id",
    "load_class_folders",
    "load_table",
    "read_table_label",
    "shared_data_dir",
]
