"""Radiologists' reads imported from CSV: the reference for real-world model performance.

A file has a header row and one read per line::

    study_uid,label,reader,read_at
    1.2.826.0.1.3680043.8.498.1,1,dr-a,2026-01-31T10:12:00Z

or ``accession_number`` instead of (or beside) ``study_uid``. ``label`` is 1 (pneumonia present)
or 0; ``reader`` and ``read_at`` (ISO 8601 date or date-time, UTC unless it says otherwise, not
in the future) may be empty. A study UID is ASCII digits and dots. Commas, semicolons or tabs
separate fields. The import is all-or-nothing: a bad line stops it with an error naming the file
and line. Reads of studies this node never received are counted and listed, not imported.
Importing the same read again (study, reader, read time) updates its label instead of adding a
second row; the same read twice in one file with two labels is an error naming both lines.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from sqlalchemy import select

from dicomnode.store.db import Store
from dicomnode.store.models import GroundTruth, Study, utcnow
from dicomnode.store.queries import as_utc

COLUMNS = ("study_uid", "accession_number", "label", "reader", "read_at")
_MAX_ERRORS = 20
_BATCH = 500
#: a DICOM UID (PS3.5 9.1): ASCII digits in dot-separated components (``\d`` would take any
#: Unicode digit, which no DICOM file can hold)
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
#: a read time further ahead than this is a typo (a wrong year), not a clock between time zones
_FUTURE_SLACK = timedelta(days=1)
T = TypeVar("T")


class GroundTruthError(ValueError):
    """The CSV cannot be imported; the message names the file and every bad line (up to 20)."""


@dataclass(frozen=True)
class TruthRow:
    """One parsed line of a ground-truth CSV."""

    line: int
    study_uid: str | None
    accession_number: str | None
    label: bool
    reader: str | None
    read_at: datetime | None


@dataclass
class ImportReport:
    """What an import did."""

    rows: int = 0
    imported: int = 0
    updated: int = 0  # the same read was already there; its label was set again
    unchanged: int = 0
    unmatched: list[str] = field(default_factory=list)  # "file:line study_uid=..." of unknown studies


def _parse_read_at(value: str) -> datetime:
    if len(value) == 10:
        d = date.fromisoformat(value)
        return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
    at = datetime.fromisoformat(value)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def parse_truth_csv(path: Path, *, now: datetime | None = None) -> list[TruthRow]:
    """Parse and check every line; raises :class:`GroundTruthError` listing the bad ones.

    ``now`` (default: the current time) is what a read time may not be more than a day after."""
    path = Path(path)
    latest_read = (now or utcnow()) + _FUTURE_SLACK
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise GroundTruthError(
            f"{path}: empty; the first line must be a header such as study_uid,label,reader,read_at"
        )
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(lines, dialect)
    header = [h.strip().lower() for h in next(reader)]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise GroundTruthError(
            f"{path} line 1: unknown column {unknown[0]!r}; columns are {', '.join(COLUMNS)}"
        )
    if "label" not in header or not {"study_uid", "accession_number"} & set(header):
        raise GroundTruthError(
            f"{path} line 1: the header needs a label column and a study_uid or accession_number column, "
            f"got {','.join(header)}"
        )
    rows: list[TruthRow] = []
    errors: list[str] = []
    for lineno, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            errors.append(f"{path} line {lineno}: {len(cells)} fields, the header has {len(header)}")
            continue
        v = {h: c.strip() for h, c in zip(header, cells, strict=True)}
        uid, acc = v.get("study_uid") or None, v.get("accession_number") or None
        problems = []
        if uid is None and acc is None:
            problems.append("no study_uid or accession_number")
        if uid is not None and (len(uid) > 64 or not _UID_RE.fullmatch(uid)):
            problems.append(f"study_uid {uid!r} is not a DICOM UID (ASCII digits and dots, at most 64)")
        if acc is not None and len(acc) > 16:
            problems.append(f"accession_number {acc!r} is longer than 16 characters")
        label = v["label"]
        if label not in ("0", "1"):
            problems.append(f"label {label!r} is not 0 or 1")
        read_at = None
        if v.get("read_at"):
            try:
                read_at = _parse_read_at(v["read_at"])
            except (ValueError, OverflowError):  # OverflowError: 9999-12-31T23:00-01:00 is past year 9999
                problems.append(
                    f"read_at {v['read_at']!r} is not an ISO 8601 date or date-time, e.g. 2026-01-31T10:12:00Z"
                )
            if read_at is not None and read_at > latest_read:
                problems.append(f"read_at {v['read_at']!r} is in the future; check the year")
        reader_name = v.get("reader") or None
        if reader_name is not None and len(reader_name) > 64:
            problems.append("reader is longer than 64 characters")
        if problems:
            errors.append(f"{path} line {lineno}: " + "; ".join(problems))
            continue
        rows.append(TruthRow(lineno, uid, acc, label == "1", reader_name, read_at))
    if errors:
        more = f"\n... and {len(errors) - _MAX_ERRORS} more" if len(errors) > _MAX_ERRORS else ""
        raise GroundTruthError(
            f"{len(errors)} bad line(s), nothing imported:\n" + "\n".join(errors[:_MAX_ERRORS]) + more
        )
    return rows


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + _BATCH] for i in range(0, len(items), _BATCH)]


def _conflicts(path: Path, matched: Sequence[tuple[TruthRow, int]]) -> list[str]:
    """Lines that give one read (study, reader, read time) two labels, each named with the line
    that gave it first: rows naming the study by UID and by accession number are the same study."""
    first: dict[tuple[int, str | None, datetime | None], TruthRow] = {}
    out = []
    for r, sid in matched:
        seen = first.setdefault((sid, r.reader, r.read_at), r)
        if seen.label != r.label:
            study = f"study_uid {r.study_uid}" if r.study_uid else f"accession_number {r.accession_number!r}"
            read = (
                f"reader {r.reader or '(none)'}, read_at {r.read_at.isoformat() if r.read_at else '(none)'}"
            )
            out.append(
                f"{path} lines {seen.line} and {r.line}: the same read of {study} ({read}) has label "
                f"{int(seen.label)} on line {seen.line} and {int(r.label)} on line {r.line}; "
                "keep the right one, or give each read its reader and read_at"
            )
    return out


def import_ground_truth(store: Store, path: Path, *, dry_run: bool = False) -> ImportReport:
    """Import a reads CSV into ``ground_truth`` (see the module docstring); all or nothing."""
    path = Path(path)
    rows = parse_truth_csv(path)
    report = ImportReport(rows=len(rows))
    with store.session() as s:
        by_uid: dict[str, int] = {}
        uids = sorted({r.study_uid for r in rows if r.study_uid})
        for chunk in _chunks(uids):
            q_uid = select(Study.study_uid, Study.id).where(Study.study_uid.in_(chunk))
            by_uid.update({uid: sid for uid, sid in s.execute(q_uid)})
        by_acc: dict[str, list[int]] = {}
        accs = sorted({r.accession_number for r in rows if r.accession_number and not r.study_uid})
        for chunk in _chunks(accs):
            q_acc = select(Study.accession_number, Study.id).where(Study.accession_number.in_(chunk))
            for acc, study_id in s.execute(q_acc):
                if acc is not None:
                    by_acc.setdefault(acc, []).append(study_id)
        matched: list[tuple[TruthRow, int]] = []
        errors = []
        for r in rows:
            if r.study_uid:
                found = by_uid.get(r.study_uid)
                if found is None:
                    report.unmatched.append(f"{path.name}:{r.line} study_uid={r.study_uid}")
                    continue
                sid = found
            else:
                assert r.accession_number is not None
                ids = by_acc.get(r.accession_number, [])
                if len(ids) > 1:
                    errors.append(
                        f"{path} line {r.line}: accession_number {r.accession_number!r} matches "
                        f"{len(ids)} studies; give the study_uid instead"
                    )
                    continue
                if not ids:
                    report.unmatched.append(f"{path.name}:{r.line} accession_number={r.accession_number}")
                    continue
                sid = ids[0]
            matched.append((r, sid))
        errors += _conflicts(path, matched)
        if errors:
            raise GroundTruthError(
                f"{len(errors)} bad line(s), nothing imported:\n" + "\n".join(errors[:_MAX_ERRORS])
            )
        existing: dict[tuple[int, str | None, datetime | None], GroundTruth] = {}
        for id_chunk in _chunks(sorted({sid for _, sid in matched})):
            for old in s.scalars(select(GroundTruth).where(GroundTruth.study_id.in_(id_chunk))):
                existing[(old.study_id, old.reader, as_utc(old.read_at))] = old
        now = utcnow()
        for r, sid in matched:
            key = (sid, r.reader, r.read_at)
            found_read = existing.get(key)
            if found_read is None:
                g = GroundTruth(
                    study_id=sid,
                    label=r.label,
                    reader=r.reader,
                    read_at=r.read_at,
                    source=f"{path.name}:{r.line}",
                    imported_at=now,
                )
                s.add(g)
                existing[key] = g
                report.imported += 1
            elif found_read.label != r.label:
                found_read.label, found_read.source = r.label, f"{path.name}:{r.line}"
                found_read.imported_at = now
                report.updated += 1
            else:
                report.unchanged += 1
        if dry_run:
            s.rollback()
    return report


__all__ = [
    "COLUMNS",
    "GroundTruthError",
    "ImportReport",
    "TruthRow",
    "import_ground_truth",
    "parse_truth_csv",
]
