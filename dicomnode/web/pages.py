"""What each page shows, gathered from the questions :mod:`dicomnode.ops` and
:mod:`dicomnode.store.queries` already ask (no SQL of its own). Every list is bounded: a page
shows at most :data:`PAGE_ROWS` rows and reads at most a window's worth.

The templates (``dicomnode/web/templates``) only format what these functions return.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dicomnode.config import Settings
from dicomnode.ops import audit
from dicomnode.ops.worklist import entries_from_store
from dicomnode.results import RankReason, reading_order
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import (
    as_utc,
    destinations_down,
    due_deliveries,
    latest_analysis,
    stranded_studies,
)

#: Rows per page of every list.
PAGE_ROWS = 50
#: The worklist reads studies first received this many days back (``?days=`` changes it, up to
#: :data:`MAX_DAYS`) and at most :data:`WORKLIST_CAP` of them, the newest.
WORKLIST_DAYS = 7
MAX_DAYS = 90
WORKLIST_CAP = 2000
#: Minutes after which a routine study joins the urgent band: ``dicomnode worklist --max-wait``'s
#: default, so the page and the command list the same order.
DEFAULT_MAX_WAIT_MINUTES = 240.0
#: Most delivery attempts and events a study's page lists.
STUDY_ROWS = 200
#: Stranded studies counted per kind before the page says "100+".
STRANDED_CAP = 100

#: A study's patient name, or None (unknown, or names are off).
NameLookup = Callable[[str], str | None]


def waited_text(waited: timedelta) -> str:
    """``3 h 05 min``, ``12 min``, ``2 d 4 h``: how long a study has waited, for people."""
    minutes = int(waited.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {mins:02d} min"
    return f"{mins} min"


def clamp(value: float, low: float, high: float) -> float:
    """``value`` inside ``[low, high]`` (NaN becomes ``low``)."""
    return low if math.isnan(value) else min(max(value, low), high)


# ---------------------------------------------------------------------------------- worklist


@dataclass(frozen=True)
class WorklistRow:
    """One study on the worklist, in reading order."""

    rank: int
    study_uid: str
    accession: str
    priority: str
    reason: str  # urgent | waited (a routine study raised by the max wait) | routine
    probability: float | None
    arrived_at: datetime
    waited: str
    patient_name: str | None


@dataclass(frozen=True)
class Worklist:
    rows: list[WorklistRow]
    page: int
    pages: int
    total: int
    capped: bool  # more studies in the window than WORKLIST_CAP: the oldest are not listed
    urgent: int
    raised: int
    max_wait_minutes: float
    days: int


def worklist(
    store: Store,
    *,
    now: datetime,
    max_wait_minutes: float = DEFAULT_MAX_WAIT_MINUTES,
    days: int = WORKLIST_DAYS,
    page: int = 1,
    names: NameLookup | None = None,
) -> Worklist:
    """The reading order (:func:`dicomnode.results.reading_order`, as ``dicomnode worklist``) of
    the studies first received in the last ``days``, one page of it."""
    entries = entries_from_store(store, since=now - timedelta(days=days), limit=WORKLIST_CAP + 1)
    capped = len(entries) > WORKLIST_CAP
    ranked = reading_order(entries[:WORKLIST_CAP], now=now, max_wait=timedelta(minutes=max_wait_minutes))
    pages = max(1, math.ceil(len(ranked) / PAGE_ROWS))
    page = int(clamp(page, 1, pages))
    shown = ranked[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
    rows = [
        WorklistRow(
            rank=r.rank,
            study_uid=r.study_uid,
            accession=r.entry.accession,
            priority=r.entry.priority.value,
            reason=r.reason.value,
            probability=r.entry.probability,
            arrived_at=r.entry.arrived_at,
            waited=waited_text(r.waited),
            patient_name=names(r.study_uid) if names else None,
        )
        for r in shown
    ]
    return Worklist(
        rows=rows,
        page=page,
        pages=pages,
        total=len(ranked),
        capped=capped,
        urgent=sum(r.reason is RankReason.URGENT for r in ranked),
        raised=sum(r.reason is RankReason.WAITED for r in ranked),
        max_wait_minutes=max_wait_minutes,
        days=days,
    )


# ----------------------------------------------------------------------------------- studies

#: Rows of one destination further apart than this belong to different attempts, even with the
#: same attempt number (a re-send starts its count at 1 again).
_ATTEMPT_GAP = timedelta(seconds=2)


def count_attempts(rows: list[audit.DeliveryRow]) -> int:
    """Attempts among one destination's delivery rows (a row per result object per attempt): a new
    attempt where the attempt number changes or the rows are :data:`_ATTEMPT_GAP` apart."""
    n, prev = 0, None
    for r in sorted(rows, key=lambda r: r.attempted_at):
        if prev is None or r.attempt != prev.attempt or r.attempted_at - prev.attempted_at > _ATTEMPT_GAP:
            n += 1
        prev = r
    return n


@dataclass(frozen=True)
class StudyList:
    rows: list[audit.StudyRow]
    state: str | None
    #: the ``before`` cursor of the next (older) page, None on the last page
    next_before: datetime | None
    names: dict[str, str | None]


def study_list(
    store: Store, *, state: str | None = None, before: datetime | None = None, names: NameLookup | None = None
) -> StudyList:
    """Studies newest first (:func:`dicomnode.ops.audit.studies`), a page at a time: ``before`` is
    the first-received time of the last row of the previous page."""
    f = audit.AuditFilter(until=before, states=(state,) if state else ())
    rows = audit.studies(store, f, limit=PAGE_ROWS + 1)
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    return StudyList(
        rows=rows,
        state=state,
        next_before=rows[-1].first_received_at if more and rows else None,
        names={r.study_uid: names(r.study_uid) for r in rows} if names else {},
    )


@dataclass(frozen=True)
class DestinationSummary:
    """Delivery of one study's results to one destination, over all its analyses."""

    destination: str
    attempts: int  # association attempts (an attempt sends every result object)
    objects_delivered: int
    last_success: bool
    last_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class StudyDetail:
    row: audit.StudyRow
    #: (stage, when) of the latest analysis, in the order the flow goes through them
    stages: list[tuple[str, datetime | None]]
    destinations: list[DestinationSummary]
    attempts: list[audit.DeliveryRow]
    events: list[audit.EventRow]
    reasons: list[str]  # why the study is where it is: state reason, analysis error, delivery errors
    can_resend: bool
    sc_available: bool
    patient_name: str | None = None
    analysis_id: int | None = None
    execution: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: States in which a study has results that ``dicomnode resend`` can send again.
