"""Start-up re-scan: make the files on disk and the SQL rows agree before the SCP listens.

The SCP renames an instance into place, then records it; a crash between the two leaves a whole
file that SQL does not know (the sender never got Success and will usually re-send, but the bytes
are good). The re-scan records such files from their header. Rows whose file is gone (deleted by
hand, a restored database, a lost disk) are logged and get an ``instance.file_missing`` event once:
the row stays, so the audit trail does too, marked ``missing_at``, and later starts skip it like a
row whose file retention purged (:mod:`dicomnode.store.retention`). A purged or missing row whose
file is back on disk loses its mark (``instance.file_returned``).

The re-scan never stops the node from starting over one file: a file whose row SQL refuses is
moved to ``<storage>/quarantine/<study>/<series>/`` with an ``instance.quarantined`` event (UIDs
and the error's type only: the exception's text would carry header values such as the Accession
Number) and the re-scan goes on. Only a database that is down stops it (the node cannot run
without one).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from dicomnode.receive.header import read_header
from dicomnode.receive.recorder import _database_down
from dicomnode.storage import DIR_MODE, instance_path, sha256_of, stored_files
from dicomnode.store.db import Store
from dicomnode.store.records import InstanceRecord, add_event, record_instance
from dicomnode.store.retention import (
    gone_instance_locations,
    live_instance_locations,
    mark_files_missing,
    mark_files_returned,
)

log = structlog.get_logger("dicomnode.recovery")

#: At most this many per-file log lines of one kind per re-scan (the event log has them all).
_LOG_LIMIT = 20


@dataclass(frozen=True)
class RescanReport:
    """What the re-scan found and did."""

    files: int  # instance files on disk
    rows: int  # instance rows in SQL
    recorded: int  # files on disk that SQL did not know, now recorded
    missing: int  # rows whose file is gone
    unreadable: int  # files on disk whose header cannot be read (left in place)
    superseded: int  # files of an instance SQL records at another path (left in place)
    seconds: float
    quarantined: int = 0  # files whose row SQL refused, moved to the quarantine folder


def quarantine_dir_of(instances_dir: Path) -> Path:
    """Where the re-scan moves files it cannot record: ``quarantine`` beside ``instances``."""
    return instances_dir.parent / "quarantine"


def rescan(store: Store, instances_dir: Path, quarantine_dir: Path | None = None) -> RescanReport:
    """Record unrecorded files, report rows without a file; returns counts.

    A file whose row cannot be recorded goes to ``quarantine_dir`` (default
    :func:`quarantine_dir_of`); the database being down raises."""
    quarantine_dir = quarantine_dir_of(instances_dir) if quarantine_dir is None else quarantine_dir
    t0 = time.monotonic()
    known = {os.path.abspath(p): uid for p, uid in live_instance_locations(store).items()}
    gone = {os.path.abspath(p): uid for p, uid in gone_instance_locations(store).items()}
    known_uids = set(known.values()) | set(gone.values())
    files = recorded = unreadable = superseded = quarantined = 0
    seen: set[str] = set()
    returned: list[str] = []
    for path in stored_files(instances_dir):
        files += 1
        key = os.path.abspath(path)
        seen.add(key)
        if key in known:
            continue
        if key in gone:  # purged or reported missing, and back where its row says
            returned.append(gone[key])
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
        if hdr.sop_instance_uid in known_uids or os.path.abspath(expected) != key:
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
            _quarantine(store, path, instances_dir, quarantine_dir, hdr.study_uid, hdr.sop_instance_uid, exc)
            continue
        add_event(store, "instance.recovered", hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
        known_uids.add(hdr.sop_instance_uid)
        recorded += 1
        log.info("rescan.recorded", study_uid=hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
    lost = [(uid, key) for key, uid in known.items() if key not in seen and not os.path.exists(key)]
    for uid, key in lost[:_LOG_LIMIT]:
        log.warning("rescan.file_missing", sop_instance_uid=uid, path=key)
    missing = mark_files_missing(store, lost)  # once: a marked row is skipped from now on
    if returned:
        mark_files_returned(store, returned)
        log.info("rescan.files_returned", files=len(returned))
    report = RescanReport(
        files=files,
        rows=len(known),
        recorded=recorded,
        missing=missing,
        unreadable=unreadable,
        superseded=superseded,
        seconds=round(time.monotonic() - t0, 3),
        quarantined=quarantined,
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
