"""The node's C-STORE policy: what the listener's callback does with each received instance.

:mod:`dicomnode.net` receives each data set into a file in the node's incoming folder and hands it
here as a :class:`dicomnode.net.StoreRequest`. A C-STORE is answered Success only after the
instance is on disk (fsynced, renamed into place) and recorded in SQL. Only the header up to the
Series Instance UID is parsed (:mod:`dicomnode.receive.header`). Every refusal is a named status
from :mod:`dicomnode.net.status` plus a log line with UIDs only.

Sloppy headers (docs/pacs-integration.md, "Sloppy headers"): a modality's real study must not be
lost over a careless value, and no value may be answered Success and then fail its SQL row (the
study would never be analysed, and PostgreSQL and SQLite would disagree on what fails). So:

- a UID (SOP Class, SOP Instance, Study, Series) loses its trailing NUL (or space) padding and must
  then be a valid UID, digits and dots, at most 64 characters
  (:func:`dicomnode.storage.normalise_uid`); otherwise the instance is refused with 0xC210
  (cannot understand), and 0xA900 when it differs from the request's;
- a free-text value SQL cannot hold (an Accession Number or Modality over its 16 characters, or
  one with a NUL) is recorded as NULL; the instance is stored as sent, and an
  ``instance.header_value_dropped`` event and a log line name the attribute, never the value
  (:func:`dicomnode.store.records.fit_to_columns`).

Access (PS3.7 D.3.3.2, PS3.15 B.1) is enforced before this, by the listener: the called AE title
must be ours; with an allow list only the listed calling AE titles may associate; with a
certificate the port speaks TLS only (:mod:`dicomnode.net.tls`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom.errors import InvalidDicomError

from dicomnode.net import STORAGE_SOP_CLASSES, StoreRequest, status
from dicomnode.receive.header import InstanceHeader, read_header, read_header_from
from dicomnode.receive.provenance import passive_reason
from dicomnode.receive.recorder import InstanceRecorder
from dicomnode.storage import (
    DeflateError,
    GroupCommit,
    InflateLimitError,
    UnsafeUIDError,
    inflated_size,
    instance_path,
    is_deflated,
    move_atomic,
    read_file_meta,
)
from dicomnode.store.db import Store
from dicomnode.store.queries import instance_path_of
from dicomnode.store.records import InstanceOutcome, InstanceRecord, add_event, fit_to_columns

log = structlog.get_logger("dicomnode.scp")


@dataclass(frozen=True)
class ReceivedInstance:
    """Handed to the tracker after an instance is durably stored (or kept as a duplicate)."""

    study_uid: str
    sop_instance_uid: str
    calling_ae: str


#: Errors pydicom raises on corrupt or truncated input (and ours for unusable UIDs).
_PARSE_ERRORS = (
    InvalidDicomError,
    UnsafeUIDError,
    AttributeError,
    KeyError,
    ValueError,
    TypeError,
    EOFError,
    OSError,
    NotImplementedError,
    OverflowError,
)


class StoreHandler:
    """What the listener calls for each C-STORE: validate, store durably, record, notify.

    ``duplicate_policy`` decides what a SOP Instance UID that is already stored does: ``overwrite``
    replaces the file atomically and updates its row; ``ignore`` keeps the first file and answers
    Success. Both record an event.

    A deflated data set is measured before it is kept: one that inflates past
    ``max_inflated_bytes`` (0: no limit) is refused with 0xA700, as one past
    DICOMNODE_MAX_DATASET_BYTES is; its header is only ever inflated a few MiB
    (:data:`dicomnode.receive.header.HEADER_INFLATE_BYTES`), past which it is refused with 0xC210."""

    def __init__(
        self,
        store: Store,
        instances_dir: Path,
        on_stored: Callable[[ReceivedInstance], None],
        *,
        duplicate_policy: str = "overwrite",
        fsync: bool = True,
        max_inflated_bytes: int = 0,
        group_commit: GroupCommit | None = None,
    ) -> None:
        self.store = store
        self.max_inflated_bytes = max_inflated_bytes
        self.instances_dir = instances_dir
        self.on_stored = on_stored
        self.duplicate_policy = duplicate_policy
        self.fsync = fsync
        #: shares the fsyncs of concurrent associations in user space; None (the node's default):
        #: each association fsyncs on its own thread, and the filesystem's journal already merges
        #: concurrent fsyncs into one commit (ext4, XFS), faster here (docs/sizing.md, "Group commit")
        self.group_commit = group_commit if fsync else None
        self.recorder = InstanceRecorder(store, self._recorded)

    def start(self) -> StoreHandler:
        self.recorder.start()
        return self

    def stop(self) -> None:
        """Commit the rows still queued (their files are already stored)."""
        self.recorder.stop()
        if self.group_commit is not None and self.group_commit.writes:
            gc = self.group_commit  # writes/flushes: how many fsync waits each flush saved
            log.info("store.flushes", flushes=gc.flushes, writes=gc.writes, failures=gc.failures)

    def __call__(self, req: StoreRequest) -> int:
        ae = req.calling_ae
        sop_class = req.sop_class_uid
        sop_uid = req.sop_instance_uid
        bound = log.bind(calling_ae=ae, sop_instance_uid=sop_uid, sop_class_uid=sop_class)
        if sop_class not in STORAGE_SOP_CLASSES:
            bound.warning(
                "store.refused", reason="sop class not supported", status=status.SOP_CLASS_NOT_SUPPORTED
            )
            return status.SOP_CLASS_NOT_SUPPORTED
        try:
            hdr = read_header_from(req.head, req.transfer_syntax_uid) or read_header(req.path)
            target = instance_path(self.instances_dir, hdr.study_uid, hdr.series_uid, hdr.sop_instance_uid)
        except _PARSE_ERRORS as exc:
            return self._refuse_unparseable(bound, exc)
        except Exception as exc:  # pydicom raises a zoo of errors on corrupt input
            return self._refuse_unparseable(bound, exc)
        if hdr.sop_class_uid != sop_class or hdr.sop_instance_uid != sop_uid:
            bound.warning(
                "store.refused",
                reason="data set does not match request",
                dataset_sop_class_uid=hdr.sop_class_uid[:64],
                dataset_sop_instance_uid=hdr.sop_instance_uid[:64],
                status=status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        bound = bound.bind(study_uid=hdr.study_uid)
        if self.max_inflated_bytes and is_deflated(req.transfer_syntax_uid):
            refused = self._refuse_deflate_bomb(bound, req.path)
            if refused is not None:
                return refused
        if not self.recorder.accepting:
            bound.error("store.db_unavailable", status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES

        if self.duplicate_policy == "ignore":
            try:
                kept = self.recorder.pending_path(sop_uid) or instance_path_of(self.store, sop_uid)
            except Exception as exc:
                bound.error("store.db_unavailable", error=type(exc).__name__, status=status.OUT_OF_RESOURCES)
                return status.OUT_OF_RESOURCES
            if kept is not None and Path(kept).is_file():
                return self._keep_first(bound, hdr, ae, kept)

        passive = passive_reason(self.store, hdr, req.path, target)  # before the move: no PACS loops
        try:
            stored = move_atomic(req.path, target, sync=self.fsync, commit=self.group_commit)
        except OSError as exc:
            bound.error("store.write_failed", error=str(exc)[:200], status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        rec = fit_to_columns(
            InstanceRecord(
                study_uid=hdr.study_uid,
                series_uid=hdr.series_uid,
                sop_instance_uid=hdr.sop_instance_uid,
                sop_class_uid=hdr.sop_class_uid,
                transfer_syntax_uid=req.transfer_syntax_uid,
                modality=hdr.modality,
                path=str(stored.path),
                size_bytes=stored.size_bytes,
                sha256=None,  # taken once the burst is over (dicomnode.receive.fingerprint)
                calling_ae=ae,
                accession_number=hdr.accession_number,
                passive=passive,
            )
        )
        if rec.dropped:
            bound.warning("store.header_value_dropped", attributes=list(rec.dropped), detail="stored as NULL")
        if not self.recorder.submit(rec):
            # The file is whole but unrecorded; the start-up rescan records it, and a re-send
            # overwrites it. The sender must retry, so we do not claim success.
            bound.error("store.record_backlog_full", status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        bound.debug("store.ok", bytes=stored.size_bytes)
        return status.SUCCESS

    def _recorded(self, rec: InstanceRecord, outcome: InstanceOutcome) -> None:
        """The row committed (recorder thread): tidy up after a duplicate, start the quiet period."""
        if outcome.duplicate:
            if outcome.previous_path not in (None, rec.path):
                # same instance, new study/series: the old file is no longer the instance
                Path(str(outcome.previous_path)).unlink(missing_ok=True)
            log.info(
                "store.duplicate_overwritten",
                calling_ae=rec.calling_ae,
                study_uid=rec.study_uid,
                sop_instance_uid=rec.sop_instance_uid,
                policy=self.duplicate_policy,
            )
        self.on_stored(ReceivedInstance(rec.study_uid, rec.sop_instance_uid, rec.calling_ae or ""))

    def _keep_first(self, bound: Any, hdr: InstanceHeader, ae: str, kept: str) -> int:
        try:
            add_event(
                self.store,
                "instance.duplicate_ignored",
                hdr.study_uid,
                sop_instance_uid=hdr.sop_instance_uid,
                calling_ae=ae,
            )
        except Exception as exc:
            bound.error("store.record_failed", error=type(exc).__name__, status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        bound.info("store.duplicate_ignored", kept=kept, policy="ignore")
        self.on_stored(ReceivedInstance(hdr.study_uid, hdr.sop_instance_uid, ae))
        return status.SUCCESS

    def _refuse_deflate_bomb(self, bound: Any, path: Path) -> int | None:
        """Measure the deflated data set at ``path`` without holding it: the refusal status when it
        inflates past the limit or is no deflate stream, else None."""
        try:
            with open(path, "rb") as fh:
                read_file_meta(fh)
                size = inflated_size(fh, self.max_inflated_bytes)
        except InflateLimitError:
            bound.error(
                "store.refused",
                reason="deflated data set inflates past DICOMNODE_MAX_INFLATED_BYTES",
                limit=self.max_inflated_bytes,
                status=status.OUT_OF_RESOURCES,
            )
            return status.OUT_OF_RESOURCES
        except (DeflateError, OSError, ValueError) as exc:
            return self._refuse_unparseable(bound, exc)
        bound.debug("store.inflated_size", bytes=size)
        return None

    @staticmethod
    def _refuse_unparseable(bound: Any, exc: BaseException) -> int:
        reason = (
            "deflated data set: header not within the first bytes inflated"
            if isinstance(exc, InflateLimitError)
            else "cannot parse data set"
        )
        bound.warning(
            "store.refused", reason=reason, error=type(exc).__name__, status=status.CANNOT_UNDERSTAND
        )
        return status.CANNOT_UNDERSTAND


__all__ = ["ReceivedInstance", "StoreHandler"]
