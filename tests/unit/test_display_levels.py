"""The heatmap drawn from the decoding child's 8-bit display is the one drawn from the float image.

The child sends :func:`dicomnode.model.decode.gray_levels` of the display (1 MiB at 1024 x 1024
instead of 8 MiB of float64); the render's blend table is indexed by those same levels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.model.decode import DecodeLimits, Decoder, gray_levels
from dicomnode.model.preprocess import DisplayImage, PreprocessConfig, display_image_of, to_unit_image
from dicomnode.results.render import MAX_SIDE, render_heatmap
from dicomnode.testing.phantoms import make_phantom


def test_gray_levels_round_and_clip_to_uint8() -> None:
    unit = np.array([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 2.0, 254.5 / 255])
    levels = gray_levels(unit)
    assert levels.dtype == np.uint8
    assert levels.tolist() == [0, 0, 0, 2, 128, 255, 255, 254]  # halves to even, as np.rint


@pytest.mark.parametrize("shape", [(2100, 1700), (700, 500), (300, 90)])
def test_a_display_sent_as_gray_levels_renders_the_same_pixels(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(23)
    unit = rng.random(shape)
    unit[0, :8] = np.arange(8) / 255 + 0.5 / 255  # exact halves between two levels
    cam = rng.random((7, 7))
    kwargs = dict(keep_aspect=True, lines=["NOT FOR DIAGNOSTIC USE", "P=0.50"], threshold=0.5)

    floats = display_image_of(unit, MAX_SIDE)
    levels = DisplayImage(gray_levels(floats.pixels), floats.source_shape)
    a = render_heatmap(floats, cam, **kwargs)  # type: ignore[arg-type]
    b = render_heatmap(levels, cam, **kwargs)  # type: ignore[arg-type]

    assert np.array_equal(a.pixels, b.pixels)
    assert (a.zoom, a.banner_rows) == (b.zoom, b.banner_rows)


def test_the_decoder_sends_the_display_as_gray_levels_of_the_float_display(tmp_path: Path) -> None:
    ds = make_phantom(np.random.default_rng(4), True, size=1300)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    config = PreprocessConfig()

    display = Decoder(DecodeLimits(memory_bytes=0)).display(path, config, MAX_SIDE)

    floats = display_image_of(to_unit_image(pydicom.dcmread(path), config), MAX_SIDE)
    assert display.pixels.dtype == np.uint8 and display.pixels.nbytes == MAX_SIDE * MAX_SIDE
    assert display.source_shape == floats.source_shape
    assert np.array_equal(display.pixels, gray_levels(floats.pixels))
