"""PNG charts drawn in numpy: lines, markers, bars, axes with ticks and labels, a legend.

Enough for the training report (ROC, precision-recall, reliability diagram, training curves,
score histograms) without matplotlib, which the node does not install: a raster canvas, a 5x7
bitmap font (upper case, digits and common punctuation; lower case is drawn upper case) and a
PNG encoder on :mod:`zlib`. Charts are :class:`Chart` objects; :meth:`Chart.png` returns the
file's bytes.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.results.font import GLYPH_HEIGHT, text_mask, text_width

Color = tuple[int, int, int]
#: x or y values of a series: a sequence of floats or a 1-D array
Values = Sequence[float] | np.ndarray

#: series colours, in order (the colour-blind-safe "tableau" palette)
PALETTE: tuple[Color, ...] = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
BLACK: Color = (0, 0, 0)
GREY: Color = (150, 150, 150)
LIGHT: Color = (225, 225, 225)
WHITE: Color = (255, 255, 255)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG file bytes of an 8-bit RGB image ``[H, W, 3]`` (colour type 2, no filtering)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


class Canvas:
    """An RGB raster; coordinates are pixels, x to the right, y down."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.pixels[:] = background

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def _stamp(self, xs: np.ndarray, ys: np.ndarray, color: Color, radius: float) -> None:
        r = int(math.ceil(radius))
        offsets = [
            (dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if dx * dx + dy * dy <= radius**2
        ]
        xi, yi = np.rint(xs).astype(np.int64), np.rint(ys).astype(np.int64)
        for dx, dy in offsets:
            x, y = xi + dx, yi + dy
            ok = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
            self.pixels[y[ok], x[ok]] = color

    def polyline(self, xs: Values, ys: Values, color: Color, width: float = 2.0, dash: int = 0) -> None:
        """Connected line segments through the points; ``dash > 0`` draws dashes that long."""
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size == 0:
            return
        if x.size == 1:
            self._stamp(x, y, color, width / 2)
            return
        seg = np.hypot(np.diff(x), np.diff(y))
        px, py, arc = [], [], []
        start = 0.0
        for i, length in enumerate(seg):
            n = max(2, int(math.ceil(length * 2)) + 1)
            t = np.linspace(0.0, 1.0, n)
            px.append(x[i] + t * (x[i + 1] - x[i]))
            py.append(y[i] + t * (y[i + 1] - y[i]))
            arc.append(start + t * length)
            start += length
        ax, ay, s = np.concatenate(px), np.concatenate(py), np.concatenate(arc)
        if dash > 0:
            on = (s // dash) % 2 == 0
            ax, ay = ax[on], ay[on]
        self._stamp(ax, ay, color, max(0.5, width / 2))

    def markers(self, xs: Values, ys: Values, color: Color, radius: float = 4.0) -> None:
        """Filled discs at the points."""
        x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y)
        self._stamp(x[keep], y[keep], color, radius)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color: Color) -> None:
        """Filled axis-aligned rectangle between the corners (inclusive, clipped)."""
        xa, xb = sorted((int(round(x0)), int(round(x1))))
        ya, yb = sorted((int(round(y0)), int(round(y1))))
        xa, ya = max(xa, 0), max(ya, 0)
        xb, yb = min(xb, self.width - 1), min(yb, self.height - 1)
        if xa <= xb and ya <= yb:
            self.pixels[ya : yb + 1, xa : xb + 1] = color

    def text(
        self, x: float, y: float, text: str, color: Color = BLACK, scale: int = 1, anchor: str = "left"
    ) -> None:
        """Draw ``text`` with its top at ``y``; ``anchor`` is where ``x`` lies: left, centre, right."""
        text = text.upper()
        w = text_width(text, scale)
        left = int(round(x - {"left": 0, "centre": w / 2, "right": w}[anchor]))
        top = int(round(y))
        ys, xs = np.nonzero(text_mask(text, scale))
        xs, ys = xs + left, ys + top
        ok = (xs >= 0) & (xs < self.width) & (ys >= 0) & (ys < self.height)
        self.pixels[ys[ok], xs[ok]] = color

    def vertical_text(self, x: float, y: float, text: str, color: Color = BLACK, scale: int = 1) -> None:
        """``text`` rotated a quarter turn anticlockwise, centred on ``y``, its left edge at ``x``."""
        w, h = text_width(text.upper(), scale), GLYPH_HEIGHT * scale
        tmp = Canvas(w, h, WHITE)
        tmp.text(0, 0, text, BLACK, scale)
        ink = np.rot90(np.any(tmp.pixels != 255, axis=2))
        ys, xs = np.nonzero(ink)
        xs, ys = xs + int(round(x)), ys + int(round(y - w / 2))
        ok = (xs >= 0) & (xs < self.width) & (ys >= 0) & (ys < self.height)
        self.pixels[ys[ok], xs[ok]] = color

    def png(self) -> bytes:
        """The canvas as PNG file bytes."""
        return encode_png(self.pixels)


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """About ``target`` round tick values (1, 2, 2.5 or 5 times a power of ten apart) within
    [lo, hi]; ``integer`` keeps whole-number steps (epochs)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    steps = [m * mag for m in (1, 2, 2.5, 5, 10)]
    if integer:
        steps = [s for s in steps if s >= 1 and float(s).is_integer()] or [1.0]
    step = next((s for s in steps if s >= raw), steps[-1])
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _label(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    if step > 0 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1  # 2.5-steps need one more digit
    return f"{v:.{decimals}f}"


@dataclass
class Series:
    """One curve (or bar set) of a chart."""

    x: Values
    y: Values
    label: str = ""
    color: Color | None = None
    #: "line", "line+markers", "markers", "bars" (bars of width ``bar_width`` centred on x)
    style: str = "line"
    width: float = 2.0
    dash: int = 0
    bar_width: float = 0.1


@dataclass
class Chart:
    """Axes, series and legend; :meth:`png` renders them."""

    title: str
    xlabel: str
    ylabel: str
    xlim: tuple[float, float] = (0.0, 1.0)
    ylim: tuple[float, float] = (0.0, 1.0)
    series: list[Series] = field(default_factory=list)
    width: int = 560
    height: int = 440
    #: whole-number ticks on the x axis (epochs)
    x_integer: bool = False
    #: where the legend goes: "lower right", "upper right", "upper left", "lower left", "upper centre"
    legend: str = "lower right"

    def add(self, series: Series) -> Chart:
        """Append a series (its colour from :data:`PALETTE` if unset); returns the chart."""
        if series.color is None:
            used = sum(1 for s in self.series if s.label and s.style != "bars")
            series.color = PALETTE[used % len(PALETTE)]
        self.series.append(series)
        return self

    def render(self) -> Canvas:
        """Draw the chart on a new canvas."""
        c = Canvas(self.width, self.height)
        left, right, top, bottom = 78, self.width - 18, 44, self.height - 58
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"chart {self.title!r}: empty limits x={self.xlim} y={self.ylim}")

        def px(v: Any) -> Any:  # data x (scalar or array) to pixels
            return left + (np.asarray(v, dtype=np.float64) - x0) / (x1 - x0) * (right - left)

        def py(v: Any) -> Any:  # data y to pixels
            return bottom - (np.asarray(v, dtype=np.float64) - y0) / (y1 - y0) * (bottom - top)

        xt, yt = nice_ticks(x0, x1, integer=self.x_integer), nice_ticks(y0, y1)
        for v in xt:
            c.polyline([px(v)] * 2, [top, bottom], LIGHT, 1)
        for v in yt:
            c.polyline([left, right], [py(v)] * 2, LIGHT, 1)
        for s in self.series:  # bars under lines
            if s.style == "bars":
                color = s.color or GREY
                for xv, yv in zip(s.x, s.y, strict=True):
                    if np.isfinite(yv) and yv > 0:
                        c.rect(
                            px(xv - s.bar_width / 2) + 1,
                            py(min(yv, y1)),
                            px(xv + s.bar_width / 2) - 1,
                            bottom,
                            color,
                        )
        with np.errstate(invalid="ignore"):
            for s in self.series:
                if s.style == "bars":
                    continue
                color = s.color or BLACK
                xs, ys = (
                    px(np.asarray(s.x, dtype=np.float64)),
                    py(np.clip(np.asarray(s.y, dtype=np.float64), y0, y1)),
                )
                if "line" in s.style:
                    c.polyline(xs, ys, color, s.width, s.dash)
                if "markers" in s.style:
                    c.markers(xs, ys, color, 2.0 + s.width)
        # frame, ticks, labels
        c.polyline([left, right, right, left, left], [top, top, bottom, bottom, top], BLACK, 1)
        xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
        ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
        for v in xt:
            c.polyline([px(v)] * 2, [bottom, bottom + 4], BLACK, 1)
            c.text(float(px(v)), bottom + 8, _label(v, xstep), anchor="centre", scale=1)
        for v in yt:
            c.polyline([left - 4, left], [py(v)] * 2, BLACK, 1)
            c.text(left - 8, float(py(v)) - 3, _label(v, ystep), anchor="right", scale=1)
        c.text((left + right) / 2, 12, self.title, anchor="centre", scale=2)
        c.text((left + right) / 2, bottom + 26, self.xlabel, anchor="centre", scale=2)
        c.vertical_text(10, (top + bottom) / 2, self.ylabel, scale=2)
        self._legend(c, left, right, top, bottom)
        return c

    def _legend(self, c: Canvas, left: int, right: int, top: int, bottom: int) -> None:
        items = [s for s in self.series if s.label]
        if not items:
            return
        w = max(text_width(s.label.upper()) for s in items) + 34
        h = len(items) * 14 + 8
        if "right" in self.legend:
            x = right - w - 8
        elif "centre" in self.legend:
            x = (left + right - w) // 2
        else:
            x = left + 8
        y = bottom - h - 8 if "lower" in self.legend else top + 8
        c.rect(x, y, x + w, y + h, WHITE)
        c.polyline([x, x + w, x + w, x, x], [y, y, y + h, y + h, y], GREY, 1)
        for i, s in enumerate(items):
            yy = y + 8 + i * 14
            color = s.color or BLACK
            if s.style == "bars":
                c.rect(x + 6, yy, x + 22, yy + 6, color)
            else:
                c.polyline([x + 6, x + 22], [yy + 3, yy + 3], color, s.width, s.dash // 2)
            c.text(x + 28, yy, s.label)

    def png(self) -> bytes:
        """PNG file bytes of the rendered chart."""
        return self.render().png()

    def save(self, path: Path) -> Path:
        """Write the PNG to ``path`` and return it."""
        path = Path(path)
        path.write_bytes(self.png())
        return path


__all__ = ["PALETTE", "Canvas", "Chart", "Series", "encode_png", "nice_ticks"]
