"""The fast preprocessing gives the numbers the per-pixel arithmetic gives: the model sees what it
was trained on. The references here are the straightforward forms the fast paths replace: the
modality LUT and VOI computed on every pixel, and the area resize as the exact cumulative
integral along each axis (``_area_axis``)."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from dicomnode.model.preprocess import (
    PreprocessConfig,
    _area_axis,
    _unit_of_values,
    display_image_of,
    preprocess,
    resize_area,
    to_unit_image,
)
from dicomnode.testing.phantoms import make_phantom


def _integral_resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64)
    return _area_axis(_area_axis(x, rows, 0), cols, 1)


def _per_pixel_unit(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    return _unit_of_values(values, ds, config)


def _per_pixel_tensor(ds: Dataset, config: PreprocessConfig) -> np.ndarray:
    unit = _per_pixel_unit(ds, config)
    if config.keep_aspect and unit.shape[0] != unit.shape[1]:
        side = max(unit.shape)
        square = np.zeros((side, side))
        top, left = (side - unit.shape[0]) // 2, (side - unit.shape[1]) // 2
        square[top : top + unit.shape[0], left : left + unit.shape[1]] = unit
        unit = square
    resized = _integral_resize(unit, config.size, config.size)
    return ((resized - config.mean) / config.std).astype(np.float32)[None]


@pytest.mark.parametrize(
    ("shape", "out"),
    [
        ((1024, 1024), (512, 512)),  # the heatmap's display of a 2048 px image: factor 2
        ((1024, 1024), (112, 112)),  # the model's input from 2048 px: factor 9.14
        ((1250, 1024), (512, 419)),  # neither factor an integer
        ((512, 300), (64, 64)),  # integer rows, fractional columns
        ((300, 301), (100, 301)),  # one axis unchanged
        ((7, 5), (3, 2)),
        ((100, 60), (224, 224)),  # enlarging: the integral itself
        ((300, 60), (100, 224)),  # one axis shrunk, one enlarged
    ],
)
def test_fast_area_resize_matches_the_exact_integral(shape: tuple[int, int], out: tuple[int, int]) -> None:
    image = np.random.default_rng(sum(shape)).random(shape)
    fast = resize_area(image, *out)
    assert fast.shape == out and fast.flags.c_contiguous
    np.testing.assert_allclose(fast, _integral_resize(image, *out), rtol=0, atol=1e-12)


def _signed_rescaled(ds: Dataset) -> Dataset:
    """``ds`` stored as signed 16-bit with a rescale, showing the same image."""
    out = copy.deepcopy(ds)
    out.PixelData = (ds.pixel_array.astype(np.int32) - 2000).astype(np.int16).tobytes()
    out.PixelRepresentation = 1
    out.RescaleSlope, out.RescaleIntercept = 0.5, 1000.0
    out.WindowCenter = (float(ds.WindowCenter) - 2000) * 0.5 + 1000
    out.WindowWidth = float(ds.WindowWidth) * 0.5
    return out


def _with_voi_lut(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", [min(4095, int(4095 * (i / 4095) ** 0.5)) for i in range(4096)])
    out.VOILUTSequence = [item]
    return out


def _sigmoid(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    out.VOILUTFunction = "SIGMOID"
    return out


def _no_window(ds: Dataset) -> Dataset:
    out = copy.deepcopy(ds)
    del out.WindowCenter, out.WindowWidth
    return out


VARIANTS = {
    "as made": lambda ds: ds,
    "signed, rescaled": _signed_rescaled,
    "VOI LUT": _with_voi_lut,
    "sigmoid window": _sigmoid,
    "no window (percentiles)": _no_window,
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("voi", ["header", "percentile"])
def test_unit_image_is_bitwise_what_per_pixel_arithmetic_gives(variant: str, voi: str) -> None:
    config = PreprocessConfig(size=64, voi=voi)
    for seed in (0, 1):  # both photometric interpretations among the phantoms
        ds = VARIANTS[variant](make_phantom(np.random.default_rng(seed), True, size=160))
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(ds)))
        np.testing.assert_array_equal(to_unit_image(ds, config), _per_pixel_unit(ds, config))


def _encoded(ds: Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("size", [300, 517, 640])
def test_model_tensor_and_display_match_todays_preprocessing(size: int) -> None:
    for seed, config in enumerate([PreprocessConfig(), PreprocessConfig(size=64, keep_aspect=False)]):
        ds = make_phantom(np.random.default_rng(seed + size), seed == 0, size=size)
        # float32 tensors: equal but for a last-bit rounding of a value now and then
        np.testing.assert_allclose(preprocess(ds, config), _per_pixel_tensor(ds, config), rtol=0, atol=1e-6)
        unit = _per_pixel_unit(ds, config)
        display = display_image_of(unit, 256)
        np.testing.assert_allclose(display.pixels, _integral_resize(unit, *display.pixels.shape), atol=1e-12)
