"""Start-up re-scan: make the files on disk and the SQL rows agree before the SCP listens.

The SCP renames an instance into place, then records it; a crash between the two leaves a whole
file that SQL does not know (the sender never got Success and will usually re-send, but the bytes
are good). The re-scan records such files from their header. Rows whose file is gone (deleted by
hand, a restored database, a lost disk) are logged and get an ``instance.file_missing`` event; the
row stays, so the audit trail does too.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from dicomnode.receive.header import read_header
from dicomnode.storage import instance_path, sha256_of, stored_files
from dicomnode.store.db import Store
from dicomnode.store.queries import instance_locations
from dicomnode.store.records import InstanceRecord, add_event, record_instance

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


def rescan(store: Store, instances_dir: Path) -> RescanReport:
    """Record unrecorded files, report rows without a file; returns counts."""
    t0 = time.monotonic()
    known = {os.path.abspath(p): uid for p, uid in instance_locations(store).items()}
    known_uids = set(known.values())
    files = recorded = unreadable = superseded = 0
    seen: set[str] = set()
    for path in stored_files(instances_dir):
        files += 1
        key = os.path.abspath(path)
        seen.add(key)
        if key in known:
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
        add_event(store, "instance.recovered", hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
        known_uids.add(hdr.sop_instance_uid)
        recorded += 1
        log.info("rescan.recorded", study_uid=hdr.study_uid, sop_instance_uid=hdr.sop_instance_uid)
    missing = 0
    for key, uid in known.items():
        if key in seen or os.path.exists(key):
            continue
        missing += 1
        if missing <= _LOG_LIMIT:
            log.warning("rescan.file_missing", sop_instance_uid=uid, path=key)
        add_event(store, "instance.file_missing", sop_instance_uid=uid, path=key)
    report = RescanReport(
        files=files,
        rows=len(known),
        recorded=recorded,
        missing=missing,
        unreadable=unreadable,
        superseded=superseded,
        seconds=round(time.monotonic() - t0, 3),
    )
    log.info("rescan.done", **report.__dict__)
    return report
