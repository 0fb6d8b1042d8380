"""Instance rows whose file is gone on purpose (purged) or found gone (missing), for the re-scan.

Retention (:mod:`dicomnode.ops.purge`) deletes files and keeps their rows, marked ``purged_at``;
the start-up re-scan marks a row whose file it finds gone ``missing_at`` the first time, with one
``instance.file_missing`` event. Both kinds are then left out of every later re-scan, so a start
after a purge of 10,000 studies does not stat their files or log them again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, or_, select, update

from dicomnode.store.db import Store
from dicomnode.store.models import Event, Instance, Study, utcnow

__all__ = ["gone_instance_locations", "live_instance_locations", "mark_files_missing", "mark_files_returned"]

#: Rows updated per statement: an IN list stays well under every database's parameter limit.
_BATCH = 500


def live_instance_locations(store: Store) -> dict[str, str]:
    """Path -> SOP Instance UID of every instance whose file should be on disk."""
    with store.session() as s:
        rows = s.execute(
            select(Instance.path, Instance.sop_instance_uid).where(
                Instance.purged_at.is_(None), Instance.missing_at.is_(None)
            )
        )
        return {path: uid for path, uid in rows}


def gone_instance_locations(store: Store) -> dict[str, str]:
    """Path -> SOP Instance UID of every instance purged or already reported missing."""
    with store.session() as s:
        rows = s.execute(
            select(Instance.path, Instance.sop_instance_uid).where(
                or_(Instance.purged_at.is_not(None), Instance.missing_at.is_not(None))
            )
        )
        return {path: uid for path, uid in rows}


def mark_files_missing(store: Store, gone: Iterable[tuple[str, str]], now: datetime | None = None) -> int:
    """Mark ``(sop_instance_uid, path)`` rows missing, one ``instance.file_missing`` event each, in
    batches of one transaction; returns how many."""
    now = now or utcnow()
    items = list(gone)
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        with store.engine.begin() as conn:
            conn.execute(
                update(Instance)
                .where(Instance.sop_instance_uid.in_([uid for uid, _ in batch]))
                .values(missing_at=now)
            )
            conn.execute(
                insert(Event),
                [
                    {
                        "at": now,
                        "kind": "instance.file_missing",
                        "detail": {"sop_instance_uid": uid, "path": path},
                    }
                    for uid, path in batch
                ],
            )
    return len(items)


def mark_files_returned(store: Store, uids: Iterable[str]) -> int:
    """A purged or missing row whose file is on disk again (restored from a backup, re-sent):
    clear both marks and the study's, one ``instance.file_returned`` event each."""
    items = list(uids)
    now = utcnow()
    for start in range(0, len(items), _BATCH):
        batch = items[start : start + _BATCH]
        with store.engine.begin() as conn:
            conn.execute(
                update(Instance)
                .where(Instance.sop_instance_uid.in_(batch))
                .values(purged_at=None, missing_at=None)
            )
            study_ids = select(Instance.study_id).where(Instance.sop_instance_uid.in_(batch))
            conn.execute(update(Study).where(Study.id.in_(study_ids)).values(purged_at=None))
            conn.execute(
                insert(Event),
                [
                    {"at": now, "kind": "instance.file_returned", "detail": {"sop_instance_uid": u}}
                    for u in batch
                ],
            )
    return len(items)
