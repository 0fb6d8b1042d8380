"""Read side of the store: what the tracker, the pipeline, the CLI and the worklist ask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import aliased

from dicomnode.store.db import Store
from dicomnode.store.models import (
    DELIVERY_RETRY_REASON,
    Analysis,
    DeliveryAttempt,
    Instance,
    Study,
    StudyState,
)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def study_instances(store: Store, study_uid: str) -> list[Instance]:
    """A study's instances still on disk (not purged by retention), in arrival order."""
    with store.session() as s:
        stmt = (
            select(Instance)
            .join(Study)
            .where(Study.study_uid == study_uid, Instance.purged_at.is_(None))
            .order_by(Instance.received_at, Instance.id)
        )
        return list(s.scalars(stmt))


def instance_by_sop_uid(store: Store, sop_instance_uid: str) -> Instance | None:
    """The instance row of a SOP Instance UID, or None if it was never stored."""
    with store.session() as s:
        return s.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def instance_path_of(store: Store, sop_instance_uid: str) -> str | None:
    """Where a SOP Instance UID is stored, or None (one indexed lookup: the SCP asks per C-STORE)."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
        ).scalar_one_or_none()


def instance_locations(store: Store) -> dict[str, str]:
    """Every recorded instance as {file path: SOP Instance UID} (the start-up re-scan compares it
    with the files on disk)."""
    with store.session() as s:
        return {path: uid for path, uid in s.execute(select(Instance.path, Instance.sop_instance_uid))}


def study_state(store: Store, study_uid: str) -> StudyState | None:
    """The study's current state, or None if it is unknown."""
    with store.session() as s:
        v = s.scalar(select(Study.state).where(Study.study_uid == study_uid))
    return StudyState(v) if v else None


def studies_in_state(store: Store, *states: StudyState) -> list[tuple[str, datetime]]:
    """(study UID, last received) for studies in any of ``states``, oldest first."""
    with store.session() as s:
        rows = s.execute(
            select(Study.study_uid, Study.last_received_at)
            .where(Study.state.in_([x.value for x in states]))
            .order_by(Study.last_received_at)
        ).all()
    return [(uid, as_utc(at) or at) for uid, at in rows]


def studies_awaiting_delivery(store: Store) -> list[tuple[str, int]]:
    """(study UID, latest analysis ID) of analysed studies whose next delivery round was scheduled
    (and may have been lost with the process that held the timer), in one query."""
    rows = studies_with_latest_analysis(
        store,
        Study.state == StudyState.ANALYSED.value,
        Study.state_reason.startswith(DELIVERY_RETRY_REASON),
    )
    return [(r.study_uid, r.analysis_id) for r in rows if r.analysis_id is not None]


def latest_analysis_join(dialect: str, *, scored: bool = False) -> tuple[Any, Any, ColumnElement[bool]]:
    """(analysis entity, what to outer-join to :class:`Study`, on what) for "each study with its
    latest analysis" in one statement: the one definition of *latest* (highest ``analyses.id``).

    PostgreSQL gets a LATERAL ... ORDER BY id DESC LIMIT 1 (an index probe per study; with a
    correlated max(id) in the join condition it prefers hashing the whole analyses table);
    SQLite, which has no LATERAL, probes the same index with a correlated max(id).
    Both use the index analyses(study_id, id). ``scored=True`` takes the latest analysis that
    produced a score (the worklist's priority), skipping later ones that failed or did not apply.
    """
    only_scored = [Analysis.score.is_not(None)] if scored else []
    if dialect == "postgresql":
        latest = (
            select(Analysis)
            .where(Analysis.study_id == Study.id, *only_scored)
            .order_by(Analysis.id.desc())
            .limit(1)
            .lateral("latest_analysis")
        )
        return aliased(Analysis, latest), latest, true()
    newest = (
        select(func.max(Analysis.id))
        .where(Analysis.study_id == Study.id, *only_scored)
        .correlate(Study)
        .scalar_subquery()
    )
    return Analysis, Analysis, Analysis.id == newest


@dataclass(frozen=True)
class StudyLatest:
    """A study and its latest analysis (the analysis fields are None when it has none)."""

    study_uid: str
    state: str
    state_reason: str | None
    instance_count: int
    accession_number: str | None
    first_received_at: datetime
    last_received_at: datetime
    analysis_id: int | None
    model_version: str | None
    score: float | None
    priority: str | None
    finished_at: datetime | None
    delivered_at: datetime | None