RESENDABLE = {StudyState.ANALYSED.value, StudyState.DELIVERED.value, StudyState.DELIVERY_FAILED.value}


def study_detail(store: Store, study_uid: str, *, names: NameLookup | None = None) -> StudyDetail | None:
    """Everything the study page shows, or None for a study the node never received."""
    found = audit.studies(store, audit.AuditFilter(study_uid=study_uid), limit=1)
    if not found:
        return None
    row = found[0]
    a = latest_analysis(store, study_uid)
    stages: list[tuple[str, datetime | None]] = [
        ("first instance received", row.first_received_at),
        ("last instance received", row.last_received_at),
    ]
    if a is not None:
        stages += [
            ("queued for analysis", a.queued_at),
            ("analysis started", a.started_at),
            ("preprocessed", a.preprocessed_at),
            ("inferred", a.inferred_at),
            ("results built", a.results_built_at),
            ("analysis finished", a.finished_at),
            ("results delivered", a.delivered_at),
        ]
    stages = [(name, as_utc(at)) for name, at in stages]
    f = audit.AuditFilter(study_uid=study_uid)
    attempts = audit.deliveries(store, f, failed_only=False, limit=STUDY_ROWS)
    events = audit.events(store, f, limit=STUDY_ROWS)
    reasons = [r for r in (row.state_reason, a.error if a is not None else None) if r]
    by_dest: dict[str, list[audit.DeliveryRow]] = {}
    for d in attempts:  # newest first
        by_dest.setdefault(d.destination, []).append(d)
    destinations = []
    for name, rows in sorted(by_dest.items()):
        last = rows[0]
        destinations.append(
            DestinationSummary(
                destination=name,
                attempts=count_attempts(rows),
                objects_delivered=len({r.sop_instance_uid for r in rows if r.success}),
                last_success=last.success,
                last_at=last.attempted_at,
                last_error=last.error,
            )
        )
        if not last.success and last.error:
            reasons.append(f"{name}: {last.error}")
    has_results = a is not None and bool(a.sr_sop_instance_uid and a.sc_sop_instance_uid)
    return StudyDetail(
        row=row,
        stages=stages,
        destinations=destinations,
        attempts=attempts,
        events=events,
        reasons=reasons,
        can_resend=has_results and row.state in RESENDABLE,
        sc_available=a is not None and a.sc_sop_instance_uid is not None and a.results_purged_at is None,
        patient_name=names(study_uid) if names else None,
        analysis_id=a.id if a is not None else None,
        execution=a.execution if a is not None else None,
    )


