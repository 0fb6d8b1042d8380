"""The one plot the monitoring report does not draw: measures over time with their intervals.

Server-rendered SVG in the style of :mod:`dicomnode.ops.report` (which draws the score histogram,
PSI per day and the confusion counts; the model page uses those as they are).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

_FONT = 'font-family="sans-serif" font-size="11"'
#: colours of the series, in order (the report's observed blue and line orange first)
COLOURS = ("#1f6fb2", "#c2410c", "#15803d", "#7c3aed")


@dataclass(frozen=True)
class Series:
    """One measure per period: value with its interval; NaN where there was nothing to measure."""

    name: str
    values: Sequence[float]
    low: Sequence[float]
    high: Sequence[float]


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def measures_svg(periods: Sequence[str], series: Sequence[Series], title: str) -> str:
    """Lines of proportions (0-1) per period, each point with its interval as a vertical bar."""
    w, h, left, right, top, bottom = 520, 240, 44, 12, 28, 40
    pw, ph = w - left - right, h - top - bottom
    n = len(periods)
    xs = [left + pw * (i + 0.5) / n for i in range(n)] if n else []

    def y_of(v: float) -> float:
        return top + ph - ph * min(max(v, 0.0), 1.0)

    body = [f'<text x="{left}" y="16" {_FONT} font-weight="bold">{_esc(title)}</text>']
    for k in range(5):
        v = k / 4
        y = y_of(v)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" {_FONT} text-anchor="end">{v:.2f}</text>')
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    any_point = False
    for j, s in enumerate(series):
        colour = COLOURS[j % len(COLOURS)]
        shift = (j - (len(series) - 1) / 2) * 4  # side by side, so the bars do not hide each other
        points = []
        for x, v, lo, hi in zip(xs, s.values, s.low, s.high, strict=True):
            if math.isnan(v):
                continue
            any_point = True
            points.append((x + shift, y_of(v)))
            if not (math.isnan(lo) or math.isnan(hi)):
                body.append(
                    f'<line x1="{x + shift:.1f}" x2="{x + shift:.1f}" y1="{y_of(lo):.1f}" y2="{y_of(hi):.1f}" '
                    f'stroke="{colour}" stroke-opacity="0.5"/>'
                )
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for x, y in points:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
        lx, ly = left + 8 + 110 * j, top + 4
        body.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colour}"/>')
        body.append(f'<text x="{lx + 14}" y="{ly + 9}" {_FONT}>{_esc(s.name)}</text>')
    step = max(1, math.ceil(n / 6))
    for i in range(0, n, step):
        body.append(
            f'<text x="{xs[i]:.1f}" y="{top + ph + 14}" {_FONT} text-anchor="middle">{_esc(periods[i])}</text>'
        )
    if not any_point:
        body.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" {_FONT} text-anchor="middle">'
            "no radiologist reads imported for this window</text>"
        )
    body.append(
        f'<text x="{left + pw / 2}" y="{h - 6}" {_FONT} text-anchor="middle">week starting (UTC)</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        f'role="img" aria-label="{_esc(title)}"><title>{_esc(title)}</title>'
        f'<rect width="{w}" height="{h}" fill="white"/>' + "".join(body) + "</svg>\n"
    )


__all__ = ["COLOURS", "Series", "measures_svg"]
