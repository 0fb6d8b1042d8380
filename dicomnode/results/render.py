"""Pixels of the heatmap Secondary Capture: the radiograph, the CAM in colour, a banner.

Pure numpy. The radiograph is windowed exactly as the model saw it
(:func:`dicomnode.model.preprocess.to_unit_image`: rescale, the dataset's VOI or percentiles,
MONOCHROME1 inverted so air is dark), shrunk by area averaging, and the class-activation map is
sampled bilinearly through the same geometry the preprocessing used (centred square padding
when ``keep_aspect``), so hot spots sit on the anatomy the model looked at.

The blend is one table lookup per pixel: the radiograph as 8-bit gray and the CAM in
:data:`HEAT_LEVELS` steps index :func:`blend_table`, which holds :func:`jet` blended over each
gray level exactly as the float formula does. An 8-bit output cannot show the gray more finely;
the CAM steps move a colour by at most one level of 255 (tests/unit/test_results_render_fast.py).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicomnode.model.decode import gray_levels
from dicomnode.model.preprocess import (
    DisplayImage,
    PreprocessConfig,
    display_image_of,
    display_shape,
    to_unit_image,
)
from dicomnode.results.font import GLYPH_HEIGHT, text_mask, text_width

__all__ = [
    "HEAT_LEVELS",
    "MAX_SIDE",
    "MIN_WIDTH",
    "Rendered",
    "blend_table",
    "display_image",
    "jet",
    "render_heatmap",
]

#: Longest side of the SC image; larger radiographs are shrunk to keep the SC small.
MAX_SIDE = 1024
#: Narrower radiographs are enlarged (pixel replication) so the banner text fits across them.
MIN_WIDTH = 160
#: Opacity of the colour where the CAM is 1 (it fades to 0 with the CAM).
ALPHA_MAX = 0.5
#: Largest text scale (pixels per font pixel).
_MAX_SCALE = 6
#: Steps of the CAM in the blend table (10 bits: a step moves a colour by under 1/255).
HEAT_LEVELS = 1024

_PAPER = np.array([0.08, 0.08, 0.08])
_WARNING_INK = np.array([1.0, 0.85, 0.0])
_INK = np.array([1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Rendered:
    """The SC pixel array and where the radiograph lies in it."""

    #: uint8 [rows, cols, 3] RGB: banner rows on top, then the radiograph
    pixels: np.ndarray
    #: rows of banner above the radiograph
    banner_rows: int
    #: source pixels per SC pixel along rows and columns (> 1 shrunk, < 1 enlarged)
    zoom: tuple[float, float]


def jet(x: np.ndarray) -> np.ndarray:
    """Jet-like colormap: [0, 1] -> RGB in [0, 1] (blue, cyan, yellow, red); shape + (3,)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where R, G, B peak
    return np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)


def display_image(source: Dataset, preprocess: dict[str, object]) -> np.ndarray:
    """The radiograph in [0, 1] with air dark, windowed as the model's preprocessing does."""
    config = PreprocessConfig.from_dict(preprocess) if preprocess else PreprocessConfig()
    # a shallow copy: decoding caches the pixel array on the dataset it is called on
    return to_unit_image(copy.copy(source), config)