# ------------------------------------------------------------------------------------- model

#: The model page looks back this many days (``?days=`` changes it, up to :data:`MAX_DAYS`) and
#: plots sensitivity and specificity per week over :data:`MODEL_WEEKS` weeks.
MODEL_DAYS = 30
MODEL_WEEKS = 12


@dataclass(frozen=True)
class Plot:
    svg: str  # inline SVG, built by dicomnode.ops.report or dicomnode.web.plots from numbers only
    caption: str


@dataclass(frozen=True)
class ModelView:
    card: Any  # dicomnode.model.card.ModelCard, or None when the file could not be read
    card_error: str | None
    model_path: Path
    days: int
    drift: list[Any]  # dicomnode.ops.drift.DriftRow
    performance: list[Any]  # dicomnode.ops.report.PerformanceText
    plots: dict[str, list[Plot]]  # per model version


def model_view(
    settings: Settings,
    store: Store,
    card: Any,
    card_error: str | None,
    *,
    now: datetime,
    days: int = MODEL_DAYS,
) -> ModelView:
    """The model in force (its card and threshold), score drift (PSI) of every version against its
    validation baseline and performance against radiologists' reads (``dicomnode monitor``), as
    plots; and sensitivity and specificity per week of the version in force."""
    import numpy as np

    from dicomnode.model.histogram import SCORE_BIN_EDGES
    from dicomnode.ops.drift import baseline_from_card
    from dicomnode.ops.monitor import monitor
    from dicomnode.ops.performance import performance
    from dicomnode.ops.report import confusion_svg, histogram_svg, performance_text, psi_svg
    from dicomnode.web.plots import Series, measures_svg

    baselines = {}
    if card is not None and (base := baseline_from_card(card)) is not None:
        baselines[card.version] = base
    result = monitor(store, baselines, since=now - timedelta(days=days))
    perf = {p.model_version: p for p in result.performance}
    plots: dict[str, list[Plot]] = {}
    for row in result.drift:
        v = row.model_version
        counts = result.counts.get(v, np.zeros(len(SCORE_BIN_EDGES) - 1))
        shares = counts / max(1, counts.sum())
        b = result.baselines.get(v)
        out = [
            Plot(
                histogram_svg(shares, None if b is None else b.shares, f"Scores of {v}"),
                f"Share of scores per bin, {row.analyses} analyses"
                + (f", against {b.source}" if b else " (no validation baseline in the model card)"),
            )
        ]
        if b is not None:
            days_rows = [d for d in result.daily if d.model_version == v]
            out.append(
                Plot(
                    psi_svg([d.day for d in days_rows], [d.psi for d in days_rows], f"PSI per day, {v}"),
                    "PSI per day against the validation baseline (dashed: 0.1 moderate, 0.25 major shift)",
                )
            )
        if v in perf:
            out.append(Plot(confusion_svg(perf[v], f"Against reads, {v}"), "Confusion counts against reads"))
        plots[v] = out
    if card is not None:
        week0 = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        starts = [week0 - timedelta(weeks=k) for k in range(MODEL_WEEKS - 1, -1, -1)]
        weekly = []
        for start in starts:
            rows = performance(store, start, start + timedelta(weeks=1), card.version)
            weekly.append(rows[0] if rows else None)
        nan = float("nan")
        sens = Series(
            "sensitivity",
            [p.sensitivity if p else nan for p in weekly],
            [p.sensitivity_low if p else nan for p in weekly],
            [p.sensitivity_high if p else nan for p in weekly],
        )
        spec = Series(
            "specificity",
            [p.specificity if p else nan for p in weekly],
            [p.specificity_low if p else nan for p in weekly],
            [p.specificity_high if p else nan for p in weekly],
        )
        svg = measures_svg(
            [s.strftime("%m-%d") for s in starts], [sens, spec], f"Against reads per week, {card.version}"
        )
        plots.setdefault(card.version, []).append(
            Plot(
                svg, "Sensitivity and specificity per week against imported reads, with 95% Wilson intervals"
            )
        )
    return ModelView(
        card=card,
        card_error=card_error,
        model_path=settings.model_path,
        days=days,
        drift=result.drift,
        performance=performance_text(result.performance),
        plots=plots,
    )


