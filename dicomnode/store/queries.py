"""Read side of the store: what the tracker, the pipeline, the CLI and the worklist ask."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import func, select

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
    """All instances recorded for a study, in arrival order."""
    with store.session() as s:
        stmt = (
            select(Instance)
            .join(Study)
            .where(Study.study_uid == study_uid)
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


def studies_awaiting_delivery(store: Store) -> list[str]:
    """Analysed studies whose next delivery round was scheduled (and may have been lost with
    the process that held the timer)."""
    with store.session() as s:
        rows = s.scalars(
            select(Study.study_uid).where(
                Study.state == StudyState.ANALYSED.value,
                Study.state_reason.startswith(DELIVERY_RETRY_REASON),
            )
        ).all()
    return list(rows)


def latest_analysis(store: Store, study_uid: str) -> Analysis | None:
    """The most recent analysis row of a study."""
    with store.session() as s:
        return s.scalar(
            select(Analysis)
            .join(Study)
            .where(Study.study_uid == study_uid)
            .order_by(Analysis.id.desc())
            .limit(1)
        )


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
    with store.session() as s:
        studies = list(s.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)))
        out = []
        for st in studies:
            a = s.scalar(
                select(Analysis).where(Analysis.study_id == st.id).order_by(Analysis.id.desc()).limit(1)
            )
            out.append(
                ResultRow(
                    study_uid=st.study_uid,
                    state=st.state,
                    reason=st.state_reason,
                    instances=st.instance_count,
                    last_received_at=as_utc(st.last_received_at) or st.last_received_at,
                    score=a.score if a else None,
                    priority=a.priority if a else None,
                    model_version=a.model_version if a else None,
                    finished_at=as_utc(a.finished_at) if a else None,
                    delivered_at=as_utc(a.delivered_at) if a else None,
                )
            )
    return out


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
