"""The one preprocessing: a DICOM radiograph to the model's input tensor.

Training and the node's worker both call :func:`preprocess`; the parameters travel with the model
in its card (``ModelCard.preprocess == PreprocessConfig.to_dict()``), so the worker rebuilds the
exact configuration the model was trained with via :meth:`PreprocessConfig.from_dict`.

Steps, in order (numpy and pydicom only; no torch, no PIL):

1. decode ``pixel_array`` (compressed transfer syntaxes through the pylibjpeg plugins);
2. Modality LUT / rescale (PS3.3 C.11.1) with :func:`pydicom.pixels.apply_modality_lut`;
3. VOI to [0, 1]: the first window of the dataset (PS3.3 C.11.2.1.2; LINEAR, LINEAR_EXACT and
   SIGMOID), or its VOI LUT Sequence, or, when it has neither or ``voi="percentile"``, a
   percentile window (default 0.5 to 99.5);
4. MONOCHROME1 inverted so that air is dark (0) and bone bright (1);
5. padded to a square with 0 (air), centred, so anatomy keeps its aspect ratio;
6. resized to ``size`` x ``size`` by exact area averaging (box integration over each output
   pixel's footprint, as OpenCV's INTER_AREA when shrinking; a pixel-replicating box when
   enlarging);
7. normalised with the fixed constants ``(x - mean) / std`` of the config.

The output is float32 ``[1, size, size]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

#: bump when any step above changes its output; a model records the version it was trained with
PREPROCESS_VERSION = "1"

VOI_MODES = ("header", "percentile")


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess`; stored in the model card."""

    #: output is ``size`` x ``size``
    size: int = 224
    #: "header": the dataset's VOI (window or LUT) when it has one, else percentiles;
    #: "percentile": always the percentile window
    voi: str = "header"
    #: lower and upper percentile of the percentile window
    percentiles: tuple[float, float] = (0.5, 99.5)
    #: pad to a square before resizing (True) or stretch (False)
    keep_aspect: bool = True
    #: fixed normalisation constants applied to the [0, 1] image
    mean: float = 0.5
    std: float = 0.25
    version: str = PREPROCESS_VERSION

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"PreprocessConfig size={self.size} is too small: use 64 or more")
        if self.voi not in VOI_MODES:
            raise ValueError(f"PreprocessConfig voi={self.voi!r} is unknown: use one of {VOI_MODES}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(
                f"PreprocessConfig percentiles={self.percentiles} must satisfy 0 <= lo < hi <= 100"
            )
        if self.std <= 0:
            raise ValueError(f"PreprocessConfig std={self.std} must be positive")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, as stored in the model card."""
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Rebuild from :meth:`to_dict`; raises ValueError on an unknown version or key."""
        version = str(data.get("version", ""))
        if version != PREPROCESS_VERSION:
            raise ValueError(
                f"the model was trained with preprocessing version {version!r} but this code "
                f"implements {PREPROCESS_VERSION!r}: install the dicomnode release that trained "
                "the model, or retrain and re-export it"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"preprocess config has unknown keys {unknown}: the model card was written by "
                "another dicomnode version; re-export the model with this one"
            )
        kwargs = dict(data)
        if "percentiles" in kwargs:
            kwargs["percentiles"] = tuple(float(p) for p in kwargs["percentiles"])
        return cls(**kwargs)


def check_image(ds: Dataset) -> None:
    """Raise ValueError unless ``ds`` is a single-frame grayscale image we can preprocess."""
    what = f"SOP Class {ds.get('SOPClassUID', '?')}, SOP Instance {ds.get('SOPInstanceUID', '?')}"
    if "PixelData" not in ds:
        raise ValueError(
            f"dataset ({what}) has no Pixel Data: it is not an image; only CR/DX radiographs "
            "should reach the model"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(
            f"dataset ({what}) has SamplesPerPixel={ds.SamplesPerPixel}: the model needs a "
            "grayscale (1 sample) radiograph"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"dataset ({what}) has PhotometricInterpretation={photometric!r}: the model needs "
            "MONOCHROME1 or MONOCHROME2"
        )
    frames = ds.get("NumberOfFrames", 1)
    if int(frames or 1) != 1:
        raise ValueError(
            f"dataset ({what}) has {frames} frames: the model takes single-frame radiographs; "
            "split the frames into separate instances first"
        )


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])
    return float(value)


def window_to_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Apply a DICOM window (PS3.3 C.11.2.1.2) with output range [0, 1] (float64)."""
    x = np.asarray(values, dtype=np.float64)
    function = function.upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((x - (center - width / 2.0)) / width, 0.0, 1.0)
    # LINEAR: the standard's half-pixel offsets, C.11.2.1.2.1; width 1 is a step at c - 0.5
    if width <= 1.0:
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def percentile_to_unit(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map ``values`` linearly so the given percentiles become 0 and 1, clipped (float64)."""
    x = np.asarray(values, dtype=np.float64)
    return _stretch(x, *np.percentile(x, percentiles))


