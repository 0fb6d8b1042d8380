"""What ``dicomnode monitor`` asks for one window: drift (:mod:`dicomnode.ops.drift`) and
performance against reads (:mod:`dicomnode.ops.performance`) of every model version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import func, select

from dicomnode.ops.drift import Baseline, DailyPsi, DriftRow, drift
from dicomnode.ops.performance import PerformanceRow, performance
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis
from dicomnode.store.queries import as_utc


@dataclass(frozen=True)
class MonitorResult:
    """Everything ``dicomnode monitor`` prints and reports for one window."""

    since: datetime | None
    until: datetime | None
    drift: list[DriftRow]
    daily: list[DailyPsi]
    #: window score counts per model version in the ``SCORE_BIN_EDGES`` bins
    counts: dict[str, np.ndarray]
    #: the baseline each version was compared with (absent: none known)
    baselines: dict[str, Baseline]
    performance: list[PerformanceRow]


def monitor(
    store: Store,
    baselines: dict[str, Baseline],
    since: datetime | None = None,
    until: datetime | None = None,
    model_version: str | None = None,
    *,
    default: Baseline | None = None,
) -> MonitorResult:
    """Drift and performance of every model version (or one) over ``since <= finished < until``."""
    rows, daily, counts = drift(store, baselines, since, until, model_version, default=default)
    used = {v: b for v in counts if (b := baselines.get(v, default)) is not None}
    return MonitorResult(
        since, until, rows, daily, counts, used, performance(store, since, until, model_version)
    )


def first_and_last_finish(store: Store) -> tuple[datetime | None, datetime | None]:
    """The earliest and latest analysis finish time in the store (for report headers)."""
    with store.session() as s:
        lo, hi = s.execute(select(func.min(Analysis.finished_at), func.max(Analysis.finished_at))).one()
    return as_utc(lo), as_utc(hi)


__all__ = ["MonitorResult", "first_and_last_finish", "monitor"]