def studies_with_latest_analysis(
    store: Store,
    *where: ColumnElement[bool],
    order_by: Sequence[Any] = (),
    limit: int | None = None,
    scored: bool = False,
) -> list[StudyLatest]:
    """Studies matching ``where``, each with its latest analysis, in one query
    (:func:`latest_analysis_join`); ``scored=True``: the latest analysis that has a score."""
    a, join_to, on = latest_analysis_join(store.engine.dialect.name, scored=scored)
    if limit is not None:
        # pick the studies first: otherwise both backends join every match before sorting
        where = (Study.id.in_(select(Study.id).where(*where).order_by(*order_by).limit(limit)),)
    stmt = (
        select(
            Study.study_uid,
            Study.state,
            Study.state_reason,
            Study.instance_count,
            Study.accession_number,
            Study.first_received_at,
            Study.last_received_at,
            a.id,
            a.model_version,
            a.score,
            a.priority,
            a.finished_at,
            a.delivered_at,
        )
        .outerjoin(join_to, on)
        .where(*where)
        .order_by(*order_by)
    )
    with store.session() as s:
        rows = s.execute(stmt).all()
    return [
        StudyLatest(
            uid, state, reason, n, accession, as_utc(first) or first, as_utc(last) or last,
            aid, version, score, priority, as_utc(finished), as_utc(delivered),
        )
        for uid, state, reason, n, accession, first, last, aid, version, score, priority, finished, delivered
        in rows
    ]  # fmt: skip


def latest_analysis(store: Store, study_uid: str) -> Analysis | None:
    """The most recent analysis row of a study (:func:`latest_analysis_join` for one study)."""
    a, join_to, on = latest_analysis_join(store.engine.dialect.name)
    with store.session() as s:
        return s.scalar(select(a).select_from(Study).join(join_to, on).where(Study.study_uid == study_uid))


@dataclass(frozen=True)
class ResultRow:
    """One line of ``dicomnode results``: a study and its latest analysis."""

    study_uid: str
    state: str
    reason: str | None
    instances: int
    last_received_at: datetime
    score: float | None
    priority: str | None
    model_version: str | None
    finished_at: datetime | None
    delivered_at: datetime | None

    @property
    def seconds_to_result(self) -> float | None:
        """Last instance received -> results delivered (or built, with no destination)."""
        end = self.delivered_at or self.finished_at
        if end is None:
            return None
        return (end - self.last_received_at).total_seconds()


def result_rows(store: Store, limit: int = 100) -> list[ResultRow]:
    """Most recent studies first, each with its latest analysis (if any)."""
    return [
        ResultRow(
            study_uid=r.study_uid,
            state=r.state,
            reason=r.state_reason,
            instances=r.instance_count,
            last_received_at=r.last_received_at,
            score=r.score,
            priority=r.priority,
            model_version=r.model_version,
            finished_at=r.finished_at,
            delivered_at=r.delivered_at,
        )
        for r in studies_with_latest_analysis(store, order_by=[Study.last_received_at.desc()], limit=limit)
    ]


def attempts_made(store: Store, analysis_id: int) -> dict[str, int]:
    """Destination -> the highest delivery attempt number recorded for an analysis."""
    with store.session() as s:
        rows = s.execute(
            select(DeliveryAttempt.destination, func.max(DeliveryAttempt.attempt))
            .where(DeliveryAttempt.analysis_id == analysis_id)
            .group_by(DeliveryAttempt.destination)
        ).all()
    return {str(dest): int(n) for dest, n in rows}


def delivered_objects(store: Store, study_uid: str) -> set[tuple[str, str]]:
    """(destination, SOP Instance UID) pairs already stored at a destination for the study's
    current content (by analyses that started after its last instance arrived)."""
    with store.session() as s:
        rows = s.execute(
            select(DeliveryAttempt.destination, DeliveryAttempt.sop_instance_uid)
            .join(Analysis, DeliveryAttempt.analysis_id == Analysis.id)
            .join(Study, Analysis.study_id == Study.id)
            .where(
                Study.study_uid == study_uid,
                DeliveryAttempt.success.is_(True),
                Analysis.started_at >= Study.last_received_at,
            )
        ).all()
    return {(d, u) for d, u in rows}


@dataclass(frozen=True)
class StrandedStudy:
    """A study the reconciler may have to hand on again (:mod:`dicomnode.receive.reconcile`)."""

    study_uid: str
    state: StudyState
    claimed_at: datetime | None  # as stored: the lease a claim must find unchanged


