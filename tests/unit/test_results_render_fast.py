"""The heatmap's table-lookup blend against the float formula it replaces: the same picture to
within one level of 255, and identical where the model did not look."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest

from dicomnode.model.card import ModelCard
from dicomnode.model.preprocess import display_image_of
from dicomnode.results import Finding, build_heatmap_sc
from dicomnode.results.render import ALPHA_MAX, HEAT_LEVELS, blend_table, jet, render_heatmap

LINES = ["NOT FOR DIAGNOSTIC USE", "AI PNEUMONIA P=0.87 URGENT"]


def _float_bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear sampling in float64 by gathering the four neighbours (the reference)."""

    def weights(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip(pos, 0.0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, np.minimum(lo + 1, n - 1), pos - lo

    y0, y1, fy = weights(ys, grid.shape[0])
    x0, x1, fx = weights(xs, grid.shape[1])
    rows = grid[y0] * (1.0 - fy)[:, None] + grid[y1] * fy[:, None]
    return rows[:, x0] * (1.0 - fx)[None, :] + rows[:, x1] * fx[None, :]


def _float_blend(gray: np.ndarray, cam: np.ndarray, source: tuple[int, int], keep_aspect: bool) -> np.ndarray:
    """The radiograph part of the heatmap by the float formula: CAM sampled through the model's
    square, jet blended at opacity ALPHA_MAX * CAM, rounded to uint8."""
    rows, cols = source
    out_rows, out_cols = gray.shape
    y = (np.arange(out_rows) + 0.5) * rows / out_rows
    x = (np.arange(out_cols) + 0.5) * cols / out_cols
    if keep_aspect:
        side = max(rows, cols)
        y, x = (y + (side - rows) // 2) / side, (x + (side - cols) // 2) / side
    else:
        y, x = y / rows, x / cols
    h, w = cam.shape
    heat = _float_bilinear(np.clip(cam.astype(np.float64), 0, 1), y * h - 0.5, x * w - 0.5)
    alpha = (ALPHA_MAX * heat)[..., None]
    image = np.clip(gray, 0.0, 1.0)[..., None] * (1.0 - alpha) + jet(heat) * alpha
    return np.round(image * 255.0).astype(np.uint8)


@pytest.mark.parametrize(
    ("shape", "cam_shape", "keep_aspect"),
    [((2048, 2048), (7, 7), True), ((1250, 1024), (8, 8), True), ((300, 200), (28, 28), False)],
)
def test_heatmap_is_within_one_level_of_the_float_blend(
    shape: tuple[int, int], cam_shape: tuple[int, int], keep_aspect: bool
) -> None:
    rng = np.random.default_rng(sum(shape))
    display = display_image_of(rng.random(shape), 1024)
    cam = rng.random(cam_shape).astype(np.float32)
    cam[: cam_shape[0] // 2] = 0.0  # the model looked at the lower half only

    rendered = render_heatmap(display, cam, keep_aspect=keep_aspect, lines=LINES, threshold=0.42)

    image = rendered.pixels[rendered.banner_rows :].astype(np.int16)
    reference = _float_blend(display.pixels, cam, shape, keep_aspect).astype(np.int16)
    difference = np.abs(image - reference)
    assert difference.max() <= 1
    # where the CAM is 0 the gray is drawn as it is: the same bytes
    cold = _float_bilinear(
        cam.astype(np.float64), *_centres(shape, display.pixels.shape, cam_shape, keep_aspect)
    )
    assert np.array_equal(image[cold == 0], reference[cold == 0]) and (cold == 0).any()


def _centres(
    source: tuple[int, int], out: tuple[int, int], cam_shape: tuple[int, int], keep_aspect: bool
) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = source
    y = (np.arange(out[0]) + 0.5) * rows / out[0]
    x = (np.arange(out[1]) + 0.5) * cols / out[1]
    if keep_aspect:
        side = max(rows, cols)
        y, x = (y + (side - rows) // 2) / side, (x + (side - cols) // 2) / side
    else:
        y, x = y / rows, x / cols
    return y * cam_shape[0] - 0.5, x * cam_shape[1] - 0.5


def test_blend_table_rows_are_the_float_formula_at_their_levels() -> None:
    table = blend_table()
    assert table.shape == (256 * HEAT_LEVELS, 3) and table.dtype == np.uint8 and not table.flags.writeable
    for g, h in [(0, 0), (255, 0), (128, HEAT_LEVELS - 1), (37, 400), (200, 777)]:
        gray, heat = g / 255.0, h / (HEAT_LEVELS - 1)
        alpha = ALPHA_MAX * heat
        expected = np.round((gray * (1.0 - alpha) + jet(np.array(heat)) * alpha) * 255.0).astype(np.uint8)
        assert table[g * HEAT_LEVELS + h].tolist() == expected.tolist()


def test_a_large_radiograph_sc_is_shrunk_to_1024_and_still_validates(
    results_phantom: Callable[..., pydicom.Dataset],
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
) -> None:
    source = results_phantom(3, True, size=1100)
    sc = build_heatmap_sc(source, np.eye(8, dtype=np.float32), Finding(0.87, 0.42), results_card)
    assert int(sc.Columns) == 1024 and int(sc.Rows) > 1024
    assert dciodvfy_errors(sc) == []
