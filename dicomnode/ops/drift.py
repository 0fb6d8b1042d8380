"""Score drift in the field: a model version's scores against its validation baseline.

Drift is the population stability index (PSI) of the scores a model version produced in a
window against the score histogram of its validation set, over the bins training uses,
:data:`~dicomnode.model.histogram.SCORE_BIN_EDGES` (ten equal bins on [0, 1], 1.0 in the last)::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` and ``a_i`` are the baseline's and the window's share of scores in bin ``i``; a share
of 0 is replaced by :data:`PSI_EPSILON` so an empty bin gives a large, finite term. Conventional
reading: below 0.1 stable, 0.1-0.25 a moderate shift worth a look, above 0.25 a major shift.

The baseline comes from the model card (``card.metrics["val_score_histogram"]``, written by
:func:`~dicomnode.model.histogram.score_histogram` at export) or from a file (:func:`load_baseline`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Integer, case, cast, func, select

from dicomnode.model.histogram import SCORE_BIN_EDGES, score_histogram
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis

#: share that stands in for an empty bin (the usual PSI convention)
PSI_EPSILON = 1e-4
#: PSI bands: below the first "stable", below the second "moderate", else "major"
PSI_BANDS = (0.1, 0.25)
#: model card metrics key of the validation score histogram (``{"edges", "counts", "fractions"}``)
BASELINE_CARD_KEY = "val_score_histogram"
_BINS = len(SCORE_BIN_EDGES) - 1


# ------------------------------------------------------------------------------ statistics


def _counts(scores: Sequence[float], source: str) -> tuple[int, ...]:
    a = np.asarray(scores, dtype=float)
    if a.size == 0 or np.isnan(a).any() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"baseline from {source}: scores must be probabilities in [0, 1], at least one")
    return tuple(int(c) for c in score_histogram(a)["counts"])


def psi(
    expected: Sequence[float] | np.ndarray,
    actual: Sequence[float] | np.ndarray,
    *,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or shares per bin).

    Each is normalised to shares; shares below ``epsilon`` (empty bins) are raised to it.
    """
    e = np.asarray(expected, dtype=float)
    a = np.asarray(actual, dtype=float)
    if e.shape != a.shape or e.ndim != 1 or e.size < 2:
        raise ValueError(f"expected and actual need the same bins (got {e.shape} and {a.shape})")
    if (e < 0).any() or (a < 0).any():
        raise ValueError("bin counts cannot be negative")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("PSI needs at least one score on each side")
    e = np.maximum(e / e.sum(), epsilon)
    a = np.maximum(a / a.sum(), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_band(value: float | None) -> str:
    """``stable``, ``moderate`` or ``major`` (``-`` for no value)."""
    if value is None or math.isnan(value):
        return "-"
    return "stable" if value < PSI_BANDS[0] else "moderate" if value < PSI_BANDS[1] else "major"


# -------------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class Baseline:
    """Validation score counts in the ``SCORE_BIN_EDGES`` bins, and where they came from."""

    counts: tuple[int, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.counts) != _BINS or sum(self.counts) <= 0 or min(self.counts) < 0:
            raise ValueError(
                f"baseline from {self.source}: need {_BINS} non-negative counts with a "
                f"positive sum, got {list(self.counts)}"
            )

    @property
    def shares(self) -> np.ndarray:
        c = np.asarray(self.counts, dtype=float)
        return c / c.sum()


def _baseline_from_mapping(data: Any, source: str) -> Baseline:
    if isinstance(data, dict) and "scores" in data:
        return Baseline(_counts(data["scores"], source), source)
    if isinstance(data, dict) and "counts" in data:
        edges = [float(x) for x in data.get("edges", SCORE_BIN_EDGES)]
        if len(edges) != len(SCORE_BIN_EDGES) or not np.allclose(edges, SCORE_BIN_EDGES):
            raise ValueError(
                f"baseline from {source}: edges must be {list(SCORE_BIN_EDGES)} (ten equal bins on [0, 1]), got {edges}"
            )
        return Baseline(tuple(int(x) for x in data["counts"]), source)
    raise ValueError(
        f'baseline from {source}: expected {{"edges": [...], "counts": [...]}} or {{"scores": [...]}}'
    )


def baseline_from_card(card: Any) -> Baseline | None:
    """The validation score histogram in ``card.metrics`` (:data:`BASELINE_CARD_KEY`), if any."""
    metrics = getattr(card, "metrics", None) or {}
    data = metrics.get(BASELINE_CARD_KEY)
    if data is None:
        return None
    return _baseline_from_mapping(data, f"model card {card.name} {card.version}")


def load_baseline(path: Path) -> Baseline:
    """A baseline from a file: JSON ``{"edges": [...], "counts": [...]}`` or ``{"scores": [...]}``,
    or text with one validation score per line (a ``score`` header line is skipped)."""
    path = Path(path)
    text = path.read_text()
    source = str(path)
    if text.lstrip().startswith("{"):
        return _baseline_from_mapping(json.loads(text), source)
    scores = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        cell = line.split(",")[-1].strip()
        if not cell or (lineno == 1 and not cell[0].isdigit()):
            continue
        try:
            scores.append(float(cell))
        except ValueError:
            raise ValueError(f"{path} line {lineno}: {cell!r} is not a score") from None
    return Baseline(_counts(scores, source), source)


# -------------------------------------------------------------------------------- queries


def _bin(dialect: str) -> Any:
    scaled = Analysis.score * 10
    # SQLite's CAST truncates, which is floor for scores >= 0; PostgreSQL's CAST rounds
    raw = func.floor(scaled) if dialect == "postgresql" else cast(scaled, Integer)
    return case((Analysis.score >= 1.0, 9), else_=raw)


def _day(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", Analysis.finished_at), "YYYY-MM-DD")
    return func.substr(Analysis.finished_at, 1, 10)


def scored_in_window(since: datetime | None, until: datetime | None, model_version: str | None) -> list[Any]:
    """Conditions on :class:`Analysis`: scored, finished in ``since <= t < until``, of one version (or any)."""
    conds: list[Any] = [Analysis.score.is_not(None), Analysis.finished_at.is_not(None)]
    if since is not None:
        conds.append(Analysis.finished_at >= since.astimezone(timezone.utc))
    if until is not None:
        conds.append(Analysis.finished_at < until.astimezone(timezone.utc))
    if model_version is not None:
        conds.append(Analysis.model_version == model_version)
    return conds


@dataclass(frozen=True)
class DailyHistogram:
    """Scores of one model version on one day (by analysis finish time, UTC)."""

    model_version: str
    day: str
    counts: tuple[int, ...]


def daily_histograms(
    store: Store,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> list[DailyHistogram]:
    """Score histograms per model version and day, binned in SQL (ten rows a day at most)."""
    dialect = store.engine.dialect.name
    b, d = _bin(dialect).label("bin"), _day(dialect).label("day")
    stmt = (
        select(Analysis.model_version, d, b, func.count())
        .where(*scored_in_window(since, until, model_version))
        .group_by(Analysis.model_version, d, b)
    )
    acc: dict[tuple[str, str], list[int]] = {}
    with store.session() as s:
        for version, day, bin_, n in s.execute(stmt):
            counts = acc.setdefault((version, str(day)), [0] * _BINS)
            counts[min(max(int(bin_), 0), len(counts) - 1)] += int(n)
    return [DailyHistogram(v, day, tuple(c)) for (v, day), c in sorted(acc.items())]


@dataclass(frozen=True)
class DriftRow:
    """Scores of one model version in the window against its validation baseline."""

    model_version: str
    analyses: int
    mean_score: float
    positive_rate: float  # share at or above the card threshold
    psi: float | None  # None: no baseline for this version
    band: str
    baseline: str


@dataclass(frozen=True)
class DailyPsi:
    """PSI of one model version's scores on one day."""

    model_version: str
    day: str
    analyses: int
    psi: float | None


def drift(
    store: Store,
    baselines: dict[str, Baseline],
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
    *,
    default: Baseline | None = None,
) -> tuple[list[DriftRow], list[DailyPsi], dict[str, np.ndarray]]:
    """Per version: drift over the window, PSI per day, and the window's score counts.

    ``baselines`` maps model versions to their baseline; ``default`` serves versions without one.
    """
    hists = daily_histograms(store, since, until, model_version)
    stmt = (
        select(
            Analysis.model_version,
            func.count(),
            func.avg(Analysis.score),
            func.sum(case((Analysis.finding_present.is_(True), 1), else_=0)),
        )
        .where(*scored_in_window(since, until, model_version))
        .group_by(Analysis.model_version)
        .order_by(Analysis.model_version)
    )
    with store.session() as s:
        stats = s.execute(stmt).all()
    totals: dict[str, np.ndarray] = {}
    for h in hists:
        totals[h.model_version] = totals.get(h.model_version, 0) + np.asarray(h.counts)
    rows, daily = [], []
    for version, n, mean, positives in stats:
        base = baselines.get(version, default)
        value = psi(base.counts, totals[version]) if base is not None else None
        rows.append(
            DriftRow(
                model_version=version,
                analyses=int(n),
                mean_score=round(float(mean), 4),
                positive_rate=round(int(positives or 0) / int(n), 4),
                psi=None if value is None else round(value, 4),
                band=psi_band(value) if base is not None else "no baseline",
                baseline=base.source if base is not None else "-",
            )
        )
    for h in hists:
        base = baselines.get(h.model_version, default)
        value = psi(base.counts, h.counts) if base is not None else None
        daily.append(
            DailyPsi(h.model_version, h.day, sum(h.counts), None if value is None else round(value, 4))
        )
    return rows, daily, totals


__all__ = [
    "BASELINE_CARD_KEY",
    "PSI_BANDS",
    "PSI_EPSILON",
    "Baseline",
    "DailyHistogram",
    "DailyPsi",
    "DriftRow",
    "baseline_from_card",
    "daily_histograms",
    "drift",
    "load_baseline",
    "psi",
    "psi_band",
    "scored_in_window",
]