def _stretch(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` mapped linearly so ``lo`` becomes 0 and ``hi`` 1, clipped (all 0 when hi <= lo)."""
    if hi <= lo:  # a flat image: nothing to see, keep it defined
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _area_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Exact box-average resample of ``a`` along ``axis`` to ``n_out`` samples."""
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    # integral of the piecewise-constant signal at the output cell edges
    csum = np.concatenate([np.zeros_like(np.take(a, [0], axis=axis)), np.cumsum(a, axis=axis)], axis=axis)
    edges = np.linspace(0.0, n_in, n_out + 1)
    idx = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    frac = edges - idx
    shape = [1] * a.ndim
    shape[axis] = n_out + 1
    integral = np.take(csum, idx, axis=axis) + frac.reshape(shape) * np.take(a, idx, axis=axis)
    width = np.diff(edges).reshape([n_out if i == axis else 1 for i in range(a.ndim)])
    return np.diff(integral, axis=axis) / width


def _shrink_last(a: np.ndarray, n_out: int) -> np.ndarray:
    """:func:`_area_axis` along the last axis when shrinking (``n_out`` < its length), in one pass
    over contiguous memory: block sums where the factor is an integer, else sums of the whole
    input cells under each output cell (``np.add.reduceat``) plus the two cut cells at its edges."""
    n_in = a.shape[-1]
    if n_in % n_out == 0:
        k = n_in // n_out
        total = a[..., 0::k] + a[..., 1::k]
        for j in range(2, k):
            total += a[..., j::k]
        total /= k
        return total
    edges = np.linspace(0.0, n_in, n_out + 1)
    # the cells are wider than one input pixel: every edge falls in another input pixel
    idx = np.minimum(np.floor(edges).astype(np.int64), n_in - 1)
    frac = edges - idx
    whole = np.add.reduceat(a, idx, axis=-1)[..., :n_out]
    cut = frac * a[..., idx]
    return (whole + cut[..., 1:] - cut[..., :-1]) / np.diff(edges)


def resize_area(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize a 2-D image by exact area averaging (float64 in, float64 out).

    Shrinking works on contiguous memory: whole rows summed where the row factor is an integer,
    then along each row (:func:`_shrink_last`), else along each row first and down the smaller,
    transposed result. The box integrals are those of :func:`_area_axis`, summed in another
    order: values differ from it by rounding only (about 1e-13 on a [0, 1] image; the tests
    compare the two).
    """
    x = np.asarray(image, dtype=np.float64)
    if x.ndim != 2 or rows > x.shape[0] or cols > x.shape[1]:  # enlarging: the exact integral
        return _area_axis(_area_axis(x, rows, 0), cols, 1)
    if rows != x.shape[0] and x.shape[0] % rows == 0:
        k = x.shape[0] // rows
        total = x[0::k] + x[1::k]
        for j in range(2, k):
            total += x[j::k]
        total /= k
        x = total
    if cols != x.shape[1]:
        x = _shrink_last(x, cols)
    if rows != x.shape[0]:
        x = _shrink_last(np.ascontiguousarray(x.T), rows).T
    return np.ascontiguousarray(x)


def pad_to_square(image: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Pad a 2-D image with ``value`` to a centred square."""
    r, c = image.shape
    n = max(r, c)
    if r == c:
        return image
    top, left = (n - r) // 2, (n - c) // 2
    out = np.full((n, n), value, dtype=image.dtype)
    out[top : top + r, left : left + c] = image
    return out


def finish_unit_image(unit: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Steps 5-7 on a [0, 1] image (air dark): square, resize, normalise -> float32 [1, S, S]."""
    if unit.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {unit.shape}")
    img = pad_to_square(unit) if config.keep_aspect else unit
    img = resize_area(img, config.size, config.size)
    out = (img - config.mean) / config.std
    return out.astype(np.float32)[None]


def preprocess_array(
    pixels: np.ndarray,
    config: PreprocessConfig,
    *,
    window: tuple[float, float] | None = None,
    monochrome1: bool = False,
) -> np.ndarray:
    """Steps 3-7 on modality values (after rescale): window or percentiles, invert, resize.

    ``window`` is ``(center, width)`` of a LINEAR DICOM window; None uses the percentile window.
    Returns float32 ``[1, size, size]``, the same as :func:`preprocess` on the equivalent dataset.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if window is not None and config.voi == "header":
        unit = window_to_unit(pixels, window[0], window[1])
    else:
        unit = percentile_to_unit(pixels, config.percentiles)
    if monochrome1:
        unit = 1.0 - unit
    return finish_unit_image(unit, config)


def to_unit_image(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    """Steps 1-4: decoded, rescaled, windowed, inverted if MONOCHROME1; float64 in [0, 1]."""
    check_image(ds)
    try:
        raw = ds.pixel_array
    except Exception as exc:  # decoders raise a variety of types; say what to do
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ValueError(
            f"cannot decode the pixel data (transfer syntax {name}): {exc}; install the "
            "pylibjpeg plugins (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle) or have "
            "the sender transcode to Explicit VR Little Endian"
        ) from exc
    if raw.ndim != 2:
        raise ValueError(f"decoded pixel data has shape {raw.shape}: expected one 2-D frame")
    lookup = _stored_value_index(raw)
    if lookup is None:  # float pixels, or more possible values than pixels: per pixel
        return _unit_of_values(np.asarray(apply_modality_lut(raw, ds), dtype=np.float64), ds, config)
    # Steps 2-4 are functions of the stored value alone (the percentiles aside, which are taken
    # over the image's values as before): computed once per possible value, then looked up. The
    # same numbers as per pixel, without a float image for each step.
    domain, index = lookup
    values = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
    return _unit_of_values(values, ds, config, index=index)[index]


def _stored_value_index(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(every stored value from the image's lowest to its highest, ``raw`` as indices into it), or
    None when ``raw`` is not integer or that range is larger than the image."""
    if raw.dtype.kind not in "ui" or raw.size == 0:
        return None
    lo = 0 if raw.dtype.kind == "u" else int(raw.min())
    hi = int(raw.max())
    if hi - lo + 1 > raw.size:
        return None
    domain = np.arange(lo, hi + 1).astype(raw.dtype)
    index = raw if lo == 0 else np.subtract(raw, lo, dtype=np.int64)
    return domain, index


def _unit_of_values(
    values: np.ndarray, ds: Dataset, config: PreprocessConfig, *, index: np.ndarray | None = None
) -> np.ndarray:
    """Steps 3-4 on modality ``values``: the image's own, or one per stored value when ``index``
    (the image as indices into ``values``) is given."""
    unit: np.ndarray | None = None
    if config.voi == "header":
        if ds.get("VOILUTSequence"):
            # a LUT is indexed by (integer) modality values
            indices = np.rint(values).astype(np.int64)
            lut_out = np.asarray(apply_voi_lut(indices, ds, index=0, prefer_lut=True), np.float64)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            unit = np.clip(lut_out / float(2**bits - 1), 0.0, 1.0)
        elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowWidth not in (None, ""):
            center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
            if width >= 1.0 or (width > 0.0 and function.upper() != "LINEAR"):
                unit = window_to_unit(values, center, width, function)
    if unit is None:
        pixels = values if index is None else values[index]
        unit = _stretch(values, *np.percentile(pixels, config.percentiles))
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


@dataclass(frozen=True)
class DisplayImage:
    """A radiograph as the heatmap shows it, made where it was decoded so that the full-size image
    need not travel: ``pixels`` is :func:`to_unit_image`'s [0, 1] image shrunk by area averaging to
    :func:`display_shape` (the decoding child sends it as uint8 gray levels,
    :func:`dicomnode.model.decode.gray_levels`, which the render takes as they are), and
    ``source_shape`` the (rows, columns) it was shrunk from."""

    pixels: np.ndarray
    source_shape: tuple[int, int]


def display_shape(rows: int, cols: int, max_side: int) -> tuple[int, int]:
    """(rows, columns) of a ``rows`` x ``cols`` image shrunk so its longer side is ``max_side``
    (unchanged when it already fits)."""
    if max(rows, cols) <= max_side:
        return rows, cols
    shrink = max(rows, cols) / max_side
    return max(1, round(rows / shrink)), max(1, round(cols / shrink))


def display_image_of(unit: np.ndarray, max_side: int) -> DisplayImage:
    """``unit`` (a 2-D [0, 1] image) shrunk by area averaging to fit ``max_side``."""
    if unit.ndim != 2:
        raise ValueError(f"expected a 2-D radiograph, got shape {unit.shape}")
    rows, cols = unit.shape
    shape = display_shape(rows, cols, max_side)
    pixels = unit if shape == (rows, cols) else resize_area(unit, *shape)
    return DisplayImage(pixels, (rows, cols))


def preprocess(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    """Preprocess one radiograph for the model: float32 ``[1, size, size]``.

    Raises ValueError naming the problem if ``ds`` has no pixel data, is not single-frame
    grayscale, or cannot be decoded.
    """
    return finish_unit_image(to_unit_image(ds, config), config)


__all__ = [
    "PREPROCESS_VERSION",
    "DisplayImage",
    "PreprocessConfig",
    "check_image",
    "display_image_of",
    "display_shape",
    "finish_unit_image",
    "pad_to_square",
    "percentile_to_unit",
    "preprocess",
    "preprocess_array",
    "resize_area",
    "to_unit_image",
    "window_to_unit",
]
