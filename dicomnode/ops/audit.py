"""Audit questions over the node's SQL record, as SQLAlchemy selects returning typed rows.

``dicomnode audit`` asks them:

- :func:`studies`: which studies arrived (when, from whom), what the model said, were results
  delivered, how long it took; newest first, filtered by :class:`AuditFilter`
- :func:`summary`: counts per day, calling AE, state, model version or priority
- :func:`deliveries`: C-STORE attempts of results (by default the failed ones)
- :func:`commitments`: per result object and destination, delivered (a C-STORE Success) and
  committed (the destination's Storage Commitment report), newest request first
- :func:`events`: the append-only event log (one study's timeline, or one kind of event)

Every query reads an index range (revision 0002 adds the composite indexes;
``bench/audit_queries.py`` times each, docs/sizing.md keeps the numbers). All times are UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, select, true
from sqlalchemy.orm import aliased

from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Commitment, DeliveryAttempt, Event, Study, StudyState
from dicomnode.store.queries import as_utc, latest_analysis_join

SUMMARY_KEYS = ("day", "calling_ae", "state", "model_version", "priority")

_RELATIVE = re.compile(r"^(?P<n>\d+(\.\d+)?)(?P<unit>[mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, end: bool = False, now: datetime | None = None) -> datetime:
    """A UTC datetime from ``YYYY-MM-DD``, an ISO 8601 date-time, or a span back from now
    (``30m``, ``24h``, ``7d``, ``2w``). With ``end=True`` a bare date means the end of that day,
    so ``--until 2026-01-31`` includes the 31st. Naive date-times are taken as UTC."""
    value = text.strip()
    m = _RELATIVE.match(value)
    if m:
        base = now or datetime.now(timezone.utc)
        return base - timedelta(**{_UNITS[m["unit"]]: float(m["n"])})
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            at = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return at + timedelta(days=1) if end else at
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a date (2026-01-31), a date-time (2026-01-31T08:00:00Z) "
            "or a span back from now (24h, 7d)"
        ) from None
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


@dataclass(frozen=True)
class AuditFilter:
    """What to look at. ``since``/``until`` bound the time the question is about (when a study was
    first received, an attempt made, an event logged): ``since <= t < until``."""

    since: datetime | None = None
    until: datetime | None = None
    calling_ae: str | None = None
    states: tuple[str, ...] = ()
    #: studies any analysis of which this model version made (not only the latest: after an
    #: upgrade and a rollback both versions' studies stay findable); the row then shows the
    #: latest analysis by this version
    model_version: str | None = None
    failed_deliveries: bool = False  # only studies with at least one failed delivery attempt
    study_uid: str | None = None
    accession_number: str | None = None

    def __post_init__(self) -> None:
        known = {s.value for s in StudyState}
        bad = [s for s in self.states if s not in known]
        if bad:
            raise ValueError(f"unknown state {bad[0]!r}: use one of {', '.join(sorted(known))}")
        for name in ("since", "until"):
            v = getattr(self, name)
            if v is not None and v.tzinfo is None:
                raise ValueError(f"AuditFilter.{name} must be timezone-aware (UTC), got {v!r}")


def _window(col: Any, f: AuditFilter) -> list[ColumnElement[bool]]:
    out = []
    if f.since is not None:
        out.append(col >= f.since.astimezone(timezone.utc))
    if f.until is not None:
        out.append(col < f.until.astimezone(timezone.utc))
    return out


def _study_conditions(f: AuditFilter, latest: Any) -> list[ColumnElement[bool]]:
    conds = _window(Study.first_received_at, f)
    if f.calling_ae is not None:
        conds.append(Study.calling_ae == f.calling_ae)
    if f.states:
        conds.append(Study.state.in_(f.states))
    if f.study_uid is not None:
        conds.append(Study.study_uid == f.study_uid)
    if f.accession_number is not None:
        conds.append(Study.accession_number == f.accession_number)
    if f.model_version is not None:
        conds.append(Study.id.in_(select(Analysis.study_id).where(Analysis.model_version == f.model_version)))
    if f.failed_deliveries:
        conds.append(
            Study.id.in_(
                select(Analysis.study_id)
                .join(DeliveryAttempt, DeliveryAttempt.analysis_id == Analysis.id)
                .where(DeliveryAttempt.success.is_(False))
            )
        )
    return conds


def _latest_analysis_join(dialect: str, model_version: str | None) -> tuple[Any, Any, ColumnElement[bool]]:
    """:func:`~dicomnode.store.queries.latest_analysis_join`, or with ``model_version`` the same
    for the latest analysis that version made (the highest ``analyses.id`` among them)."""
    if model_version is None:
        return latest_analysis_join(dialect)
    by_version = Analysis.model_version == model_version
    if dialect == "postgresql":
        latest = (
            select(Analysis)
            .where(Analysis.study_id == Study.id, by_version)
            .order_by(Analysis.id.desc())
            .limit(1)
            .lateral("latest_analysis_of_version")
        )
        return aliased(Analysis, latest), latest, true()
    newest = (
        select(func.max(Analysis.id)).where(Analysis.study_id == Study.id, by_version).correlate(Study)
    ).scalar_subquery()
    return Analysis, Analysis, Analysis.id == newest


# ------------------------------------------------------------------------------------ studies


@dataclass(frozen=True)
class StudyRow:
    """A study and its latest analysis."""

    study_uid: str
    accession_number: str | None
    calling_ae: str | None
    state: str
    state_reason: str | None
    instances: int
    first_received_at: datetime
    last_received_at: datetime
    model_version: str | None
    score: float | None
    threshold: float | None
    finding_present: bool | None
    priority: str | None
    finished_at: datetime | None
    delivered_at: datetime | None
    failed_attempts: int
    #: last instance received -> results accepted by every destination; None unless delivered (a
    #: failed delivery, not applicable or failed study has no time to a result a reader saw)
    seconds_to_result: float | None


def studies_query(f: AuditFilter, limit: int | None = 100, dialect: str = "sqlite") -> Select:
    """Studies matching ``f`` with their latest analysis (by ``f.model_version``, if given), newest
    first."""
    a, join_to, on = _latest_analysis_join(dialect, f.model_version)
    failed = (
        select(func.count())
        .select_from(DeliveryAttempt)
        .where(DeliveryAttempt.analysis_id == a.id, DeliveryAttempt.success.is_(False))
        .scalar_subquery()
    )
    stmt = (
        select(
            Study.study_uid,
            Study.accession_number,
            Study.calling_ae,
            Study.state,
            Study.state_reason,
            Study.instance_count,
            Study.first_received_at,
            Study.last_received_at,
            a.model_version,
            a.score,
            a.threshold,
            a.finding_present,
            a.priority,
            a.finished_at,
            a.delivered_at,
            case((a.id.is_(None), 0), else_=failed).label("failed_attempts"),
        )
        .outerjoin(join_to, on)
        .where(*_study_conditions(f, a))
        .order_by(Study.first_received_at.desc(), Study.id.desc())
    )
    return stmt.limit(limit) if limit else stmt


def studies(store: Store, f: AuditFilter, limit: int | None = 100) -> list[StudyRow]:
    """Run :func:`studies_query`; ``limit=None`` returns every match."""
    out = []
    with store.session() as s:
        for r in s.execute(studies_query(f, limit, store.engine.dialect.name)):
            last = as_utc(r.last_received_at) or r.last_received_at
            delivered, finished = as_utc(r.delivered_at), as_utc(r.finished_at)
            out.append(
                StudyRow(
                    study_uid=r.study_uid,
                    accession_number=r.accession_number,
                    calling_ae=r.calling_ae,
                    state=r.state,
                    state_reason=r.state_reason,
                    instances=r.instance_count,
                    first_received_at=as_utc(r.first_received_at) or r.first_received_at,
                    last_received_at=last,
                    model_version=r.model_version,
                    score=r.score,
                    threshold=r.threshold,
                    finding_present=r.finding_present,
                    priority=r.priority,
                    finished_at=finished,
                    delivered_at=delivered,
                    failed_attempts=int(r.failed_attempts or 0),
                    seconds_to_result=None
                    if delivered is None
                    else round((delivered - last).total_seconds(), 3),
                )
            )
    return out


# ------------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class SummaryRow:
    """Counts of studies sharing one value of the grouping key."""

    key: str
    studies: int
    delivered: int
    delivery_failed: int
    failed: int
    not_applicable: int
    in_progress: int  # receiving, complete, analysing, analysed
    urgent: int  # latest analysis put the study first on the worklist
    mean_score: float | None


def _day(col: Any, dialect: str) -> ColumnElement[Any]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", col), "YYYY-MM-DD")
    return func.substr(col, 1, 10)  # SQLite stores "YYYY-MM-DD HH:MM:SS.ffffff" in UTC


def summary_query(f: AuditFilter, by: str = "day", dialect: str = "sqlite") -> Select:
    """Counts per ``by`` (one of :data:`SUMMARY_KEYS`) over studies matching ``f``."""
    if by not in SUMMARY_KEYS:
        raise ValueError(f"summary by {by!r}: use one of {', '.join(SUMMARY_KEYS)}")
    a, join_to, on = latest_analysis_join(dialect)
    key: Any = {
        "day": _day(Study.first_received_at, dialect),
        "calling_ae": Study.calling_ae,
        "state": Study.state,
        "model_version": a.model_version,
        "priority": a.priority,
    }[by]

    def n_state(*states: StudyState) -> Any:
        return func.sum(case((Study.state.in_([s.value for s in states]), 1), else_=0))

    return (
        select(
            key.label("key"),
            func.count().label("studies"),
            n_state(StudyState.DELIVERED).label("delivered"),
            n_state(StudyState.DELIVERY_FAILED).label("delivery_failed"),
            n_state(StudyState.FAILED).label("failed"),
            n_state(StudyState.NOT_APPLICABLE).label("not_applicable"),
            n_state(
                StudyState.RECEIVING, StudyState.COMPLETE, StudyState.ANALYSING, StudyState.ANALYSED
            ).label("in_progress"),
            func.sum(case((a.priority == "urgent", 1), else_=0)).label("urgent"),
            func.avg(a.score).label("mean_score"),
        )
        .outerjoin(join_to, on)
        .where(*_study_conditions(f, a))
        .group_by(key)
        .order_by(key)
    )


def summary(store: Store, f: AuditFilter, by: str = "day") -> list[SummaryRow]:
    """Run :func:`summary_query`."""
    with store.session() as s:
        rows = s.execute(summary_query(f, by, store.engine.dialect.name)).all()
    return [
        SummaryRow(
            key="-" if r.key is None else str(r.key),
            studies=int(r.studies),
            delivered=int(r.delivered or 0),
            delivery_failed=int(r.delivery_failed or 0),
            failed=int(r.failed or 0),
            not_applicable=int(r.not_applicable or 0),
            in_progress=int(r.in_progress or 0),
            urgent=int(r.urgent or 0),
            mean_score=None if r.mean_score is None else round(float(r.mean_score), 4),
        )
        for r in rows
    ]


# --------------------------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class DeliveryRow:
    """One C-STORE attempt of one result object to one destination."""

    attempted_at: datetime
    study_uid: str
    calling_ae: str | None
    destination: str
    sop_instance_uid: str
    attempt: int
    success: bool
    status: int | None
    error: str | None
    model_version: str


def deliveries_query(f: AuditFilter, *, failed_only: bool = True, limit: int | None = 100) -> Select:
    """Delivery attempts in ``f``'s window (by attempt time), newest first."""
    stmt = (
        select(
            DeliveryAttempt.attempted_at,
            Study.study_uid,
            Study.calling_ae,
            DeliveryAttempt.destination,
            DeliveryAttempt.sop_instance_uid,
            DeliveryAttempt.attempt,
            DeliveryAttempt.success,
            DeliveryAttempt.status,
            DeliveryAttempt.error,
            Analysis.model_version,
        )
        .join(Analysis, DeliveryAttempt.analysis_id == Analysis.id)
        .join(Study, Analysis.study_id == Study.id)
        .where(*_window(DeliveryAttempt.attempted_at, f))
        .order_by(DeliveryAttempt.attempted_at.desc(), DeliveryAttempt.id.desc())
    )
    if failed_only:
        stmt = stmt.where(DeliveryAttempt.success.is_(False))
    if f.calling_ae is not None:
        stmt = stmt.where(Study.calling_ae == f.calling_ae)
    if f.model_version is not None:
        stmt = stmt.where(Analysis.model_version == f.model_version)
    if f.study_uid is not None:
        stmt = stmt.where(Study.study_uid == f.study_uid)
    if f.states:
        stmt = stmt.where(Study.state.in_(f.states))
    return stmt.limit(limit) if limit else stmt


