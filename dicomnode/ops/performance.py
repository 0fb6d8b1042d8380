"""Real-world performance: sensitivity, specificity, PPV and NPV against radiologists' reads.

Compares each study's latest radiologist read (:mod:`dicomnode.ops.groundtruth`) with the model
version's latest analysis of that study, judged at the threshold the analysis used (the model
card's operating point). Proportions come with Wilson score 95% intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from dicomnode.ops.drift import scored_in_window
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, GroundTruth

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (95% by default); NaNs when ``n == 0``."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends, where rounding bites
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class PerformanceRow:
    """Confusion counts of one model version against radiologists' reads, with 95% Wilson CIs."""

    model_version: str
    threshold: float | None
    studies: int  # studies with both a read and an analysis by this version
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    sensitivity_low: float
    sensitivity_high: float
    specificity: float
    specificity_low: float
    specificity_high: float
    ppv: float
    ppv_low: float
    ppv_high: float
    npv: float
    npv_low: float
    npv_high: float


def _ratio(k: int, n: int) -> tuple[float, float, float]:
    lo, hi = wilson_interval(k, n)
    return (round(k / n, 4) if n else math.nan, round(lo, 4), round(hi, 4))


def performance_from_counts(
    model_version: str, threshold: float | None, tp: int, fp: int, tn: int, fn: int
) -> PerformanceRow:
    """Sensitivity, specificity, PPV and NPV with Wilson intervals from confusion counts."""
    sens, spec, ppv, npv = _ratio(tp, tp + fn), _ratio(tn, tn + fp), _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    return PerformanceRow(
        model_version, threshold, tp + fp + tn + fn, tp, fp, tn, fn, *sens, *spec, *ppv, *npv
    )


def performance(
    store: Store,
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
) -> list[PerformanceRow]:
    """Per model version: its latest analysis of each read study (finished in the window) against
    the study's latest read, positive when the score reached the analysis's threshold."""
    read_rank = (
        func.row_number()
        .over(
            partition_by=GroundTruth.study_id,
            order_by=(GroundTruth.read_at.is_(None), GroundTruth.read_at.desc(), GroundTruth.id.desc()),
        )
        .label("rank")
    )
    ranked_reads = select(GroundTruth.study_id, GroundTruth.label, read_rank).subquery()
    reads = select(ranked_reads.c.study_id, ranked_reads.c.label).where(ranked_reads.c.rank == 1).subquery()
    run_rank = (
        func.row_number()
        .over(partition_by=(Analysis.study_id, Analysis.model_version), order_by=Analysis.id.desc())
        .label("rank")
    )
    # driven by the reads (a few percent of studies): each looks up its analyses by study_id
    runs = (
        select(Analysis.model_version, Analysis.threshold, Analysis.finding_present, reads.c.label, run_rank)
        .join(reads, reads.c.study_id == Analysis.study_id)
        .where(*scored_in_window(since, until, model_version))
        .subquery()
    )
    pred, truth = runs.c.finding_present.is_(True), runs.c.label.is_(True)
    stmt = (
        select(
            runs.c.model_version,
            func.max(runs.c.threshold),
            func.sum(case((pred & truth, 1), else_=0)),
            func.sum(case((pred & ~truth, 1), else_=0)),
            func.sum(case((~pred & ~truth, 1), else_=0)),
            func.sum(case((~pred & truth, 1), else_=0)),
        )
        .where(runs.c.rank == 1)
        .group_by(runs.c.model_version)
        .order_by(runs.c.model_version)
    )
    with store.session() as s:
        rows = s.execute(stmt).all()
    return [
        performance_from_counts(v, thr, int(tp or 0), int(fp or 0), int(tn or 0), int(fn or 0))
        for v, thr, tp, fp, tn, fn in rows
    ]


__all__ = ["Z95", "PerformanceRow", "performance", "performance_from_counts", "wilson_interval"]
