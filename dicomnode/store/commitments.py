"""Storage Commitment rows (:class:`~dicomnode.store.models.Commitment`): requested, reported, expired.

A destination's report that an object failed, or no report within the timeout, counts as a failed
delivery of that object: the row gets its reason, :func:`uncommitted_objects` no longer counts the
object as delivered, and the study's delivery round is due again (ANALYSED, the reconciler runs it),
so it is sent and its commitment asked for once more within the delivery retry window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicomnode.store.db import Store
from dicomnode.store.models import (
    DELIVERY_RETRY_REASON,
    Analysis,
    Commitment,
    Event,
    Study,
    StudyState,
    utcnow,
)

#: PS3.4 J.3.3 Failure Reason values, for the audit trail.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


def record_requested(
    store: Store,
    analysis_id: int,
    destination: str,
    transaction_uid: str,
    sop_instance_uids: Iterable[str],
    *,
    failed_reason: str | None = None,
) -> None:
    """One row per object of a commitment request: pending when the destination accepted it
    (N-ACTION Success), failed at once with ``failed_reason`` when it did not."""
    now = utcnow()
    with store.session() as s:
        s.add_all(
            Commitment(
                analysis_id=analysis_id,
                destination=destination,
                transaction_uid=transaction_uid,
                sop_instance_uid=uid,
                requested_at=now,
                failed_at=now if failed_reason else None,
                failed_reason=failed_reason,
            )
            for uid in sop_instance_uids
        )


def fail_request(store: Store, transaction_uid: str, reason: str) -> None:
    """The destination did not accept the request: its rows fail at once (the round retries)."""
    now = utcnow()
    with store.session() as s:
        s.execute(
            update(Commitment)
            .where(Commitment.transaction_uid == transaction_uid)
            .values(failed_at=now, failed_reason=reason)
        )


def _retry_studies(s: Session, analysis_ids: set[int], why: str, now: datetime) -> list[str]:
    """Put the studies of these analyses back to ANALYSED with their delivery due now."""
    if not analysis_ids:
        return []
    uids = list(
        s.scalars(
            select(Study.study_uid)
            .join(Analysis, Analysis.study_id == Study.id)
            .where(Analysis.id.in_(analysis_ids))
        )
    )
    s.execute(
        update(Study)
        .where(
            Study.study_uid.in_(uids),
            Study.state.in_(
                [StudyState.DELIVERED.value, StudyState.DELIVERY_FAILED.value, StudyState.ANALYSED.value]
            ),
        )
        .values(
            state=StudyState.ANALYSED.value,
            state_reason=f"{DELIVERY_RETRY_REASON} now ({why})",
            delivery_due_at=now,
            updated_at=now,
        )
    )
    for uid in uids:
        s.add(Event(kind="commitment.failed", study_uid=uid, detail={"reason": why}))
    return uids


@dataclass(frozen=True)
class ReportOutcome:
    """What one report changed: objects committed, objects failed, studies whose delivery is due again."""

    committed: int
    failed: int
    retried: list[str]


def record_report(
    store: Store, transaction_uid: str, committed: Iterable[str], failed: Iterable[tuple[str, int | None]]
) -> ReportOutcome | None:
    """Record a destination's report; None when no request of ours has this Transaction UID."""
    now = utcnow()
    ok = set(committed)
    reasons = {uid: code for uid, code in failed}
    with store.session() as s:
        rows = list(s.scalars(select(Commitment).where(Commitment.transaction_uid == transaction_uid)))
        if not rows:
            return None
        n_ok, bad = 0, []
        for row in rows:
            if row.sop_instance_uid in ok:
                row.committed_at, row.failed_at, row.failed_reason = now, None, None
                n_ok += 1
            elif row.sop_instance_uid in reasons:
                code = reasons[row.sop_instance_uid]
                meaning = FAILURE_REASONS.get(code or -1, "unknown failure reason")
                row.failed_at = now
                row.failed_reason = f"failure reason 0x{code or 0:04X} ({meaning})"
                bad.append(row)
        retried = _retry_studies(s, {r.analysis_id for r in bad}, "storage commitment failed", now)
    return ReportOutcome(n_ok, len(bad), retried)


def expire_overdue(store: Store, *, requested_before: datetime, limit: int = 1000) -> list[str]:
    """Commitments requested before ``requested_before`` with no report yet fail ("no report in
    time"), at most ``limit`` objects a call (the reconciler's next pass takes the rest); the
    studies whose delivery is due again."""
    now = utcnow()
    with store.session() as s:
        rows = list(
            s.scalars(
                select(Commitment)
                .where(
                    Commitment.requested_at < requested_before,
                    Commitment.committed_at.is_(None),
                    Commitment.failed_at.is_(None),
                )
                .order_by(Commitment.requested_at)
                .limit(limit)
            )
        )
        for row in rows:
            row.failed_at, row.failed_reason = now, "no storage commitment report in time"
        return _retry_studies(s, {r.analysis_id for r in rows}, "storage commitment report timed out", now)


def uncommitted_objects(store: Store, study_uid: str) -> set[tuple[str, str]]:
    """(destination, SOP Instance UID) pairs of the study whose latest commitment failed: they
    count as not delivered, so the next round sends them again."""
    with store.session() as s:
        rows = s.execute(
            select(Commitment.destination, Commitment.sop_instance_uid, Commitment.failed_at)
            .join(Analysis, Commitment.analysis_id == Analysis.id)
            .join(Study, Analysis.study_id == Study.id)
            .where(Study.study_uid == study_uid)
            .order_by(Commitment.requested_at, Commitment.id)
        ).all()
    latest: dict[tuple[str, str], bool] = {}
    for dest, uid, failed_at in rows:
        latest[(dest, uid)] = failed_at is not None
    return {k for k, failed in latest.items() if failed}


__all__ = [
    "FAILURE_REASONS",
    "ReportOutcome",
    "expire_overdue",
    "fail_request",
    "record_report",
    "record_requested",
    "uncommitted_objects",
]
