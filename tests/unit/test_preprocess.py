"""The one preprocessing: shape, range, photometric and rescale invariance, decoding, errors."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_windowing
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicomnode.model.preprocess import (
    PREPROCESS_VERSION,
    PreprocessConfig,
    pad_to_square,
    preprocess,
    preprocess_array,
    resize_area,
    window_to_unit,
)
from dicomnode.testing.phantoms import make_phantom


def _phantom(photometric: str = "MONOCHROME2", size: int = 120, seed: int = 0) -> pydicom.Dataset:
    """A phantom forced to the given photometric interpretation (same anatomy either way)."""
    ds = make_phantom(np.random.default_rng(seed), True, size=size)
    if ds.PhotometricInterpretation != photometric:
        ds = _flip_photometric(ds)
    return ds


def _flip_photometric(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same image stored with the other photometric interpretation, and the window that
    displays it identically (PS3.3 C.11.2.1.2.1: c' = max - c + 1 for LINEAR)."""
    out = copy.deepcopy(ds)
    maxval = 2**ds.BitsStored - 1
    out.PixelData = (maxval - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()
    out.WindowCenter = maxval - float(ds.WindowCenter) + 1
    mono1 = ds.PhotometricInterpretation == "MONOCHROME2"
    out.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    out.PresentationLUTShape = "INVERSE" if mono1 else "IDENTITY"
    return out


def test_output_is_float32_one_channel_square_within_the_normalised_range() -> None:
    config = PreprocessConfig(size=64)
    out = preprocess(_phantom(), config)
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    lo, hi = (0 - config.mean) / config.std, (1 - config.mean) / config.std
    assert np.isfinite(out).all() and lo - 1e-6 <= out.min() and out.max() <= hi + 1e-6
    assert out.std() > 0.3  # an image, not a flat field


@pytest.mark.parametrize("voi", ["header", "percentile"])
def test_monochrome1_and_monochrome2_of_the_same_image_give_the_same_output(voi: str) -> None:
    config = PreprocessConfig(size=64, voi=voi)
    m2 = _phantom("MONOCHROME2")
    m1 = _flip_photometric(m2)
    assert m1.PhotometricInterpretation == "MONOCHROME1"
    np.testing.assert_allclose(preprocess(m1, config), preprocess(m2, config), atol=1e-5)


def test_air_is_dark_after_preprocessing_whatever_the_photometric() -> None:
    # the phantom's corners are air outside the body: they must come out dark in both encodings
    config = PreprocessConfig(size=64)
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        out = preprocess(_phantom(photometric), config)[0]
        assert out[:4, :4].mean() < out[28:36, 28:36].mean(), photometric


def test_rescale_slope_and_intercept_are_applied() -> None:
    config = PreprocessConfig(size=48)
    base = _phantom(size=96)
    scaled = copy.deepcopy(base)
    # the same modality values stored as (value + 100) / 2 with slope 2, intercept -100
    stored = base.pixel_array.astype(np.int64)
    assert (stored % 2 == 0).sum() > 0
    stored = (stored // 2) * 2  # make them exactly representable
    base.PixelData = stored.astype(np.uint16).tobytes()
    scaled.PixelData = ((stored + 100) // 2).astype(np.uint16).tobytes()
    scaled.RescaleSlope, scaled.RescaleIntercept = 2, -100
    np.testing.assert_allclose(preprocess(scaled, config), preprocess(base, config), atol=1e-6)


def test_linear_window_matches_pydicom() -> None:
    ds = _phantom(size=64)
    values = ds.pixel_array.astype(np.float64)
    ours = window_to_unit(values, float(ds.WindowCenter), float(ds.WindowWidth))
    theirs = apply_windowing(values, ds)
    y_max = 2**ds.BitsStored - 1
    np.testing.assert_allclose(ours, theirs / y_max, atol=1e-9)


def test_dataset_without_window_falls_back_to_percentiles() -> None:
    config = PreprocessConfig(size=48)
    ds = _phantom(size=96)
    del ds.WindowCenter, ds.WindowWidth
    expected = preprocess_array(ds.pixel_array.astype(np.float64), config, monochrome1=False)
    np.testing.assert_allclose(preprocess(ds, config), expected, atol=1e-6)


def test_preprocess_array_with_the_header_window_equals_preprocess() -> None:
    config = PreprocessConfig(size=48)
    ds = _phantom(size=96)
    out = preprocess_array(
        ds.pixel_array.astype(np.float64),
        config,
        window=(float(ds.WindowCenter), float(ds.WindowWidth)),
    )
    np.testing.assert_allclose(out, preprocess(ds, config), atol=1e-6)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_losslessly_compressed_input_gives_the_same_output(syntax: pydicom.uid.UID) -> None:
    config = PreprocessConfig(size=48)
    ds = _phantom(size=96)
    expected = preprocess(ds, config)
    compressed = copy.deepcopy(ds)
    try:
        compressed.compress(syntax)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"no encoder for {syntax.name}: {exc}")
    buf = io.BytesIO()
    compressed.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    back = pydicom.dcmread(buf)
    assert back.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_allclose(preprocess(back, config), expected, atol=1e-6)


def test_no_pixel_data_raises_value_error_naming_the_problem() -> None:
    ds = _phantom(size=32)
    del ds.PixelData
    with pytest.raises(ValueError, match="no Pixel Data"):
        preprocess(ds, PreprocessConfig(size=32))


def test_colour_and_multiframe_images_are_refused() -> None:
    rgb = _phantom(size=32)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation = 3, "RGB"
    with pytest.raises(ValueError, match="grayscale"):
        preprocess(rgb, PreprocessConfig(size=32))
    multi = _phantom(size=32)
    multi.NumberOfFrames = 2
    with pytest.raises(ValueError, match="single-frame"):
        preprocess(multi, PreprocessConfig(size=32))


def test_area_resize_averages_blocks_and_keeps_the_mean() -> None:
    a = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(resize_area(a, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
    rng = np.random.default_rng(0)
    b = rng.random((301, 257))
    out = resize_area(b, 64, 64)
    assert out.shape == (64, 64)
    assert abs(out.mean() - b.mean()) < 1e-9  # exact box integration conserves the mean
    np.testing.assert_allclose(resize_area(np.full((7, 5), 3.0), 3, 11), 3.0)


def test_non_square_images_are_padded_with_air_not_stretched() -> None:
    config = PreprocessConfig(size=32)
    tall = np.ones((100, 50))
    out = preprocess_array(tall, config, window=(0.5, 1.0))[0]
    black = (0.0 - config.mean) / config.std
    white = (1.0 - config.mean) / config.std
    np.testing.assert_allclose(out[:, :7], black)  # left padding (a quarter of the width)
    np.testing.assert_allclose(out[:, 9:23], white)  # the image in the middle
    assert pad_to_square(tall).shape == (100, 100)
    stretched = preprocess_array(tall, PreprocessConfig(size=32, keep_aspect=False), window=(0.5, 1.0))
    np.testing.assert_allclose(stretched, white)


def test_config_round_trips_through_the_model_card_json() -> None:
    config = PreprocessConfig(size=160, voi="percentile", percentiles=(1.0, 99.0))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["version"] == PREPROCESS_VERSION
    assert PreprocessConfig.from_dict(data) == config


def test_config_from_another_preprocessing_version_is_refused() -> None:
    data = PreprocessConfig().to_dict()
    data["version"] = "0"
    with pytest.raises(ValueError, match="retrain"):
        PreprocessConfig.from_dict(data)
    data = PreprocessConfig().to_dict()
    data["gamma"] = 2.0
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessConfig.from_dict(data)


def test_bad_config_values_are_refused() -> None:
    with pytest.raises(ValueError, match="voi"):
        PreprocessConfig(voi="auto")
    with pytest.raises(ValueError, match="percentiles"):
        PreprocessConfig(percentiles=(99.0, 1.0))


def test_voi_lut_sequence_is_used_when_present() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    config = PreprocessConfig(size=48)
    ds = _phantom(size=96)
    maxval = 2**ds.BitsStored - 1
    item = Dataset()
    item.LUTDescriptor = [maxval + 1 if maxval < 65535 else 0, 0, 16]
    # a LUT that inverts: if it were ignored the image would come out negated
    item.LUTData = [int(v) for v in np.linspace(65535, 0, maxval + 1).round()]
    ds.VOILUTSequence = Sequence([item])
    expected = preprocess_array(
        maxval - ds.pixel_array.astype(np.float64),
        config,
        window=(maxval / 2 + 0.5, maxval + 1.0),
        monochrome1=ds.PhotometricInterpretation == "MONOCHROME1",
    )
    np.testing.assert_allclose(preprocess(ds, config), expected, atol=0.02)
