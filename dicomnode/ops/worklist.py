"""Worklist sources: the node's own SQL record, or result SRs (ours or another node's) in a folder.

The ordering itself is :func:`dicomnode.results.reading_order` (a pure function); this module only
gathers entries and renders them as a table, JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select

from dicomnode.results import Priority, RankedEntry, WorklistEntry, read_sr
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Study, StudyState
from dicomnode.store.queries import as_utc

#: Every complete study waits for a radiologist, whatever the AI made of it: a study the model
#: could not read (not applicable, failed) is listed as routine, never dropped from the list.
_OPEN_STATES = [s.value for s in StudyState if s is not StudyState.RECEIVING]


def entries_from_store(store: Store) -> list[WorklistEntry]:
    """One entry per complete study; priority from its latest analysis (ROUTINE when none)."""
    out = []
    with store.session() as s:
        for st in s.scalars(select(Study).where(Study.state.in_(_OPEN_STATES))):
            a = s.scalar(
                select(Analysis)
                .where(Analysis.study_id == st.id, Analysis.score.is_not(None))
                .order_by(Analysis.id.desc())
                .limit(1)
            )
            out.append(
                WorklistEntry(
                    study_uid=st.study_uid,
                    priority=Priority(a.priority) if a and a.priority else Priority.ROUTINE,
                    probability=a.score if a else None,
                    arrived_at=as_utc(st.first_received_at) or st.first_received_at,
                    accession=st.accession_number or "",
                )
            )
    return out


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
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["rank"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
    lines = [f"{'#':>3} {'reason':<8} {'prob':>6} {'waited':>8}  study UID"]
    for r in rows:
        prob = "-" if r["probability"] is None else f"{r['probability']:.3f}"
        lines.append(f"{r['rank']:>3} {r['reason']:<8} {prob:>6} {r['waited_minutes']:>6}m  {r['study_uid']}")
    return "\n".join(lines)
