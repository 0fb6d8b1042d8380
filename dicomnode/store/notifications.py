"""Urgent-finding notification rows (:class:`~dicomnode.store.models.Notification`): created, claimed,
attempted, delivered or failed.

:mod:`dicomnode.delivery.hook` does the HTTP; this module is its SQL. Every attempt updates the row
and appends a ``notification.attempt`` event in the same transaction, so the row and the audit
trail never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError

from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Notification, NotificationState, Study, utcnow


@dataclass(frozen=True)
class UrgentAnalysis:
    """What an urgent-finding notification says about one analysis (no patient name or ID)."""

    analysis_id: int
    study_uid: str
    accession_number: str | None
    score: float | None
    threshold: float | None
    priority: str
    model_name: str
    model_version: str
    analysed_at: datetime | None
    sr_sop_instance_uid: str | None
    sc_sop_instance_uid: str | None


def urgent_analysis(store: Store, analysis_id: int, priority: str = "urgent") -> UrgentAnalysis | None:
    """The analysis with its study's accession number, if its priority is ``priority``; else None."""
    with store.session() as s:
        row = s.execute(
            select(Analysis, Study.study_uid, Study.accession_number)
            .join(Study, Analysis.study_id == Study.id)
            .where(Analysis.id == analysis_id)
        ).first()
        if row is None or row[0].priority != priority:
            return None
        a, study_uid, accession = row
        return UrgentAnalysis(
            analysis_id=a.id,
            study_uid=study_uid,
            accession_number=accession,
            score=a.score,
            threshold=a.threshold,
            priority=str(a.priority),
            model_name=a.model_name,
            model_version=a.model_version,
            analysed_at=a.inferred_at or a.results_built_at or a.started_at,
            sr_sop_instance_uid=a.sr_sop_instance_uid,
            sc_sop_instance_uid=a.sc_sop_instance_uid,
        )


def create_notifications(
    store: Store, analysis_id: int, study_uid: str, urls: Sequence[str], payload: dict[str, Any]
) -> int:
    """One PENDING row per URL that has none for this analysis yet, due now; how many were made.

    Idempotent: a second delivery round of the same analysis (a re-send, a retry after a restart)
    finds the rows and makes none, so a finding is notified once per URL."""
    made = 0
    for url in urls:
        try:
            with store.session() as s:
                exists = s.scalar(
                    select(Notification.id).where(
                        Notification.analysis_id == analysis_id, Notification.url == url
                    )
                )
                if exists is not None:
                    continue
                now = utcnow()
                s.add(
                    Notification(
                        analysis_id=analysis_id,
                        study_uid=study_uid,
                        url=url,
                        payload=payload,
                        state=NotificationState.PENDING.value,
                        attempts=0,
                        created_at=now,
                        next_attempt_at=now,
                    )
                )
            made += 1
        except IntegrityError:  # another round made it between the check and the insert
            continue
    return made


@dataclass(frozen=True)
class DueNotification:
    """A PENDING notification whose next attempt is due."""

    id: int
    study_uid: str
    url: str
    payload: dict[str, Any]
    attempts: int
    next_attempt_at: datetime
    first_attempt_at: datetime | None


def due_notifications(
    store: Store, *, due_before: datetime, analysis_id: int | None = None, limit: int = 100
) -> list[DueNotification]:
    """PENDING notifications due before ``due_before`` (of one analysis, or all), most overdue first."""
    stmt = select(
        Notification.id,
        Notification.study_uid,
        Notification.url,
        Notification.payload,
        Notification.attempts,
        Notification.next_attempt_at,
        Notification.first_attempt_at,
    ).where(
        Notification.state == NotificationState.PENDING.value,
        Notification.next_attempt_at < due_before,
    )
    if analysis_id is not None:
        stmt = stmt.where(Notification.analysis_id == analysis_id)
    with store.session() as s:
        rows = s.execute(stmt.order_by(Notification.next_attempt_at).limit(limit)).all()
    return [DueNotification(*row) for row in rows]


def claim_notification(store: Store, n: DueNotification, *, lease_until: datetime) -> bool:
    """Take a due notification for one attempt: True for exactly one caller, which moves
    ``next_attempt_at`` to ``lease_until`` (the attempt's outcome then sets the real next one)."""
    with store.session() as s:
        stmt = (
            update(Notification)
            .where(
                Notification.id == n.id,
                Notification.state == NotificationState.PENDING.value,
                Notification.next_attempt_at == n.next_attempt_at,
            )
            .values(next_attempt_at=lease_until)
        )
        return cast(CursorResult[Any], s.execute(stmt)).rowcount > 0


def record_notification_attempt(
    store: Store,
    n: DueNotification,
    *,
    attempted_at: datetime,
    http_status: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
    target: str,
) -> NotificationState:
    """Record one attempt: delivered (no ``error``), pending again (``next_attempt_at``) or failed
    (neither); the row and a ``notification.attempt`` event (plus ``notification.delivered`` or
    ``notification.failed`` at the end) in one transaction. Returns the new state."""
    attempt = n.attempts + 1
    if error is None:
        state = NotificationState.DELIVERED
    elif next_attempt_at is not None:
        state = NotificationState.PENDING
    else:
        state = NotificationState.FAILED
    values: dict[str, Any] = {
        "state": state.value,
        "attempts": attempt,
        "last_attempt_at": attempted_at,
        "next_attempt_at": next_attempt_at if state is NotificationState.PENDING else None,
    }
    if n.first_attempt_at is None:
        values["first_attempt_at"] = attempted_at
    if error is not None:
        values["last_error"] = error
    if state is NotificationState.DELIVERED:
        values["delivered_at"] = attempted_at
    elif state is NotificationState.FAILED:
        values["failed_at"] = attempted_at
    detail = {"notification_id": n.id, "target": target, "attempt": attempt, "http_status": http_status}
    with store.session() as s:
        s.execute(update(Notification).where(Notification.id == n.id).values(**values))
        s.add(Event(kind="notification.attempt", study_uid=n.study_uid, detail={**detail, "error": error}))
        if state is not NotificationState.PENDING:
            s.add(Event(kind=f"notification.{state.value}", study_uid=n.study_uid, detail=detail))
    return state


def study_notifications(store: Store, study_uid: str) -> list[Notification]:
    """Every notification of a study's analyses, oldest first (for ``dicomnode audit`` and tests)."""
    with store.session() as s:
        rows = s.scalars(
            select(Notification).where(Notification.study_uid == study_uid).order_by(Notification.id)
        ).all()
        s.expunge_all()
        return list(rows)


__all__ = [
    "DueNotification",
    "UrgentAnalysis",
    "claim_notification",
    "create_notifications",
    "due_notifications",
    "record_notification_attempt",
    "study_notifications",
    "urgent_analysis",
]