def deliveries(
    store: Store, f: AuditFilter, *, failed_only: bool = True, limit: int | None = 100
) -> list[DeliveryRow]:
    """Run :func:`deliveries_query`."""
    with store.session() as s:
        rows = s.execute(deliveries_query(f, failed_only=failed_only, limit=limit)).all()
    return [
        DeliveryRow(
            attempted_at=as_utc(r.attempted_at) or r.attempted_at,
            study_uid=r.study_uid,
            calling_ae=r.calling_ae,
            destination=r.destination,
            sop_instance_uid=r.sop_instance_uid,
            attempt=r.attempt,
            success=bool(r.success),
            status=r.status,
            error=r.error,
            model_version=r.model_version,
        )
        for r in rows
    ]


# -------------------------------------------------------------------------------- commitments


@dataclass(frozen=True)
class CommitmentRow:
    """One result object in one Storage Commitment request to one destination."""

    requested_at: datetime
    study_uid: str
    destination: str
    sop_instance_uid: str
    delivered: bool  # a C-STORE of it to this destination succeeded
    committed: bool  # the destination's report lists it as committed
    committed_at: datetime | None
    failed_reason: str | None  # the report's failure reason, or no report in time
    transaction_uid: str


def commitments_query(f: AuditFilter, *, limit: int | None = 100) -> Select:
    """Commitment requests in ``f``'s window (by request time), newest first."""
    delivered = (
        select(DeliveryAttempt.id)
        .where(
            DeliveryAttempt.analysis_id == Commitment.analysis_id,
            DeliveryAttempt.destination == Commitment.destination,
            DeliveryAttempt.sop_instance_uid == Commitment.sop_instance_uid,
            DeliveryAttempt.success.is_(True),
        )
        .exists()
    )
    stmt = (
        select(
            Commitment.requested_at,
            Study.study_uid,
            Commitment.destination,
            Commitment.sop_instance_uid,
            delivered.label("delivered"),
            Commitment.committed_at,
            Commitment.failed_reason,
            Commitment.transaction_uid,
        )
        .join(Analysis, Commitment.analysis_id == Analysis.id)
        .join(Study, Analysis.study_id == Study.id)
        .where(*_window(Commitment.requested_at, f))
        .order_by(Commitment.requested_at.desc(), Commitment.id.desc())
    )
    if f.calling_ae is not None:
        stmt = stmt.where(Study.calling_ae == f.calling_ae)
    if f.study_uid is not None:
        stmt = stmt.where(Study.study_uid == f.study_uid)
    if f.states:
        stmt = stmt.where(Study.state.in_(f.states))
    return stmt.limit(limit) if limit else stmt


