"""Start-up re-scan: make the files on disk and the SQL rows agree, after the SCP listens.

The SCP renames an instance into place, then records it; a crash between the two leaves a whole
file that SQL does not know (the sender never got Success and will usually re-send, but the bytes
are good). The re-scan records such files from their header; the node hands each study it
recorded to the tracker, like a study left RECEIVING (:meth:`dicomnode.node.Node.start`). Rows
whose file is gone (deleted by hand, a restored database, a lost disk) are logged and get an
``instance.file_missing`` event once: the row stays, so the audit trail does too, marked
``missing_at``, and later starts skip it like a row whose file retention purged
(:mod:`dicomnode.store.retention`). A purged or missing row whose file is back on disk loses its
mark (``instance.file_returned``).

It runs on a thread of its own once the port is open, so a big storage folder never keeps a PACS
waiting on a node that looks down, and in batches of :data:`BATCH` files (the study folders are
walked, each batch looked up in SQL by path) and :data:`BATCH` rows, so memory does not grow with
the store. While it runs, the C-STORE handler writes and records instances too; the two never
meet because the re-scan only looks at what is older than the node's start (``before``): files
whose mtime and rows whose ``received_at`` are earlier. A file the handler writes after the start
has a later mtime (it is written in ``incoming/`` and renamed into place, which keeps the mtime),
and a row it records or updates gets a later ``received_at``; a file is stat'ed again right
before its row is written, and a row is read again right before it is marked missing.

The re-scan never stops the node over one file: a file whose row SQL refuses is moved to
``<storage>/quarantine/<study>/<series>/`` with an ``instance.quarantined`` event (UIDs and the
error's type only: the exception's text would carry header values such as the Accession Number)
and the re-scan goes on. Only a database that is down stops it (the node logs
``node.rescan_failed``; the next start scans again).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import structlog
from sqlalchemy import select

from dicomnode.receive.header import read_header
from dicomnode.receive.recorder import _database_down
from dicomnode.storage import DIR_MODE, instance_path, sha256_of, stored_files
from dicomnode.store.db import Store
from dicomnode.store.models import Instance
from dicomnode.store.records import InstanceRecord, add_event, record_instance
from dicomnode.store.retention import mark_files_missing, mark_files_returned

log = structlog.get_logger("dicomnode.recovery")

#: At most this many per-file log lines of one kind per re-scan (the event log has them all).
_LOG_LIMIT = 20

#: Files (and rows) looked at per SQL query: bounds memory whatever the size of the store.
BATCH = 1000


@dataclass(frozen=True)
class RescanReport:
    """What the re-scan found and did."""

    files: int  # instance files on disk older than the start
    rows: int  # live instance rows in SQL older than the start
    recorded: int  # files on disk that SQL did not know, now recorded
    missing: int  # rows whose file is gone
    unreadable: int  # files on disk whose header cannot be read (left in place)
    superseded: int  # files of an instance SQL records at another path (left in place)
    seconds: float
    quarantined: int = 0  # files whose row SQL refused, moved to the quarantine folder
    complete: bool = True  # False: stopped part way (the node stopped); the next start scans again


def quarantine_dir_of(instances_dir: Path) -> Path:
    """Where the re-scan moves files it cannot record: ``quarantine`` beside ``instances``."""
    return instances_dir.parent / "quarantine"


@dataclass(frozen=True)
class _Row:
    sop_instance_uid: str
    path: str
    gone: bool  # purged or already reported missing


def _batches(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _older(path: Path, before: float | None) -> bool:
    """Whether the file is there and was written before the start (``None``: no limit)."""
    try:
        mtime = path.stat().st_mtime
    except OSError:  # gone meanwhile (retention, an overwrite that moved it): not ours
        return False
    return before is None or mtime < before


def _rows_at(store: Store, keys: list[str]) -> dict[str, _Row]:
    """Absolute path -> row, for the rows recorded at one of ``keys``."""
    with store.session() as s:
        rows = s.execute(
            select(Instance.sop_instance_uid, Instance.path, Instance.purged_at, Instance.missing_at).where(
                Instance.path.in_(keys)
            )
        )
        return {
            os.path.abspath(r.path): _Row(
                r.sop_instance_uid, r.path, r.purged_at is not None or r.missing_at is not None
            )
            for r in rows
        }


def _row_of(store: Store, sop_instance_uid: str) -> _Row | None:
    with store.session() as s:
        r = s.execute(
            select(Instance.sop_instance_uid, Instance.path, Instance.purged_at, Instance.missing_at).where(
                Instance.sop_instance_uid == sop_instance_uid
            )
        ).first()
    if r is None:
        return None
    return _Row(r.sop_instance_uid, r.path, r.purged_at is not None or r.missing_at is not None)


def _live_rows(store: Store, before: datetime, size: int) -> Iterator[list[tuple[int, str, str]]]:
    """``(id, sop_instance_uid, path)`` of the rows whose file should be on disk, recorded before
    ``before``, ``size`` at a time (keyset on the id: rows recorded meanwhile do not shift it)."""
    after = 0
    while True:
        q = select(Instance.id, Instance.sop_instance_uid, Instance.path).where(
            Instance.id > after, Instance.purged_at.is_(None), Instance.missing_at.is_(None)
        )
        q = q.where(Instance.received_at < before)
        with store.session() as s:
            chunk = [
                (r.id, r.sop_instance_uid, r.path) for r in s.execute(q.order_by(Instance.id).limit(size))
            ]
        if not chunk:
            return
        yield chunk
        after = chunk[-1][0]


def _still_lost(
    store: Store, lost: list[tuple[int, str, str]], before: datetime | None
) -> list[tuple[str, str]]:
    """The rows of ``lost`` that are still live, unchanged since read and without a file: the
    handler may have recorded the instance again meanwhile, or retention purged it."""
    with store.session() as s:
        q = select(Instance.id, Instance.path).where(
            Instance.id.in_([i for i, _, _ in lost]),
            Instance.purged_at.is_(None),
            Instance.missing_at.is_(None),
        )
        q = q.where(Instance.received_at < before)
        now = {r.id: r.path for r in s.execute(q)}
    return [(uid, path) for i, uid, path in lost if now.get(i) == path and not os.path.exists(path)]


def rescan(
    store: Store,
    instances_dir: Path,
    quarantine_dir: Path | None = None,
    *,
    before: float | None = None,
    on_recorded: Callable[[str], None] | None = None,
    batch: int = BATCH,
    stop: threading.Event | None = None,
) -> RescanReport:
    """Record unrecorded files, report rows without a file; returns counts.

    ``before`` (a ``time.time()``): only files modified and rows recorded earlier are looked at;
    what is newer belongs to the live C-STORE handler. ``on_recorded`` is called with the Study
    Instance UID of every file recorded. ``stop`` set: return after the batch in hand. A file whose row cannot be recorded goes to
    ``quarantine_dir`` (default :func:`quarantine_dir_of`); the database being down raises."""
    quarantine_dir = quarantine_dir_of(instances_dir) if quarantine_dir is None else quarantine_dir
    t0 = time.monotonic()
    # rows recorded from here on (by the handler, or by this re-scan) are not counted or checked
    before_dt = datetime.fromtimestamp(time.time() if before is None else before, timezone.utc)
    files = rows = recorded = unreadable = superseded = quarantined = missing = returned_n = 0
    stopped = False
    for chunk in _batches(stored_files(instances_dir), batch):
        if stop is not None and stop.is_set():
            stopped = True
            break
        paths = [p for p in chunk if _older(p, before)]
        files += len(paths)
        known = _rows_at(store, sorted({str(p) for p in paths} | {os.path.abspath(p) for p in paths}))
        returned: list[str] = []
        for path in paths:
            key = os.path.abspath(path)
            row = known.get(key)
            if row is not None:
                if row.gone:  # purged or reported missing, and back where its row says
                    returned.append(row.sop_instance_uid)
                continue
            try:
                hdr = read_header(path)
                expected = instance_path(instances_dir, hdr.study_uid, hdr.series_uid, hdr.sop_instance_uid)
            except Exception as exc:  # whatever pydicom raises on a file we cannot use
                unreadable += 1
                if unreadable <= _LOG_LIMIT:
                    log.warning("rescan.unreadable", path=str(path), error=type(exc).__name__)
                add_event(store, "instance.unreadable_file", path=str(path), error=type(exc).__name__)
                continue
            other = _row_of(store, hdr.sop_instance_uid)
            if other is not None and os.path.abspath(other.path) == key:
                continue  # recorded meanwhile (a re-send the handler took): not ours
            if other is not None or os.path.abspath(expected) != key:
                # SQL has this instance elsewhere (an overwrite that moved it), or the file is not where
                # its own UIDs would put it: SQL stays the truth, the file is reported.
                superseded += 1
                log.warning("rescan.superseded_file", path=str(path), sop_instance_uid=hdr.sop_instance_uid)
                add_event(
                    store,
                    "instance.superseded_file",
                    hdr.study_uid,
                    path=str(path),
                    sop_instance_uid=hdr.sop_instance_uid,
                )
                continue
            if not _older(path, before):  # replaced by a re-send since it was read: the handler's
                continue
            try:
                record_instance(
                    store,
                    InstanceRecord(
                        study_uid=hdr.study_uid,
                        series_uid=hdr.series_uid,
                        sop_instance_uid=hdr.sop_instance_uid,
                        sop_class_uid=hdr.sop_class_uid,
                        transfer_syntax_uid=hdr.transfer_syntax_uid,
                        modality=hdr.modality,
                        path=str(path),
                        size_bytes=path.stat().st_size,
                        sha256=sha256_of(path),
                        calling_ae=None,  # unknown: the association that sent it is gone
                        accession_number=hdr.accession_number,
                    ),
                )
            except Exception as exc:
                if _database_down(exc):
                    raise
                quarantined += 1
                _quarantine(
                    store, path, instances_dir, quarantine_dir, hdr.study_uid, hdr.sop_instance_uid, exc
                )
                continue
            add_event(store, "instance.recovered", hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
            recorded += 1
            log.info("rescan.recorded", study_uid=hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
            if on_recorded is not None:
                on_recorded(hdr.study_uid)
        if returned:
            returned_n += mark_files_returned(store, returned)
    for live in [] if stopped else _live_rows(store, before_dt, batch):
        if stop is not None and stop.is_set():
            stopped = True
            break
        rows += len(live)
        lost = [r for r in live if not os.path.exists(r[2])]
        if not lost:
            continue
        confirmed = _still_lost(store, lost, before_dt)
        for uid, key in confirmed[: max(0, _LOG_LIMIT - missing)]:
            log.warning("rescan.file_missing", sop_instance_uid=uid, path=key)
        missing += mark_files_missing(store, confirmed)  # once: a marked row is skipped from now on
    if returned_n:
        log.info("rescan.files_returned", files=returned_n)
    report = RescanReport(
        files=files,
        rows=rows - returned_n,  # the live rows at start: a returned row was not one
        recorded=recorded,
        missing=missing,
        unreadable=unreadable,
        superseded=superseded,
        seconds=round(time.monotonic() - t0, 3),
        quarantined=quarantined,
        complete=not stopped,
    )
    log.info("rescan.done", **report.__dict__)
    return report


def _quarantine(
    store: Store,
    path: Path,
    instances_dir: Path,
    quarantine_dir: Path,
    study_uid: str,
    sop_instance_uid: str,
    exc: BaseException,
) -> None:
    """Move a file SQL refused out of the instances folder (kept whole, same relative path) and say
    so; ``str(exc)`` is never logged: a database error quotes the row's values."""
    target = quarantine_dir / path.relative_to(instances_dir)
    n = 0
    while target.exists():  # an earlier start quarantined the same instance: keep both
        n += 1
        target = target.with_name(f"{path.stem}.{n}{path.suffix}")
    error = type(exc).__name__
    try:
        target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError as move_error:  # left in place: reported again at the next start
        log.error(
            "rescan.quarantine_failed",
            study_uid=study_uid,
            sop_instance_uid=sop_instance_uid,
            error=error,
            move_error=type(move_error).__name__,
            detail=f"move {path} out of the instances folder by hand",
        )
        return
    log.error(
        "rescan.quarantined",
        study_uid=study_uid,
        sop_instance_uid=sop_instance_uid,
        error=error,
        path=str(target),
        detail="SQL refused its row; the file is kept whole; see docs/pacs-integration.md",
    )
    try:
        add_event(
            store,
            "instance.quarantined",
            study_uid,
            sop_instance_uid=sop_instance_uid,
            error=error,
            path=str(target),
        )
    except Exception as event_error:
        if _database_down(event_error):
            raise
        log.error("rescan.event_failed", sop_instance_uid=sop_instance_uid, error=type(event_error).__name__)