def render_heatmap(
    unit: np.ndarray | DisplayImage,
    cam: np.ndarray,
    *,
    keep_aspect: bool,
    lines: list[str],
    threshold: float,
    max_side: int = MAX_SIDE,
) -> Rendered:
    """Blend ``cam`` over the [0, 1] radiograph ``unit`` and add a banner of ``lines``.

    ``cam`` is the model's map over its input square: with ``keep_aspect`` that square is
    ``unit`` padded (centred) to ``max(rows, cols)``, else ``unit`` stretched. The first line is
    drawn in warning yellow, the rest in white; under them a colour legend from 0 to 1 with a
    white tick at ``threshold``. ``unit`` may come already shrunk, as a
    :class:`~dicomnode.model.preprocess.DisplayImage` made with the same ``max_side`` where the
    image was decoded (the worker's decoding process), its pixels in [0, 1] or already uint8
    :func:`~dicomnode.model.decode.gray_levels` (as the decoding process sends them): the result is
    the same.
    """
    if isinstance(unit, DisplayImage):
        display = unit
        if display.pixels.shape != display_shape(*display.source_shape, max_side):
            raise ValueError(
                f"display image of shape {display.pixels.shape} was not shrunk to max_side={max_side} "
                f"from {display.source_shape}"
            )
    else:
        display = display_image_of(unit, max_side)
    cam = _as_cam(cam)
    rows, cols = display.source_shape
    out_rows, out_cols = display.pixels.shape
    # the radiograph as 8-bit gray, the blend table's row: sent so by the decoding process
    sent = isinstance(unit, DisplayImage) and display.pixels.dtype == np.uint8
    gray = display.pixels if sent else gray_levels(display.pixels)
    if (out_rows, out_cols) == (rows, cols) and cols < MIN_WIDTH:
        k = -(-MIN_WIDTH // cols)
        out_rows, out_cols = rows * k, cols * k
        gray = np.repeat(np.repeat(gray, k, axis=0), k, axis=1)
    heat = _cam_on_image(cam, (rows, cols), (out_rows, out_cols), keep_aspect)
    banner = _banner(out_cols, lines, threshold)
    pixels = np.empty((banner.shape[0] + out_rows, out_cols, 3), dtype=np.uint8)
    pixels[: banner.shape[0]] = _to_uint8(banner)
    # (gray level, CAM step) -> RGB: uint32 indices into a 3 MiB table, no float RGB image
    index = gray.astype(np.uint32)
    index *= HEAT_LEVELS
    index += np.rint(heat * np.float32(HEAT_LEVELS - 1)).astype(np.uint32)
    np.take(blend_table(), index, axis=0, out=pixels[banner.shape[0] :], mode="clip")
    return Rendered(pixels=pixels, banner_rows=banner.shape[0], zoom=(rows / out_rows, cols / out_cols))


@functools.cache
def blend_table() -> np.ndarray:
    """uint8 [256 * HEAT_LEVELS, 3]: row ``g * HEAT_LEVELS + h`` is gray ``g / 255`` with
    :func:`jet` of ``h / (HEAT_LEVELS - 1)`` blended over it at opacity ``ALPHA_MAX * h``, as
    :func:`render_heatmap` draws it (built once per process, read-only)."""
    gray = (np.arange(256) / 255.0)[:, None, None]
    heat = np.arange(HEAT_LEVELS) / (HEAT_LEVELS - 1)
    alpha = (ALPHA_MAX * heat)[None, :, None]
    table = _to_uint8(gray * (1.0 - alpha) + jet(heat)[None] * alpha).reshape(-1, 3)
    table.flags.writeable = False
    return table


def _to_uint8(unit_rgb: np.ndarray) -> np.ndarray:
    return np.round(unit_rgb * 255.0).astype(np.uint8)


def _as_cam(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam, dtype=np.float32)
    while cam.ndim > 2 and cam.shape[0] == 1:
        cam = cam[0]
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a 2-D map (h, w), got shape {cam.shape}")
    return np.clip(np.nan_to_num(cam, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)


def _cam_on_image(
    cam: np.ndarray, source_shape: tuple[int, int], out_shape: tuple[int, int], keep_aspect: bool
) -> np.ndarray:
    """The CAM sampled at the centre of every output pixel, in the model input's geometry."""
    rows, cols = source_shape
    out_rows, out_cols = out_shape
    # output pixel centres in source pixel units
    y = (np.arange(out_rows) + 0.5) * rows / out_rows
    x = (np.arange(out_cols) + 0.5) * cols / out_cols
    if keep_aspect:  # dicomnode.model.preprocess.pad_to_square: integer pads, centred
        side = max(rows, cols)
        y = (y + (side - rows) // 2) / side
        x = (x + (side - cols) // 2) / side
    else:
        y, x = y / rows, x / cols
    h, w = cam.shape
    return _bilinear(cam, y * h - 0.5, x * w - 0.5)


def _bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``grid`` at rows ``ys`` x columns ``xs`` (index units, edges clamped), float32.

    Separable: ``weights(ys) @ grid @ weights(xs).T`` with two taps per row of each weight
    matrix, so the full-size map costs one small matrix product."""

    def weights(pos: np.ndarray, n: int) -> np.ndarray:
        pos = np.clip(pos, 0.0, n - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, n - 1)
        w = np.zeros((len(pos), n), dtype=np.float32)
        taps = np.arange(len(pos))
        w[taps, lo] = 1.0 - (pos - lo)
        w[taps, hi] += pos - lo  # at the clamped edge lo == hi: the weights add up to 1
        return w

    grid = np.asarray(grid, dtype=np.float32)
    return (weights(ys, grid.shape[0]) @ grid) @ weights(xs, grid.shape[1]).T


def _banner(cols: int, lines: list[str], threshold: float) -> np.ndarray:
    """Banner rows (float RGB) ``cols`` wide: text lines, then the colour legend."""
    widest = max((text_width(t) for t in lines), default=1)
    scale = int(np.clip((0.92 * cols) // max(widest, 1), 1, _MAX_SCALE))
    margin = 2 * scale
    line_h = GLYPH_HEIGHT * scale
    legend_h = 4 * scale
    height = margin + len(lines) * (line_h + margin) + line_h + margin
    banner = np.broadcast_to(_PAPER, (height, cols, 3)).copy()

    y = margin
    for i, text in enumerate(lines):
        _stamp(banner, text_mask(text, scale), y, margin, _WARNING_INK if i == 0 else _INK)
        y += line_h + margin

    # legend: "0" [gradient] "1", a white tick at the threshold
    label_w = text_width("0", scale)
    _stamp(banner, text_mask("0", scale), y, margin, _INK)
    right_label = cols - margin - label_w
    _stamp(banner, text_mask("1", scale), y, right_label, _INK)
    x0, x1 = margin + label_w + margin, right_label - margin
    if x1 - x0 >= 2:
        bar_top = y + (line_h - legend_h) // 2
        ramp = jet(np.linspace(0.0, 1.0, x1 - x0))
        banner[bar_top : bar_top + legend_h, x0:x1] = ramp[None]
        tick = x0 + int(round(threshold * (x1 - x0 - 1)))
        half = max(1, scale // 2)
        banner[y : y + line_h, max(x0, tick - half + 1) : tick + half] = _INK
    return banner


def _stamp(canvas: np.ndarray, mask: np.ndarray, top: int, left: int, ink: np.ndarray) -> None:
    """Paint ``mask`` in ``ink`` at (top, left), clipped to the canvas."""
    h = min(mask.shape[0], canvas.shape[0] - top)
    w = min(mask.shape[1], canvas.shape[1] - left)
    if h <= 0 or w <= 0:
        return
    region = canvas[top : top + h, left : left + w]
    region[mask[:h, :w]] = ink