def commitments(store: Store, f: AuditFilter, *, limit: int | None = 100) -> list[CommitmentRow]:
    """Run :func:`commitments_query`."""
    with store.session() as s:
        rows = s.execute(commitments_query(f, limit=limit)).all()
    return [
        CommitmentRow(
            requested_at=as_utc(r.requested_at) or r.requested_at,
            study_uid=r.study_uid,
            destination=r.destination,
            sop_instance_uid=r.sop_instance_uid,
            delivered=bool(r.delivered),
            committed=r.committed_at is not None,
            committed_at=as_utc(r.committed_at),
            failed_reason=r.failed_reason,
            transaction_uid=r.transaction_uid,
        )
        for r in rows
    ]


# ------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class EventRow:
    """One row of the append-only event log."""

    at: datetime
    study_uid: str | None
    kind: str
    detail: dict[str, Any] | None


def events_query(f: AuditFilter, *, kind: str | None = None, limit: int | None = 100) -> Select:
    """Events in ``f``'s window; one study's timeline oldest first, otherwise newest first."""
    stmt = select(Event.at, Event.study_uid, Event.kind, Event.detail).where(*_window(Event.at, f))
    if kind is not None:
        stmt = stmt.where(Event.kind == kind)
    if f.study_uid is not None:
        stmt = stmt.where(Event.study_uid == f.study_uid).order_by(Event.at, Event.id)
    else:
        stmt = stmt.order_by(Event.at.desc(), Event.id.desc())
    return stmt.limit(limit) if limit else stmt


def events(
    store: Store, f: AuditFilter, *, kind: str | None = None, limit: int | None = 100
) -> list[EventRow]:
    """Run :func:`events_query`."""
    with store.session() as s:
        rows = s.execute(events_query(f, kind=kind, limit=limit)).all()
    return [EventRow(as_utc(r.at) or r.at, r.study_uid, r.kind, r.detail) for r in rows]


__all__ = [
    "SUMMARY_KEYS",
    "AuditFilter",
    "DeliveryRow",
    "EventRow",
    "StudyRow",
    "SummaryRow",
    "CommitmentRow",
    "commitments",
    "commitments_query",
    "deliveries",
    "deliveries_query",
    "events",
    "events_query",
    "parse_time",
    "studies",
    "studies_query",
    "summary",
    "summary_query",
]
