"""Where training cases come from: a folder of DICOMs + labels CSV, the RSNA Kaggle layout, a folder
of class folders or a table of PNG/JPEG images (:mod:`training.image_sets`), or phantoms made on the
fly; a patient-level stratified split; loading into preprocessed arrays.

No torch here: arrays are numpy; preprocessing runs in threads when asked.

Layouts
-------
*Folder*: any tree of DICOM files plus a CSV with a header row and columns ``path`` (relative to
the folder, or absolute) and ``label`` (0/1); an optional ``patient_id`` column, else each file's
PatientID is read from its header. ``python -m training phantoms --labels CSV`` writes one.

The CSV may list PNG/JPEG files as well: any ``.png``/``.jpg``/``.jpeg`` is read by
:mod:`training.image_files` through the same preprocessing as DICOM from the VOI step on.

*Classes* and *table*: see :mod:`training.image_sets` (Kermany; NIH ChestX-ray14, CheXpert,
MIMIC-CXR-JPG).

*RSNA* (Kaggle RSNA Pneumonia Detection Challenge): ``stage_2_train_images/<patientId>.dcm`` and
``stage_2_train_labels.csv`` with columns ``patientId,x,y,width,height,Target``; several rows
(one per box) per patient; a patient's label is the maximum Target.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from dicomnode.model import PreprocessConfig, preprocess
from dicomnode.testing.phantoms import PhantomStudy, make_phantom, phantom_labels, phantom_patient_id
from training.image_files import is_image_file, preprocess_image

if TYPE_CHECKING:
    from training.image_sets import TableSpec

RSNA_IMAGES = "stage_2_train_images"
RSNA_LABELS = "stage_2_train_labels.csv"


@dataclass(frozen=True)
class Sample:
    """One training case: a DICOM file, or (``path is None``) phantom number ``phantom_index``."""

    patient_id: str
    label: int
    path: Path | None = None
    phantom_index: int = -1

    @property
    def key(self) -> str:
        """Stable identity for fingerprints and logs (never patient data)."""
        return self.path.name if self.path is not None else f"phantom-{self.phantom_index}"


@dataclass(frozen=True)
class PhantomSpec:
    """How phantom samples are made: :func:`phantom_samples` and :func:`load_arrays` share it."""

    seed: int = 0
    size: int = 256
    modality: str = "DX"


@dataclass(frozen=True)
class Split:
    """Patient-disjoint train / validation / test samples."""

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]


def phantom_samples(n: int, spec: PhantomSpec, positive_fraction: float = 0.5) -> list[Sample]:
    """``n`` phantom samples, one patient each, made on the fly by :func:`load_arrays`."""
    labels = phantom_labels(n, spec.seed, positive_fraction)
    return [Sample(phantom_patient_id(spec.seed, i), int(labels[i]), None, i) for i in range(n)]


def samples_from_phantom_studies(studies: Iterable[PhantomStudy]) -> list[Sample]:
    """Samples for phantom studies already written by ``write_phantom_studies``."""
    return [Sample(s.patient_id, int(s.positive), path) for s in studies for path in s.paths]


def load_folder(root: Path, labels_csv: Path) -> list[Sample]:
    """Samples from a folder of DICOM files and a ``path,label[,patient_id]`` CSV."""
    root, labels_csv = Path(root), Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(
            f"labels CSV {labels_csv} not found: write one with columns path,label[,patient_id] "
            "(python -m training phantoms --out DIR --labels CSV makes one for phantoms)"
        )
    samples = []
    with labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"path", "label"} <= cols:
            raise ValueError(
                f"{labels_csv} has columns {sorted(cols)}: it needs path and label "
                "(and optionally patient_id)"
            )
        for line, row in enumerate(reader, start=2):
            path = Path(row["path"])
            path = path if path.is_absolute() else root / path
            if not path.is_file():
                raise FileNotFoundError(f"{labels_csv}:{line}: {path} does not exist")
            try:
                label = int(float(row["label"]))
            except ValueError:
                raise ValueError(f"{labels_csv}:{line}: label {row['label']!r} is not 0 or 1") from None
            if label not in (0, 1):
                raise ValueError(f"{labels_csv}:{line}: label {label} is not 0 or 1")
            patient = (row.get("patient_id") or "").strip()
            if not patient and is_image_file(path):
                patient = path.stem  # an image file has no header: one patient per file
            if not patient:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
                patient = str(header.get("PatientID", "")) or path.stem
            samples.append(Sample(patient, label, path))
    if not samples:
        raise ValueError(f"{labels_csv} lists no images")
    return samples


def write_labels_csv(samples: Sequence[Sample], csv_path: Path, root: Path | None = None) -> Path:
    """Write ``path,label,patient_id`` for file samples (paths relative to ``root`` if given)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id"])
        for s in samples:
            if s.path is None:
                raise ValueError("phantom samples made on the fly have no file to list")
            path = s.path.relative_to(root) if root is not None else s.path
            writer.writerow([path.as_posix(), s.label, s.patient_id])
    return csv_path


