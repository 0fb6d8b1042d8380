"""Synthetic chest-radiograph phantoms as real DICOM DX/CR instances.

The node cannot ship patient data, and no public dataset can be downloaded here, so the tests, the
demo model and the end-to-end checks run on phantoms: images with a plausible chest (torso,
two lung fields, heart, mediastinum and spine, clavicles, posterior and anterior ribs, lung
texture, quantum noise) stored with the headers a PACS sends for a chest radiograph.

*Positive* phantoms carry one to three pneumonia-like airspace opacities: soft, textured blobs of
varied size, contrast and position, confined to the lung fields. Both classes carry the same
distractors at the same rates (calcified nodules, ECG leads and electrodes, line tubing), and
body habitus, exposure, gamma, noise, bit depth, photometric interpretation and windowing vary
widely, so the mean intensity does not give the class away: a model has to find the opacities.

Only numpy and pydicom: the node imports this module without torch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

#: SOP classes of the two modalities a phantom can be
SOP_CLASS_FOR_MODALITY = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
}

#: DX View (CID 4010) codes and the Patient Orientation (PS3.3 C.7.6.1.1.1) of the stored pixels in
#: the conventional display: frontal views with the patient's right on the image left (rows run
#: toward the patient's Left, columns toward the Feet); laterals facing the image left.
VIEWS = {
    "PA": (codes.SCT.PosteroAnterior, ["L", "F"]),
    "AP": (codes.SCT.AnteroPosterior, ["L", "F"]),
    "LL": (codes.SCT.LeftLateral, ["P", "F"]),
}

#: default image size is drawn from this range (pixels, square); real detectors are 2000-3000 px
DEFAULT_SIZE_RANGE = (512, 768)

MANUFACTURER = "dicomnode"
MODEL_NAME = "chest-phantom"
INSTITUTION = "Phantom General Hospital"


@dataclass(frozen=True)
class PhantomStudy:
    """One written phantom study: where its files are and what it shows."""

    study_uid: str
    paths: list[Path]
    positive: bool
    patient_id: str
    patient_name: str


# --------------------------------------------------------------------------------------------
# image


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field: a ``cells`` x ``cells`` grid, bilinear to n x n."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    pos = np.linspace(0.0, cells, n, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]  # (n, cells+1)
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _ellipse_r2(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0
) -> np.ndarray:
    """Squared normalised radius of a rotated ellipse (1 on its border)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return u * u + v * v


