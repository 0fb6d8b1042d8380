"""Worklist sources: the node's own SQL record, or result SRs (ours or another node's) in a folder.

The ordering itself is :func:`dicomnode.results.reading_order` (a pure function); this module only
gathers entries and renders them as a table, JSON or CSV.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import ColumnElement

from dicomnode.ops.tables import render_csv
from dicomnode.results import Priority, RankedEntry, WorklistEntry, read_sr
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState
from dicomnode.store.queries import studies_with_latest_analysis

#: Every complete study waits for a radiologist, whatever the AI made of it: a study the model
#: could not read (not applicable, failed) is listed as routine, never dropped from the list.
_OPEN_STATES = [s.value for s in StudyState if s is not StudyState.RECEIVING]


def entries_from_store(
    store: Store, *, since: datetime | None = None, limit: int | None = None
) -> list[WorklistEntry]:
    """One entry per complete study; priority from its latest scored analysis (ROUTINE when none).

    ``since``: only studies first received from then on; ``limit``: at most that many, the most
    recently received (the web page bounds its list with both)."""
    where: list[ColumnElement[bool]] = [Study.state.in_(_OPEN_STATES)]
    if since is not None:
        where.append(Study.first_received_at >= since)
    newest_first = [Study.first_received_at.desc(), Study.id.desc()] if limit is not None else []
    return [
        WorklistEntry(
            study_uid=r.study_uid,
            priority=Priority(r.priority) if r.priority else Priority.ROUTINE,
            probability=r.score,
            arrived_at=r.first_received_at,
            accession=r.accession_number or "",
        )
        for r in studies_with_latest_analysis(store, *where, order_by=newest_first, limit=limit, scored=True)
    ]


def entries_from_srs(paths: Iterable[Path]) -> tuple[list[WorklistEntry], list[str]]:
    """Entries from SR files (latest SR per study wins); also the files that were skipped and why.

    Arrival is the SR's content date/time (when the result was made), else the file's mtime.
    """
    latest: dict[str, tuple[datetime, WorklistEntry]] = {}
    skipped = []
    for p in paths:
        try:
            sr = read_sr(p)
        except (ValueError, OSError) as exc:
            skipped.append(f"{p}: {exc}")
            continue
        at = sr.observed_at or datetime.fromtimestamp(p.stat().st_mtime)
        # highdicom writes Content Date/Time in the producing node's local time: naive means local
        at = at if at.tzinfo else at.astimezone(timezone.utc)
        e = WorklistEntry(sr.study_uid, sr.priority, sr.probability, at)
        if sr.study_uid not in latest or latest[sr.study_uid][0] < at:
            latest[sr.study_uid] = (at, e)
    return [e for _, e in latest.values()], skipped


#: The worklist's columns, in order (the CSV header, also when the list is empty).
COLUMNS = (
    "rank",
    "study_uid",
    "accession",
    "priority",
    "probability",
    "reason",
    "arrived_at",
    "waited_minutes",
)


def _rows(ranked: list[RankedEntry]) -> list[dict[str, object]]:
    return [
        {
            "rank": r.rank,
            "study_uid": r.study_uid,
            "accession": r.entry.accession,
            "priority": r.entry.priority.value,
            "probability": None if r.entry.probability is None else round(r.entry.probability, 4),
            "reason": r.reason.value,
            "arrived_at": r.entry.arrived_at.isoformat(),
            "waited_minutes": round(r.waited.total_seconds() / 60, 1),
        }
        for r in ranked
    ]


def render(ranked: list[RankedEntry], fmt: str) -> str:
    """The reading order as ``table``, ``json`` or ``csv``."""
    rows = _rows(ranked)
    if fmt == "json":
        return json.dumps(rows, indent=1)
    if fmt == "csv":  # the accession number comes from the sender: escaped like every CSV cell
        return render_csv(rows, COLUMNS).rstrip("\n")  # print() ends the last line
    lines = [f"{'#':>3} {'reason':<8} {'prob':>6} {'waited':>8}  study UID"]
    for r in rows:
        prob = "-" if r["probability"] is None else f"{r['probability']:.3f}"
        lines.append(f"{r['rank']:>3} {r['reason']:<8} {prob:>6} {r['waited_minutes']:>6}m  {r['study_uid']}")
    return "\n".join(lines)
