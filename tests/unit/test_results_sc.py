"""The heatmap SC: RGB pixels with the banner, CAM where the model looked, valid per dciodvfy."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from dicomnode.model.card import ModelCard
from dicomnode.results import Finding, build_heatmap_sc, result_uids
from dicomnode.results.font import GLYPH_HEIGHT, text_mask
from dicomnode.results.sc import BANNER

Phantom = Callable[..., pydicom.Dataset]


def _hot_cam(row: int, col: int, n: int = 8) -> np.ndarray:
    cam = np.zeros((n, n), np.float32)
    cam[row, col] = 1.0
    return cam


def _phantom_with(phantom: Phantom, photometric: str, **kwargs: object) -> pydicom.Dataset:
    """The first phantom (by seed) whose photometric interpretation is ``photometric``."""
    for seed in range(100):
        ds = phantom(seed, True, **kwargs)
        if ds.PhotometricInterpretation == photometric:
            return ds
    raise AssertionError(f"no {photometric} phantom in 100 seeds")


def _banner_rows(sc: pydicom.Dataset, source: pydicom.Dataset) -> int:
    return int(sc.Rows) - int(source.Rows)


def _yellow(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > 200) & (g > 150) & (b < 80)


def test_sc_is_an_rgb_uint8_image_with_the_banner_above_the_radiograph(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(1, True)
    sc = build_heatmap_sc(source, _hot_cam(3, 3), Finding(0.87, 0.42), results_card)
    pixels = sc.pixel_array
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert pixels.dtype == np.uint8
    banner = _banner_rows(sc, source)
    assert banner > GLYPH_HEIGHT
    assert pixels.shape == (source.Rows + banner, source.Columns, 3)

    # the first banner line reads NOT FOR DIAGNOSTIC USE: its yellow ink, cropped and sampled
    # once per font pixel, is the font's bitmap of those words
    ink = _yellow(pixels[:banner])
    inked_rows = np.flatnonzero(ink.any(axis=1))
    top = inked_rows[0]
    bottom = top + np.flatnonzero(~ink[top:].any(axis=1))[0]  # first line only, not the legend
    cols = np.flatnonzero(ink[top:bottom].any(axis=0))
    glyph = ink[top:bottom, cols[0] : cols[-1] + 1]
    scale = glyph.shape[0] // GLYPH_HEIGHT
    assert scale >= 1
    np.testing.assert_array_equal(glyph[::scale, ::scale], text_mask(BANNER))

    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
    assert sc.BurnedInAnnotation == "NO"


def test_sc_sits_in_the_source_study_with_orientation_and_spacing(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(2, False)
    sc = build_heatmap_sc(source, _hot_cam(1, 1), Finding(0.1, 0.42), results_card)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sc[keyword].value == source[keyword].value, keyword
    uids = result_uids(source.StudyInstanceUID, results_card.version)
    assert (sc.SeriesInstanceUID, sc.SOPInstanceUID) == (uids.sc_series, uids.sc_instance)
    assert sc.SeriesNumber == 9902
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_large_radiograph_is_shrunk_to_1024_and_spacing_scaled(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(3, True, size=1536)
    sc = build_heatmap_sc(source, _hot_cam(2, 2), Finding(0.5, 0.42), results_card)
    banner = int(sc.Rows) - 1024
    assert sc.Columns == 1024 and banner > 0
    assert float(sc.PixelSpacing[0]) == pytest.approx(float(source.PixelSpacing[0]) * 1.5, rel=1e-3)
    assert float(sc.PixelSpacing[1]) == pytest.approx(float(source.PixelSpacing[1]) * 1.5, rel=1e-3)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_air_is_dark_and_spine_bright_whatever_the_photometric_interpretation(
    results_phantom: Phantom, results_card: ModelCard, photometric: str
) -> None:
    source = _phantom_with(results_phantom, photometric)
    sc = build_heatmap_sc(source, np.zeros((8, 8)), Finding(0.1, 0.42), results_card)
    image = sc.pixel_array[_banner_rows(sc, source) :].astype(float).mean(axis=2)
    n = image.shape[1]
    corner = image[-20:, :8].mean()  # outside the body, beside the abdomen
    spine = image[n // 2 :, n // 2 - 3 : n // 2 + 3].mean()
    assert corner < 80
    assert spine > corner + 80


def test_cam_hot_spot_lands_where_the_model_looked_on_a_non_square_image(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    # 256 rows x 160 columns: the model saw it padded to a 256 square, 48 columns each side
    source = results_phantom(4, True)
    cropped = source.pixel_array[:, 48:208].copy()
    source.PixelData, source.Columns = cropped.tobytes(), 160
    # CAM cell (2, 2) of 8 covers square rows/columns 64-96, i.e. image columns 16-48
    sc = build_heatmap_sc(source, _hot_cam(2, 2), Finding(0.9, 0.42), results_card)
    rgb = sc.pixel_array[_banner_rows(sc, source) :].astype(float)
    redness = rgb[..., 0] - rgb[..., 2]
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert 64 <= y < 96
    assert 16 <= x < 48


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_sc_has_no_dciodvfy_errors(
    results_phantom: Phantom,
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
    photometric: str,
) -> None:
    source = _phantom_with(results_phantom, photometric)
    sc = build_heatmap_sc(source, _hot_cam(4, 2), Finding(0.66, 0.42), results_card)
    assert dciodvfy_errors(sc) == []


def test_source_without_body_part_gets_an_empty_laterality_and_stays_valid(
    results_phantom: Phantom,
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
) -> None:
    source = results_phantom(5, False)
    del source.BodyPartExamined
    sc = build_heatmap_sc(source, _hot_cam(4, 4), Finding(0.2, 0.42), results_card)
    assert "Laterality" in sc and not sc.Laterality
    assert dciodvfy_errors(sc) == []


def test_building_the_sc_leaves_the_source_untouched(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(6, True)
    before = copy.deepcopy(source)
    build_heatmap_sc(source, _hot_cam(1, 6), Finding(0.7, 0.42), results_card)
    assert source == before
    assert getattr(source, "_pixel_array", None) is None  # not even a decoded-pixel cache


def test_sc_refuses_a_cam_that_is_not_a_map(results_phantom: Phantom, results_card: ModelCard) -> None:
    with pytest.raises(ValueError, match="cam"):
        build_heatmap_sc(results_phantom(7, True), np.zeros(8), Finding(0.7, 0.42), results_card)


def test_narrow_radiograph_is_enlarged_so_the_banner_fits_and_spacing_follows(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(8, True, size=64)
    sc = build_heatmap_sc(source, _hot_cam(2, 2), Finding(0.5, 0.42), results_card)
    assert sc.Columns == 192  # 64 x 3, the smallest whole factor reaching 160
    assert float(sc.PixelSpacing[1]) == pytest.approx(float(source.PixelSpacing[1]) / 3, rel=1e-3)
    ink = _yellow(sc.pixel_array[: int(sc.Rows) - 192])
    assert ink[:, -8:].sum() == 0  # the warning ends inside the image, not cut at its edge