def _box(cx: float, cy: float, half: float, n: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels within ``half`` (image units) of (cx, cy)."""
    r0, r1 = max(0, int((cy - half) * n)), min(n, int((cy + half) * n) + 1)
    c0, c1 = max(0, int((cx - half) * n)), min(n, int((cx + half) * n) + 1)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def _curve_band(
    x: np.ndarray,
    y: np.ndarray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    p2: tuple[float, float],
    width: float,
) -> np.ndarray:
    """A soft line of half-width ``width`` along the quadratic Bezier p0-p1-p2 (image coords)."""
    t = np.linspace(0.0, 1.0, 24)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    # distance to the polyline, computed on the bounding box only (lines are thin)
    n = x.shape[1]
    lo = np.clip(((pts.min(axis=0) - 3 * width) * n).astype(int), 0, n)
    hi = np.clip(((pts.max(axis=0) + 3 * width) * n).astype(int) + 1, 0, n)
    out = np.zeros((y.shape[0], x.shape[1]), np.float32)
    if hi[0] <= lo[0] or hi[1] <= lo[1]:
        return out
    xs, ys = x[:, lo[0] : hi[0]], y[lo[1] : hi[1], :]
    d2 = np.full((hi[1] - lo[1], hi[0] - lo[0]), np.inf, np.float32)
    for (ax_, ay_), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
        vx, vy = bx - ax_, by - ay_
        t_ = np.clip(((xs - ax_) * vx + (ys - ay_) * vy) / (vx * vx + vy * vy + 1e-12), 0, 1)
        d2 = np.minimum(d2, (xs - ax_ - t_ * vx) ** 2 + (ys - ay_ - t_ * vy) ** 2)
    out[lo[1] : hi[1], lo[0] : hi[0]] = np.exp(-d2 / (width * width))
    return out


def _sample_in_lung(
    rng: np.random.Generator, lungs: list[tuple[float, float, float, float]], r_max: float
) -> tuple[float, float]:
    cx, cy, ax, ay = lungs[int(rng.integers(len(lungs)))]
    rad = r_max * np.sqrt(rng.uniform(0, 1))
    ang = rng.uniform(0, 2 * np.pi)
    return cx + rad * ax * np.cos(ang), cy + rad * ay * np.sin(ang)


def _opacities(
    rng: np.random.Generator,
    xx: np.ndarray,
    yy: np.ndarray,
    lungs: list[tuple[float, float, float, float]],
    lung: np.ndarray,
) -> np.ndarray:
    """One to three soft, patchy airspace opacities centred in aerated lung; [n, n] in [0, 1)."""
    n = lung.shape[0]
    opac = np.zeros((n, n), np.float32)
    for _ in range(int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))):
        # in aerated lung, not behind the heart where an opacity would not show
        for _try in range(20):
            ox, oy = _sample_in_lung(rng, lungs, 0.75)
            if lung[min(int(oy * n), n - 1), min(int(ox * n), n - 1)] > 0.6:
                break
        rad = rng.uniform(0.05, 0.11)
        elong, angle, strength = rng.uniform(0.7, 1.3), rng.uniform(0, 3.2), rng.uniform(0.45, 0.85)
        sy, sx = _box(ox, oy, 2.6 * rad * max(1.0, elong), n)
        r2 = _ellipse_r2(xx[:, sx], yy[sy], ox, oy, rad * elong, rad, angle)
        blob = _sigmoid((1 - np.sqrt(r2)) / 0.2)
        cells = max(4, (sx.stop - sx.start) // 16)
        patch = _smooth_noise(rng, max(sx.stop - sx.start, sy.stop - sy.start), cells)
        patchy = np.clip(1 + 0.4 * patch[: blob.shape[0], : blob.shape[1]], 0.3, 1.5)
        opac[sy, sx] = np.maximum(opac[sy, sx], strength * blob * patchy)
    return opac


def chest_density(rng: np.random.Generator, n: int, positive: bool) -> np.ndarray:
    """A chest radiograph as float32 [n, n], 0 = air (dark), about 1 = dense (bright), PA display.

    Positive images carry pneumonia-like opacities in the lungs; both classes carry distractors.
    """
    yy = (np.arange(n, dtype=np.float32) + 0.5)[:, None] / n
    xx = (np.arange(n, dtype=np.float32) + 0.5)[None, :] / n
    edge = 1.5 / n  # about one pixel and a half of edge softness

    # habitus and placement
    cx = 0.5 + rng.uniform(-0.03, 0.03)
    top = rng.uniform(-0.02, 0.06)  # how far down the lung apices sit
    body_w = rng.uniform(0.36, 0.47)
    tissue = rng.uniform(0.42, 0.62)

    # torso: a slab narrowing to the neck at the top, slightly wider toward the abdomen
    shoulder = _sigmoid((yy - (0.08 + top)) / 0.03)
    half_w = body_w * (0.32 + 0.68 * shoulder) * (1 + 0.06 * (yy - 0.5))
    torso = _sigmoid((half_w - np.abs(xx - cx)) / (0.012 + edge))
    img = 0.03 + (tissue - 0.03) * torso
    # arms at the edges of wide patients
    for side in (-1, 1):
        arm_x = cx + side * (body_w + rng.uniform(0.04, 0.07))
        arm = _sigmoid((0.05 - np.abs(xx - arm_x)) / 0.01) * _sigmoid((0.55 - yy) / 0.05)
        img = np.maximum(img, tissue * 0.8 * arm)

    # lungs: right lung on the image left, left lung smaller, heart on the image right
    gap = rng.uniform(0.045, 0.07)
    lungs: list[tuple[float, float, float, float]] = []
    lung: np.ndarray = np.zeros((n, n), np.float32)
    for side, scale in ((-1, 1.0), (1, rng.uniform(0.88, 0.97))):
        ax_ = body_w * rng.uniform(0.36, 0.42) * scale
        ay_ = rng.uniform(0.24, 0.3) * scale
        lcx = cx + side * (gap + ax_)
        lcy = 0.17 + top + ay_
        lungs.append((lcx, lcy, ax_, ay_))
        r2 = _ellipse_r2(xx, yy, lcx, lcy, ax_, ay_, angle=side * rng.uniform(0.0, 0.12))
        lung = np.maximum(lung, _sigmoid((1 - r2) / 0.09))
    heart_r2 = _ellipse_r2(
        xx,
        yy,
        cx + rng.uniform(0.04, 0.08),
        lungs[1][1] + lungs[1][3] * rng.uniform(0.35, 0.55),
        rng.uniform(0.11, 0.16),
        rng.uniform(0.1, 0.14),
        angle=-rng.uniform(0.2, 0.5),
    )
    heart = _sigmoid((1 - heart_r2) / 0.08)
    lung = lung * (1 - 0.9 * heart)

    # aerated lung is darker at the bases (more air) than at the apices (overlying soft tissue)
    air = rng.uniform(0.22, 0.4) * (0.85 + 0.3 * np.clip((yy - 0.2 - top) / 0.6, 0, 1))
    texture = _smooth_noise(rng, n, max(8, n // 24)) * 0.025 + _smooth_noise(rng, n, 6) * 0.02
    img = img - lung * (air + texture)

    # mediastinum and spine, with a faint vertebral rhythm
    spine_w = rng.uniform(0.028, 0.04)
    spine = _sigmoid((spine_w - np.abs(xx - cx)) / 0.008) * torso
    period = rng.uniform(0.035, 0.045)
    vert = 0.5 + 0.5 * np.cos(2 * np.pi * (yy - rng.uniform(0, period)) / period)
    img = img + spine * (0.12 + 0.04 * vert) * (1 - 0.5 * lung)
    img = img + 0.06 * heart

    # ribs: posterior (arching laterally downward) and fainter anterior (sloping medially down)
    d = np.abs(xx - cx)
    rib_zone = torso * _sigmoid((0.78 + top - yy) / 0.03) * _sigmoid((yy - 0.1 - top) / 0.02)
    rib_zone = rib_zone * _sigmoid((d - spine_w) / 0.01)
    rib_p = rng.uniform(0.055, 0.07)
    phase = yy - (-0.2 * d + rng.uniform(1.0, 1.4) * d * d) - rng.uniform(0, rib_p)
    post = (0.5 + 0.5 * np.cos(2 * np.pi * phase / rib_p)) ** 10
    ant_phase = yy + 0.45 * d - rng.uniform(0, rib_p)
    ant = (0.5 + 0.5 * np.cos(2 * np.pi * ant_phase / (rib_p * 1.1))) ** 12
    img = img + rib_zone * (rng.uniform(0.06, 0.1) * post + rng.uniform(0.02, 0.04) * ant)
    # clavicles
    for side in (-1, 1):
        img = img + 0.09 * torso * _curve_band(
            xx,
            yy,
            (cx + side * 0.03, 0.15 + top),
            (cx + side * 0.16, 0.09 + top),
            (cx + side * 0.3, 0.1 + top),
            0.012,
        )

    # pneumonia-like opacities: fill part of the local air darkening, only inside the lungs.
    # They draw from their own generator, so the same rng state gives the same anatomy,
    # distractors and noise with or without them (paired phantoms).
    lesion_rng = np.random.default_rng(int(rng.integers(2**62)))
    if positive:
        img = img + lung * air * np.clip(_opacities(lesion_rng, xx, yy, lungs, lung), 0, 0.9)

    # distractors, same rates in both classes
    if rng.uniform() < 0.5:  # calcified granulomas
        for _ in range(int(rng.integers(1, 4))):
            gx, gy = _sample_in_lung(rng, lungs, 0.85)
            rad, contrast = rng.uniform(0.006, 0.014), rng.uniform(0.1, 0.2)
            sy, sx = _box(gx, gy, 3 * rad, n)
            r2 = _ellipse_r2(xx[:, sx], yy[sy], gx, gy, rad, rad)
            img[sy, sx] += contrast * _sigmoid((1 - r2) / 0.3)
    if rng.uniform() < 0.4:  # ECG leads and electrodes
        for _ in range(int(rng.integers(1, 4))):
            ex, ey = cx + rng.uniform(-0.3, 0.3), rng.uniform(0.15, 0.7)
            r = rng.uniform(0.012, 0.02)
            sy, sx = _box(ex, ey, r + 0.02, n)
            ring = np.sqrt(_ellipse_r2(xx[:, sx], yy[sy], ex, ey, r, r))
            img[sy, sx] += 0.35 * np.exp(-(((ring - 1) * r / 0.004) ** 2))
            end = (ex + rng.uniform(-0.3, 0.3), rng.choice([-0.05, 1.05]))
            mid = ((ex + end[0]) / 2 + rng.uniform(-0.15, 0.15), (ey + end[1]) / 2)
            img = img + 0.3 * _curve_band(xx, yy, (ex, ey), mid, end, 0.0035)
    if rng.uniform() < 0.25:  # a line or tube entering from the top
        start = (cx + rng.uniform(-0.25, 0.25), -0.05)
        end = (cx + rng.uniform(-0.1, 0.1), rng.uniform(0.35, 0.6))
        mid = ((start[0] + end[0]) / 2 + rng.uniform(-0.1, 0.1), (start[1] + end[1]) / 2)
        img = img + 0.25 * _curve_band(xx, yy, start, mid, end, rng.uniform(0.003, 0.006))

    # acquisition: low-frequency exposure field, gamma, quantum noise
    img = img + 0.03 * _smooth_noise(rng, n, 3)
    img = np.clip(img, 0.0, None) ** rng.uniform(0.8, 1.25)
    img = img + rng.uniform(0.006, 0.02) * rng.standard_normal((n, n)).astype(np.float32)
    return np.clip(img, 0.0, 1.2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# DICOM


def _code_item(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def _uid(rng: np.random.Generator) -> UID:
    # deterministic for a seeded rng; generate_uid hashes the entropy into pydicom's root
    return generate_uid(entropy_srcs=["dicomnode-phantom", str(int(rng.integers(2**62)))])


def make_phantom(
    rng: np.random.Generator,
    positive: bool,
    *,
    study_uid: str | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    modality: str = "DX",
    view: str = "PA",
    size: int | None = None,
) -> Dataset:
    """Make one synthetic chest radiograph as a complete DX (For Presentation) or CR instance.

    Everything random, UIDs included, is drawn from ``rng``: the same generator state gives the
    same dataset. ``size`` sets Rows = Columns (default: drawn from 512-768). The pixel spacing is
    that of a 35-43 cm detector at the chosen size (a phantom is a downsampled radiograph).
    """
    if modality not in SOP_CLASS_FOR_MODALITY:
        raise ValueError(f"modality={modality!r} is not a radiograph: use 'DX' or 'CR'")
    if view not in VIEWS:
        raise ValueError(f"view={view!r} is not supported: use one of {sorted(VIEWS)}")
    if size is None:
        size = int(rng.integers(DEFAULT_SIZE_RANGE[0], DEFAULT_SIZE_RANGE[1] + 1))
    if size < 32:
        raise ValueError(f"size={size} is too small for a chest phantom: use 32 or more (default 512-768)")

    density = chest_density(rng, size, positive)

    # detector values: a random bit depth and a random part of its range, then the photometric
    bits = int(rng.integers(10, 17))
    maxval = 2**bits - 1
    lo, hi = rng.uniform(0.02, 0.15) * maxval, rng.uniform(0.7, 0.97) * maxval
    raw = np.clip(np.rint(lo + (hi - lo) * density / 1.2), 0, maxval)
    monochrome1 = bool(rng.uniform() < 0.5)
    stored = (maxval - raw) if monochrome1 else raw
    stored = stored.astype(np.uint16)
    p_lo, p_hi = np.percentile(stored, [1.0, 99.5])
    center = (p_lo + p_hi) / 2 + rng.uniform(-0.05, 0.05) * (p_hi - p_lo)
    width = max(float(p_hi - p_lo) * rng.uniform(0.9, 1.2), 2.0)

    sop_class = SOP_CLASS_FOR_MODALITY[modality]
    sop_uid = _uid(rng)
    series_uid = _uid(rng)
    study_uid = study_uid or _uid(rng)
    number = int(rng.integers(10000))
    patient_id = patient_id or f"PH{number:06d}"
    patient_name = patient_name or f"PHANTOM^{number:04d}"
    study_dt = dt.datetime(2020, 1, 1) + dt.timedelta(
        days=int(rng.integers(5 * 365)), seconds=int(rng.integers(7 * 3600, 20 * 3600))
    )
    birth = study_dt.date() - dt.timedelta(days=int(rng.integers(18 * 365, 90 * 365)))
    age_years = (study_dt.date() - birth).days // 365
    fov_mm = rng.uniform(350.0, 430.0)
    imager_spacing = round(fov_mm / size, 4)
    magnification = round(rng.uniform(1.05, 1.15), 3)
    date, time = study_dt.strftime("%Y%m%d"), study_dt.strftime("%H%M%S")
    view_code, orientation = VIEWS[view]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMNODE_PH"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = time
    ds.AccessionNumber = f"PHA{int(rng.integers(10**8)):08d}"
    ds.Modality = modality
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM01"
    ds.StudyDescription = f"XR CHEST {view}"
    ds.SeriesDescription = f"CHEST {view}"
    ds.ManufacturerModelName = MODEL_NAME
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.PatientAge = f"{age_years:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.KVP = float(rng.choice([110, 115, 120, 125]))
    ds.DistanceSourceToDetector = 1800.0 if view != "AP" else 1000.0
    ds.DistanceSourceToPatient = round(ds.DistanceSourceToDetector / magnification, 1)
    ds.ExposureTime = int(rng.integers(4, 20))
    ds.XRayTubeCurrent = int(rng.integers(200, 500))
    ds.Exposure = int(rng.integers(1, 6))
    ds.ImagerPixelSpacing = [imager_spacing, imager_spacing]
    ds.SoftwareVersions = "dicomnode-phantoms-1"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{int(rng.integers(1, 10**6))}"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = orientation
    # the chest is unpaired: Image Laterality "U" and no (Series) Laterality, which PS3.3
    # C.7.3.1 requires only for paired body parts (dciodvfy flags an empty one as an error)
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [round(imager_spacing / magnification, 4)] * 2
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "magnification corrected"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = round(float(center), 1)
    ds.WindowWidth = round(float(width), 1)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.AnatomicRegionSequence = Sequence([_code_item(codes.SCT.Chest)])
    if modality == "DX":  # DX-only modules: DX Image, DX Detector, DX Positioning, Acq. Context
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values = less beam (dense is low, white in MONOCHROME1), PS3.3 C.8.11.3.1.2
        ds.PixelIntensityRelationshipSign = 1 if monochrome1 else -1
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorID = "PHDET1"
        ds.EstimatedRadiographicMagnificationFactor = magnification
        ds.PositionerType = ""
        ds.ViewCodeSequence = Sequence([_code_item(view_code)])
        ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
        ds.AcquisitionContextSequence = Sequence()
    ds.PixelData = stored.tobytes()
    return ds


def phantom_labels(n: int, seed: int, positive_fraction: float = 0.5) -> np.ndarray:
    """Exactly ``round(n * positive_fraction)`` positives among ``n``, placed by ``seed``."""
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction={positive_fraction} must lie in [0, 1]")
    labels = np.zeros(n, dtype=bool)
    n_pos = int(round(n * positive_fraction))
    labels[np.random.default_rng([seed, 0x5EED]).permutation(n)[:n_pos]] = True
    return labels


def phantom_patient_id(seed: int, index: int) -> str:
    """PatientID of phantom ``index`` made with ``seed``; the name is ``PHANTOM^<index>``."""
    return f"PH{seed:03d}{index:05d}"


def write_phantom_studies(
    out_dir: Path,
    n_studies: int,
    *,
    seed: int = 0,
    positive_fraction: float = 0.5,
    size: int | None = None,
    modality: str = "DX",
) -> list[PhantomStudy]:
    """Write ``n_studies`` one-image phantom studies as ``out_dir/<study_uid>/<sop_uid>.dcm``.

    Deterministic for a given seed: study ``i`` (image, UIDs, patient) depends only on
    ``(seed, i)``; exactly ``round(n_studies * positive_fraction)`` studies are positive.
    """
    if n_studies < 0:
        raise ValueError(f"n_studies={n_studies} must be 0 or more")
    labels = phantom_labels(n_studies, seed, positive_fraction)

    out_dir = Path(out_dir)
    studies = []
    for i in range(n_studies):
        rng = np.random.default_rng([seed, i])
        study_uid = generate_uid(entropy_srcs=["dicomnode-phantom-study", str(seed), str(i)])
        patient_id = phantom_patient_id(seed, i)
        patient_name = f"PHANTOM^{i:04d}"
        ds = make_phantom(
            rng,
            bool(labels[i]),
            study_uid=study_uid,
            patient_id=patient_id,
            patient_name=patient_name,
            modality=modality,
            size=size,
        )
        study_dir = out_dir / study_uid
        study_dir.mkdir(parents=True, exist_ok=True)
        path = study_dir / f"{ds.SOPInstanceUID}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        studies.append(
            PhantomStudy(
                study_uid=study_uid,
                paths=[path],
                positive=bool(labels[i]),
                patient_id=patient_id,
                patient_name=patient_name,
            )
        )
    return studies


__all__ = [
    "PhantomStudy",
    "chest_density",
    "make_phantom",
    "phantom_labels",
    "phantom_patient_id",
    "write_phantom_studies",
    "SOP_CLASS_FOR_MODALITY",
    "VIEWS",
]
