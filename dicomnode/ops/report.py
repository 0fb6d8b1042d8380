"""The monitoring report: Markdown and HTML with SVG plots (no plotting library).

``dicomnode monitor --report DIR`` writes ``DIR/report.md`` (plots as ``DIR/*.svg``) and
``DIR/report.html`` (the same, plots inline) from a :class:`~dicomnode.ops.monitor.MonitorResult`:
per model version the score histogram against the validation baseline, PSI per day, and the
confusion counts against radiologists' reads with sensitivity, specificity, PPV and NPV.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dicomnode.model.histogram import SCORE_BIN_EDGES
from dicomnode.ops.drift import PSI_BANDS
from dicomnode.ops.monitor import MonitorResult
from dicomnode.ops.performance import PerformanceRow
from dicomnode.ops.tables import table_cells

_BASE_COLOUR, _OBS_COLOUR, _LINE_COLOUR = "#9aa5b1", "#1f6fb2", "#c2410c"
_FONT = 'font-family="sans-serif" font-size="11"'


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">'
        f"<title>{_esc(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="white"/>' + "".join(body) + "</svg>\n"
    )


def histogram_svg(
    observed: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray | None, title: str
) -> str:
    """Grouped bars: share of scores per bin, observed beside the baseline (if any)."""
    w, h, left, right, top, bottom = 520, 260, 44, 12, 28, 40
    pw, ph = w - left - right, h - top - bottom
    obs = np.asarray(observed, dtype=float)
    base = None if baseline is None else np.asarray(baseline, dtype=float)
    peak = max(float(obs.max(initial=0)), float(base.max(initial=0)) if base is not None else 0.0, 1e-9)
    ymax = min(1.0, math.ceil(peak * 10 + 0.5) / 10)
    n = len(obs)
    slot = pw / n
    body = [f'<text x="{left}" y="16" {_FONT} font-weight="bold">{_esc(title)}</text>']
    for k in range(5):  # y grid
        v = ymax * k / 4
        y = top + ph - ph * v / ymax
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" {_FONT} text-anchor="end">{v:.2f}</text>')
    series = [(base, _BASE_COLOUR, 0)] if base is not None else []
    series.append((obs, _OBS_COLOUR, 1 if base is not None else 0))
    bar = slot * (0.4 if base is not None else 0.8)
    for values, colour, offset in series:
        for i, v in enumerate(values):
            bh = ph * float(v) / ymax
            x = left + i * slot + slot * 0.1 + offset * bar
            body.append(
                f'<rect x="{x:.1f}" y="{top + ph - bh:.1f}" width="{bar:.1f}" height="{bh:.1f}" fill="{colour}"/>'
            )
    for i, edge in enumerate(SCORE_BIN_EDGES):
        x = left + i * slot
        body.append(f'<text x="{x:.1f}" y="{top + ph + 14}" {_FONT} text-anchor="middle">{edge:.1f}</text>')
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    body.append(f'<text x="{left + pw / 2}" y="{h - 6}" {_FONT} text-anchor="middle">score</text>')
    legend = [("validation baseline", _BASE_COLOUR)] if base is not None else []
    legend.append(("this window", _OBS_COLOUR))
    for j, (label, colour) in enumerate(legend):
        x = left + pw - 150
        y = top + 4 + 14 * j
        body.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>')
        body.append(f'<text x="{x + 14}" y="{y + 9}" {_FONT}>{label}</text>')
    return _svg(w, h, body, title)


def psi_svg(days: Sequence[str], values: Sequence[float | None], title: str) -> str:
    """PSI per day as a line with the 0.1 and 0.25 bands dashed."""
    w, h, left, right, top, bottom = 520, 240, 44, 12, 28, 40
    pw, ph = w - left - right, h - top - bottom
    known = [v for v in values if v is not None]
    ymax = max(0.3, max(known, default=0.0) * 1.1)
    body = [f'<text x="{left}" y="16" {_FONT} font-weight="bold">{_esc(title)}</text>']

    def y_of(v: float) -> float:
        return top + ph - ph * min(v, ymax) / ymax

    for k in range(5):  # y grid
        v = ymax * k / 4
        y = y_of(v)
        body.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        body.append(f'<text x="{left - 4}" y="{y + 4:.1f}" {_FONT} text-anchor="end">{v:.2g}</text>')
    spread = ph * (PSI_BANDS[1] - PSI_BANDS[0]) / ymax  # pixels between the two band lines
    for band, name in zip(PSI_BANDS, ("moderate", "major"), strict=True):
        y = y_of(band)
        body.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#9ca3af" stroke-dasharray="4 3"/>'
        )
        if spread >= 12:  # room to label the bands
            body.append(
                f'<text x="{left + pw - 2}" y="{y - 3:.1f}" {_FONT} text-anchor="end">{name} {band:g}</text>'
            )
    body.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    n = len(days)
    xs = [left + (pw * (i + 0.5) / n if n else 0) for i in range(n)]
    points = [(x, y_of(v)) for x, v in zip(xs, values, strict=True) if v is not None]
    if len(points) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        body.append(f'<polyline points="{path}" fill="none" stroke="{_LINE_COLOUR}" stroke-width="1.5"/>')
    for x, y in points:
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_LINE_COLOUR}"/>')
    step = max(1, math.ceil(n / 6))
    for i in range(0, n, step):
        body.append(
            f'<text x="{xs[i]:.1f}" y="{top + ph + 14}" {_FONT} text-anchor="middle">{_esc(days[i])}</text>'
        )
    if not n:
        body.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" {_FONT} text-anchor="middle">no scores</text>'
        )
    body.append(f'<text x="{left + pw / 2}" y="{h - 6}" {_FONT} text-anchor="middle">day (UTC)</text>')
    return _svg(w, h, body, title)


def confusion_svg(row: PerformanceRow, title: str) -> str:
    """The 2x2 confusion counts: rows the radiologist's read, columns the model's call."""
    w, h, left, top, cell = 360, 230, 120, 48, 80
    cells = [[("TP", row.tp), ("FN", row.fn)], [("FP", row.fp), ("TN", row.tn)]]
    peak = max(1, row.tp, row.fn, row.fp, row.tn)
    body = [f'<text x="10" y="16" {_FONT} font-weight="bold">{_esc(title)}</text>']
    body.append(f'<text x="{left + cell}" y="{top - 22}" {_FONT} text-anchor="middle">model</text>')
    for j, label in enumerate(("positive", "negative")):
        body.append(
            f'<text x="{left + cell * j + cell / 2}" y="{top - 6}" {_FONT} text-anchor="middle">{label}</text>'
        )
    for i, label in enumerate(("read positive", "read negative")):
        body.append(
            f'<text x="{left - 8}" y="{top + cell * i + cell / 2 + 4}" {_FONT} text-anchor="end">{label}</text>'
        )
        for j, (name, n) in enumerate(cells[i]):
            shade = int(245 - 150 * n / peak)
            fill = f"rgb({shade},{shade + 5 if shade < 250 else 250},{255})"
            x, y = left + cell * j, top + cell * i
            body.append(
                f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="black"/>'
            )
            body.append(
                f'<text x="{x + cell / 2}" y="{y + cell / 2 - 2}" {_FONT} text-anchor="middle">{name}</text>'
            )
            body.append(
                f'<text x="{x + cell / 2}" y="{y + cell / 2 + 14}" {_FONT} text-anchor="middle" '
                f'font-weight="bold">{n}</text>'
            )
    return _svg(w, h, body, title)


@dataclass(frozen=True)
class PerformanceText:
    """A :class:`~dicomnode.ops.performance.PerformanceRow` for a terminal: each measure with its CI."""

    model_version: str
    threshold: float | None
    studies: int
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: str
    specificity: str
    ppv: str
    npv: str


def performance_text(rows: Sequence[PerformanceRow]) -> list[PerformanceText]:
    """Measures as ``0.900 (0.781-0.958)``: the value and its 95% Wilson interval."""
    return [
        PerformanceText(
            p.model_version,
            p.threshold,
            p.studies,
            p.tp,
            p.fp,
            p.tn,
            p.fn,
            _fmt_ci(p.sensitivity, p.sensitivity_low, p.sensitivity_high),
            _fmt_ci(p.specificity, p.specificity_low, p.specificity_high),
            _fmt_ci(p.ppv, p.ppv_low, p.ppv_high),
            _fmt_ci(p.npv, p.npv_low, p.npv_high),
        )
        for p in rows
    ]


@dataclass(frozen=True)
class _Plot:
    name: str
    svg: str
    caption: str


def _slug(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", version)[:80]


def _fmt_ci(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f} ({low:.3f}-{high:.3f})"


def _window_text(result: MonitorResult) -> str:
    def one(at: datetime | None, default: str) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at else default

    return (
        f"{one(result.since, 'the beginning')} to {one(result.until, 'now')} (UTC, by analysis finish time)"
    )


def _sections(result: MonitorResult) -> list[tuple[str, list[_Plot], str]]:
    """Per model version: heading, plots and a Markdown performance table."""
    perf = {p.model_version: p for p in result.performance}
    out = []
    for row in result.drift:
        v = row.model_version
        counts = result.counts.get(v, np.zeros(len(SCORE_BIN_EDGES) - 1))
        shares = counts / max(1, counts.sum())
        base = result.baselines.get(v)
        plots = [
            _Plot(
                f"scores_{_slug(v)}.svg",
                histogram_svg(shares, None if base is None else base.shares, f"Scores of {v}"),
                f"Share of scores per bin, {row.analyses} analyses"
                + (f", against {base.source}" if base else " (no validation baseline known)"),
            )
        ]
        days = [d for d in result.daily if d.model_version == v]
        if base is not None:
            plots.append(
                _Plot(
                    f"psi_{_slug(v)}.svg",
                    psi_svg([d.day for d in days], [d.psi for d in days], f"PSI per day, {v}"),
                    "PSI per day against the validation baseline (dashed: 0.1 and 0.25)",
                )
            )
        text = "No radiologist reads of studies this version analysed in the window."
        if v in perf:
            p = perf[v]
            plots.append(
                _Plot(
                    f"confusion_{_slug(v)}.svg", confusion_svg(p, f"Against reads, {v}"), "Confusion counts"
                )
            )
            thr = "-" if p.threshold is None else f"{p.threshold:.4f}"
            text = "\n".join(
                [
                    f"{p.studies} studies with a read; threshold {thr} (model card operating point).",
                    "",
                    "| measure | value (95% Wilson CI) | counts |",
                    "|---|---|---|",
                    f"| sensitivity | {_fmt_ci(p.sensitivity, p.sensitivity_low, p.sensitivity_high)} | TP {p.tp} / (TP+FN) {p.tp + p.fn} |",
                    f"| specificity | {_fmt_ci(p.specificity, p.specificity_low, p.specificity_high)} | TN {p.tn} / (TN+FP) {p.tn + p.fp} |",
                    f"| PPV | {_fmt_ci(p.ppv, p.ppv_low, p.ppv_high)} | TP {p.tp} / (TP+FP) {p.tp + p.fp} |",
                    f"| NPV | {_fmt_ci(p.npv, p.npv_low, p.npv_high)} | TN {p.tn} / (TN+FN) {p.tn + p.fn} |",
                ]
            )
        out.append((v, plots, text))
    return out


def _md_table(rows: Sequence[object]) -> str:
    names, cells = table_cells(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in cells])


def write_report(result: MonitorResult, out_dir: Path, *, now: datetime | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and the SVG plots into ``out_dir``; returns the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(timezone.utc)
    sections = _sections(result)
    drift_table = _md_table(result.drift) if result.drift else "No scored analyses in the window."
    md = [
        "# dicomnode model monitoring",
        "",
        f"Window: {_window_text(result)}. Generated {now.strftime('%Y-%m-%d %H:%M')} UTC.",
        "",
        "## Score drift against the validation baseline",
        "",
        f"PSI over ten equal score bins; below {PSI_BANDS[0]} stable, {PSI_BANDS[0]}-{PSI_BANDS[1]} "
        f"moderate shift, above {PSI_BANDS[1]} major shift.",
        "",
        drift_table,
        "",
    ]
    body = [
        "<h1>dicomnode model monitoring</h1>",
        f"<p>Window: {_esc(_window_text(result))}. Generated {now.strftime('%Y-%m-%d %H:%M')} UTC.</p>",
        "<h2>Score drift against the validation baseline</h2>",
        f"<p>PSI over ten equal score bins; below {PSI_BANDS[0]} stable, {PSI_BANDS[0]}-{PSI_BANDS[1]} "
        f"moderate shift, above {PSI_BANDS[1]} major shift.</p>",
        _html_table(result.drift),
    ]
    for version, plots, perf_text in sections:
        md += [f"## Model version {version}", ""]
        body.append(f"<h2>Model version {_esc(version)}</h2>")
        for p in plots:
            (out_dir / p.name).write_text(p.svg)
            md += [f"![{p.caption}]({p.name})", "", f"*{p.caption}*", ""]
            body.append(f"<figure>{p.svg}<figcaption>{_esc(p.caption)}</figcaption></figure>")
        md += ["### Against radiologists' reads", "", perf_text, ""]
        body.append("<h3>Against radiologists' reads</h3>" + _md_to_html(perf_text))
    (out_dir / "report.md").write_text("\n".join(md))
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>dicomnode model monitoring</title>'
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}figure{margin:1em 0}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path


def _html_table(rows: Sequence[object]) -> str:
    md = _md_table(rows) if rows else ""
    return _md_to_html(md) if md else "<p>No scored analyses in the window.</p>"


def _md_to_html(text: str) -> str:
    """The small Markdown subset this module writes: paragraphs and pipe tables."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                table.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = table
            out.append(
                "<table><tr>"
                + "".join(f"<th>{_esc(c)}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )
            table = []
        if line.strip():
            out.append(f"<p>{_esc(line)}</p>")
    return "\n".join(out)


__all__ = ["PerformanceText", "confusion_svg", "histogram_svg", "performance_text", "psi_svg", "write_report"]