# ------------------------------------------------------------------------------------ health


@dataclass(frozen=True)
class DestinationHealth:
    name: str
    up: bool


@dataclass(frozen=True)
class Health:
    sql_ok: bool
    destinations: list[DestinationHealth]
    down_errors: dict[str, str]
    states: dict[str, int]
    queue_depth: int | None
    queue_ok: bool | None  # None: no queue to ask
    stranded: dict[str, int]
    disk_path: Path
    disk_free: int | None
    disk_total: int | None
    min_free: int

    @property
    def disk_ok(self) -> bool:
        return self.disk_free is None or not self.min_free or self.disk_free >= self.min_free


def _metric_values(collector: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The samples of one scrape of a Prometheus collector: name -> {labels: value}."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in collector.collect():
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = float(sample.value)
    return out


def health(settings: Settings, store: Store, collector: Any, *, now: datetime) -> Health:
    """Destinations up or down, studies per state, queue depth, stranded studies and free disk:
    the numbers of ``/metrics`` (one scrape of ``collector``, a
    :class:`dicomnode.ops.metrics.SqlCollector`) and the reconciler's questions."""
    m = _metric_values(collector)
    up = {dict(k).get("source", ""): v for k, v in m.get("dicomnode_metrics_source_up", {}).items()}
    down = {dict(k)["destination"]: v for k, v in m.get("dicomnode_destination_down", {}).items()}
    states = {dict(k)["state"]: int(v) for k, v in m.get("dicomnode_studies", {}).items()}
    depth = m.get("dicomnode_queue_depth", {}).get((), None)
    errors: dict[str, str] = {}
    stranded: dict[str, int] = {}
    sql_ok = up.get("sql", 0.0) == 1.0
    if sql_ok:
        errors = destinations_down(store)
        after = timedelta(seconds=settings.reconcile_after_seconds)
        analysing_after = max(after, timedelta(seconds=settings.task_time_limit))
        stranded = {
            "complete, not picked up": len(
                stranded_studies(store, (StudyState.COMPLETE,), stale_before=now - after, limit=STRANDED_CAP)
            ),
            "analysing past the task time limit": len(
                stranded_studies(
                    store, (StudyState.ANALYSING,), stale_before=now - analysing_after, limit=STRANDED_CAP
                )
            ),
            "delivery round overdue": len(due_deliveries(store, due_before=now - after, limit=STRANDED_CAP)),
        }
    free: int | None = None
    total: int | None = None
    try:
        usage = shutil.disk_usage(settings.storage_dir)
        free, total = usage.free, usage.total
    except OSError:  # `dicomnode web` on a machine without the storage folder
        pass
    return Health(
        sql_ok=sql_ok,
        destinations=[DestinationHealth(name, v == 0.0) for name, v in sorted(down.items())],
        down_errors=errors,
        states=states,
        queue_depth=None if depth is None else int(depth),
        queue_ok=None if "queue" not in up else up["queue"] == 1.0,
        stranded=stranded,
        disk_path=settings.storage_dir,
        disk_free=free,
        disk_total=total,
        min_free=settings.min_free_bytes,
    )


__all__ = [
    "DEFAULT_MAX_WAIT_MINUTES",
    "MODEL_DAYS",
    "MODEL_WEEKS",
    "MAX_DAYS",
    "PAGE_ROWS",
    "RESENDABLE",
    "WORKLIST_CAP",
    "WORKLIST_DAYS",
    "DestinationSummary",
    "Health",
    "ModelView",
    "Plot",
    "StudyDetail",
    "StudyList",
    "Worklist",
    "WorklistRow",
    "health",
    "model_view",
    "study_detail",
    "study_list",
    "waited_text",
    "worklist",
]