def load_rsna(root: Path) -> list[Sample]:
    """Samples from the RSNA Pneumonia Detection Challenge layout (label = max Target)."""
    root = Path(root)
    labels_csv, images = root / RSNA_LABELS, root / RSNA_IMAGES
    if not labels_csv.is_file() or not images.is_dir():
        raise FileNotFoundError(
            f"{root} is not the RSNA layout: expected {RSNA_LABELS} and {RSNA_IMAGES}/ "
            "(from the Kaggle 'rsna-pneumonia-detection-challenge' download, unzipped)"
        )
    target: dict[str, int] = defaultdict(int)
    with labels_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"patientId", "Target"} <= set(reader.fieldnames or []):
            raise ValueError(f"{labels_csv} needs columns patientId and Target")
        for row in reader:
            pid = row["patientId"]
            target[pid] = max(target[pid], int(float(row["Target"])))
    samples = []
    missing = 0
    for pid in sorted(target):
        path = images / f"{pid}.dcm"
        if path.is_file():
            samples.append(Sample(pid, target[pid], path))
        else:
            missing += 1
    if not samples:
        raise FileNotFoundError(f"none of the {len(target)} patients in {labels_csv} has an image")
    if missing:
        print(f"datasets.rsna missing_images={missing} used={len(samples)}", flush=True)
    return samples


#: the data sources :func:`load_source` knows
DATA_SOURCES = ("phantoms", "folder", "rsna", "classes", "table")


def load_source(
    source: str,
    *,
    data_dir: Path | None = None,
    labels_csv: Path | None = None,
    n_phantoms: int = 600,
    phantom_size: int = 256,
    positive_fraction: float = 0.5,
    seed: int = 0,
    positive_class: str = "PNEUMONIA",
    table: TableSpec | None = None,
) -> tuple[list[Sample], PhantomSpec | None]:
    """The samples of a data source (one of :data:`DATA_SOURCES`) and, for phantoms, their spec.

    "classes": ``data_dir`` holds one folder per class, ``positive_class`` the positives;
    "table": ``labels_csv`` is an image table read as ``table`` says, paths relative to
    ``data_dir`` (default: the table's folder).
    """
    if source == "phantoms":
        spec = PhantomSpec(seed=seed, size=phantom_size)
        return phantom_samples(n_phantoms, spec, positive_fraction), spec
    if source == "folder":
        if data_dir is None or labels_csv is None:
            raise ValueError("data 'folder' needs --data-dir DIR and --labels CSV")
        return load_folder(data_dir, labels_csv), None
    if source == "rsna":
        if data_dir is None:
            raise ValueError("data 'rsna' needs --data-dir pointing at the unzipped Kaggle download")
        return load_rsna(data_dir), None
    if source == "classes":
        from training.image_sets import load_class_folders

        if data_dir is None:
            raise ValueError("data 'classes' needs --data-dir DIR holding one folder per class")
        return load_class_folders(data_dir, positive=positive_class), None
    if source == "table":
        from training.image_sets import load_table

        if labels_csv is None:
            raise ValueError("data 'table' needs --labels CSV (e.g. NIH's Data_Entry_2017.csv)")
        return load_table(labels_csv, data_dir, table), None
    raise ValueError(f"data source {source!r} is unknown: use one of {', '.join(DATA_SOURCES)}")


def split_by_patient(
    samples: Sequence[Sample], *, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Split patient-disjointly, stratified on each patient's label (max over its images)."""
    if val_fraction <= 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: need val > 0, "
            "test >= 0 and val + test < 1"
        )
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient_id].append(s)
    groups: dict[int, list[str]] = {0: [], 1: []}
    for pid in sorted(by_patient):
        groups[max(s.label for s in by_patient[pid])].append(pid)
    rng = np.random.default_rng([seed, 0x59117])
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label in (0, 1):
        pids = [groups[label][i] for i in rng.permutation(len(groups[label]))]
        n_val = int(round(len(pids) * val_fraction))
        n_test = int(round(len(pids) * test_fraction))
        parts["val"] += pids[:n_val]
        parts["test"] += pids[n_val : n_val + n_test]
        parts["train"] += pids[n_val + n_test :]
    split = Split(
        *([s for pid in sorted(parts[k]) for s in by_patient[pid]] for k in ("train", "val", "test"))
    )
    for name in ("train", "val"):
        labels = {s.label for s in getattr(split, name)}
        if labels != {0, 1}:
            raise ValueError(
                f"the {name} split has labels {sorted(labels)} only: need more cases of each "
                "class or a larger val_fraction"
            )
    return split