def stranded_studies(
    store: Store, states: Sequence[StudyState], *, stale_before: datetime, limit: int = 100
) -> list[StrandedStudy]:
    """Studies in ``states`` last handed on (or, never handed on, last changed) before
    ``stale_before``, oldest first."""
    since = func.coalesce(Study.claimed_at, Study.updated_at)
    with store.session() as s:
        rows = s.execute(
            select(Study.study_uid, Study.state, Study.claimed_at)
            .where(Study.state.in_([x.value for x in states]), since < stale_before)
            .order_by(since)
            .limit(limit)
        ).all()
    return [StrandedStudy(uid, StudyState(state), claimed) for uid, state, claimed in rows]


def quiet_receiving_studies(store: Store, *, last_received_before: datetime, limit: int = 100) -> list[str]:
    """Studies still RECEIVING whose last instance arrived before ``last_received_before``."""
    with store.session() as s:
        return list(
            s.scalars(
                select(Study.study_uid)
                .where(
                    Study.state == StudyState.RECEIVING.value, Study.last_received_at < last_received_before
                )
                .order_by(Study.last_received_at)
                .limit(limit)
            )
        )


@dataclass(frozen=True)
class DueDelivery:
    """An analysed study whose next delivery round is due."""

    study_uid: str
    analysis_id: int
    due_at: datetime  # as stored: the value a claim must find unchanged


def due_deliveries(store: Store, *, due_before: datetime, limit: int = 100) -> list[DueDelivery]:
    """ANALYSED studies whose next delivery round was due before ``due_before``, with their latest
    analysis, most overdue first."""
    a, join_to, on = latest_analysis_join(store.engine.dialect.name)
    with store.session() as s:
        rows = s.execute(
            select(Study.study_uid, a.id, Study.delivery_due_at)
            .outerjoin(join_to, on)
            .where(Study.state == StudyState.ANALYSED.value, Study.delivery_due_at < due_before)
            .order_by(Study.delivery_due_at)
            .limit(limit)
        ).all()
    return [DueDelivery(uid, aid, due) for uid, aid, due in rows if aid is not None]


@dataclass(frozen=True)
class DestinationAttempt:
    """The latest delivery attempt to a destination among studies whose delivery is pending."""

    destination: str
    success: bool
    status: int | None
    error: str | None
    attempted_at: datetime


def pending_delivery_attempts(store: Store) -> tuple[dict[str, DestinationAttempt], dict[str, list[str]]]:
    """For studies with a delivery round pending: each destination's latest attempt, and the
    studies (UIDs) whose latest analysis has not yet reached each destination.

    Reads only the studies with ``delivery_due_at`` set (an index range) and their attempts."""
    with store.session() as s:
        rows = s.execute(
            select(
                Study.study_uid,
                DeliveryAttempt.id,
                DeliveryAttempt.destination,
                DeliveryAttempt.success,
                DeliveryAttempt.status,
                DeliveryAttempt.error,
                DeliveryAttempt.attempted_at,
            )
            .join(Analysis, Analysis.study_id == Study.id)
            .join(DeliveryAttempt, DeliveryAttempt.analysis_id == Analysis.id)
            .where(Study.delivery_due_at.is_not(None), Study.state == StudyState.ANALYSED.value)
            .order_by(DeliveryAttempt.id)
        ).all()
    latest: dict[str, DestinationAttempt] = {}
    delivered: set[tuple[str, str]] = set()
    tried: dict[str, set[str]] = {}
    for uid, _, dest, ok, st, err, at in rows:
        latest[dest] = DestinationAttempt(dest, bool(ok), st, err, as_utc(at) or at)
        tried.setdefault(dest, set()).add(uid)
        if ok:
            delivered.add((dest, uid))
    waiting = {dest: sorted(u for u in uids if (dest, u) not in delivered) for dest, uids in tried.items()}
    return latest, waiting


def first_attempt_at(store: Store, analysis_id: int) -> datetime | None:
    """When the first delivery attempt of an analysis was made (None: none yet)."""
    with store.session() as s:
        at = s.scalar(
            select(func.min(DeliveryAttempt.attempted_at)).where(DeliveryAttempt.analysis_id == analysis_id)
        )
    return as_utc(at)


def destinations_down(store: Store) -> dict[str, str]:
    """Destinations (``AE@host:port``) whose latest attempt, among studies with a delivery
    pending, failed without an association (refused, unreachable, timed out): name -> error."""
    latest, _ = pending_delivery_attempts(store)
    return {d: (a.error or "") for d, a in latest.items() if not a.success and a.status is None}