def split_source(
    source: str,
    preprocess_config: PreprocessConfig,
    *,
    data_dir: Path | None = None,
    labels_csv: Path | None = None,
    n_phantoms: int = 600,
    phantom_size: int = 256,
    positive_fraction: float = 0.5,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    positive_class: str = "PNEUMONIA",
    table: TableSpec | None = None,
) -> tuple[Split, PhantomSpec | None, str]:
    """A data source's patient split, its phantom spec (phantoms only) and the data fingerprint
    a model trained on it carries in its card (``ModelCard.data_fingerprint``); reads no pixels."""
    samples, phantom = load_source(
        source,
        data_dir=data_dir,
        labels_csv=labels_csv,
        n_phantoms=n_phantoms,
        phantom_size=phantom_size,
        positive_fraction=positive_fraction,
        seed=seed,
        positive_class=positive_class,
        table=table,
    )
    split = split_by_patient(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    extra: tuple[object, ...] = (
        source,
        phantom,
        preprocess_config.to_dict(),
        val_fraction,
        test_fraction,
        seed,
    )
    if source == "classes":
        extra += (positive_class,)
    elif source == "table":
        extra += ((table or _default_table()).to_dict(),)
    fp = fingerprint(samples, *extra)
    return split, phantom, fp


def _default_table() -> TableSpec:
    from training.image_sets import TableSpec

    return TableSpec()


def fingerprint(samples: Iterable[Sample], *extra: object) -> str:
    """Short, stable hash of the cases (keys and labels) and any extra settings."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.patient_id, s.key)):
        h.update(f"{s.patient_id}|{s.key}|{s.label}\n".encode())
    for e in extra:
        h.update(repr(e).encode())
    return h.hexdigest()[:12]


def load_one(sample: Sample, config: PreprocessConfig, phantom: PhantomSpec | None) -> np.ndarray:
    """Preprocess one sample: read its file (DICOM, or PNG/JPEG by its ending), or make its phantom."""
    ds: pydicom.Dataset
    if sample.path is not None and is_image_file(sample.path):
        return preprocess_image(sample.path, config)
    if sample.path is not None:
        ds = pydicom.dcmread(sample.path)
    else:
        if phantom is None:
            raise ValueError("phantom samples need a PhantomSpec to be made")
        rng = np.random.default_rng([phantom.seed, sample.phantom_index])
        ds = make_phantom(
            rng,
            bool(sample.label),
            patient_id=sample.patient_id,
            modality=phantom.modality,
            size=phantom.size,
        )
    return preprocess(ds, config)


def _load_chunk(
    args: tuple[list[Sample], PreprocessConfig, PhantomSpec | None],
) -> list[np.ndarray]:
    samples, config, phantom = args
    return [load_one(s, config, phantom) for s in samples]


def load_arrays(
    samples: Sequence[Sample],
    config: PreprocessConfig,
    *,
    phantom: PhantomSpec | None = None,
    workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocess all samples into memory: ``(x [N, 1, S, S], y [N])``.

    ``x`` is float32, or float16 when float32 would exceed 2 GiB (e.g. all of RSNA at 224).
    ``workers > 1`` preprocesses in that many threads (numpy releases the GIL for the heavy
    parts; threads need no ``__main__`` guard, unlike processes); same result, same order.
    """
    n, s = len(samples), config.size
    dtype = np.float32 if n * s * s * 4 <= 2 * 2**30 else np.float16
    x = np.empty((n, 1, s, s), dtype=dtype)
    y = np.array([smp.label for smp in samples], dtype=np.float32)
    if workers > 1 and n > 32:
        chunk = max(8, n // (workers * 8))
        jobs = [(list(samples[i : i + chunk]), config, phantom) for i in range(0, n, chunk)]
        with ThreadPoolExecutor(workers) as pool:
            i = 0
            for arrays in pool.map(_load_chunk, jobs):
                for a in arrays:
                    x[i] = a
                    i += 1
    else:
        for i, smp in enumerate(samples):
            x[i] = load_one(smp, config, phantom)
    return x, y


__all__ = [
    "DATA_SOURCES",
    "PhantomSpec",
    "Sample",
    "Split",
    "fingerprint",
    "load_arrays",
    "load_folder",
    "load_one",
    "load_rsna",
    "load_source",
    "phantom_samples",
    "samples_from_phantom_studies",
    "split_by_patient",
    "split_source",
    "write_labels_csv",
]
