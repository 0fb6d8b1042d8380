"""The Storage + Verification SCP: pynetdicom AE and its C-STORE handler.

A C-STORE is answered Success only after the instance is on disk (fsynced, renamed into place) and
recorded in SQL. Instances are received to a temporary file in chunks (never whole in memory) and
only the header is parsed; pixel data is never decoded here. Every refusal is a named status from
:mod:`dicomnode.status` plus a log line with UIDs only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from . import status
from .storage import UnsafeUIDError, instance_path, move_atomic
from .store.db import Store
from .store.records import InstanceRecord, record_instance

log = structlog.get_logger("dicomnode.scp")

# Receive C-STORE data sets into a temp file instead of memory (see pynetdicom _config).
_config.STORE_RECV_CHUNKED_DATASET = True
# Accept any proposed storage context; the handler decides (0x0122 for classes we do not store),
# so the sender gets a DIMSE status instead of a silently rejected context.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# Never log C-STORE identifiers (they carry patient data).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: The storage SOP classes we store: pynetdicom's full storage list.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


@dataclass(frozen=True)
class ReceivedInstance:
    """Handed to the tracker after an instance is durably stored."""

    study_uid: str
    sop_instance_uid: str
    calling_ae: str


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _header(event: evt.Event) -> Any:
    # Chunked receive: the data set sits in a temp file; read only up to the pixel data.
    try:
        path = event.dataset_path
    except AttributeError:
        ds = event.dataset
        ds.file_meta = event.file_meta
        return ds
    return dcmread(path, stop_before_pixels=True)


class StoreHandler:
    """The EVT_C_STORE handler: validate, store durably, record, notify."""

    def __init__(
        self, store: Store, instances_dir: Path, on_stored: Callable[[ReceivedInstance], None]
    ) -> None:
        self.store = store
        self.instances_dir = instances_dir
        self.on_stored = on_stored

    def __call__(self, event: evt.Event) -> int:
        ae = _calling_ae(event)
        req = event.request
        sop_class = str(event.context.abstract_syntax)
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        bound = log.bind(calling_ae=ae, sop_instance_uid=sop_uid, sop_class_uid=sop_class)
        if sop_class not in STORAGE_SOP_CLASSES:
            bound.warning(
                "store.refused", reason="sop class not supported", status=status.SOP_CLASS_NOT_SUPPORTED
            )
            return status.SOP_CLASS_NOT_SUPPORTED
        try:
            ds = _header(event)
            study_uid = str(ds.StudyInstanceUID)
            series_uid = str(ds.SeriesInstanceUID)
            ds_sop_uid = str(ds.SOPInstanceUID)
            ds_sop_class = str(ds.SOPClassUID)
            modality = str(ds.get("Modality", "") or "") or None
            accession = str(ds.get("AccessionNumber", "") or "") or None
            target = instance_path(self.instances_dir, study_uid, series_uid, ds_sop_uid)
        except (
            InvalidDicomError,
            UnsafeUIDError,
            AttributeError,
            KeyError,
            ValueError,
            TypeError,
            EOFError,
            OSError,
        ) as exc:
            bound.warning(
                "store.refused",
                reason="cannot parse data set",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                status=status.CANNOT_UNDERSTAND,
            )
            return status.CANNOT_UNDERSTAND
        except Exception as exc:  # pydicom raises a zoo of errors on corrupt input
            bound.warning(
                "store.refused",
                reason="cannot parse data set",
                error=type(exc).__name__,
                status=status.CANNOT_UNDERSTAND,
            )
            return status.CANNOT_UNDERSTAND
        if ds_sop_class != sop_class or ds_sop_uid != sop_uid:
            bound.warning(
                "store.refused",
                reason="data set does not match request",
                dataset_sop_class_uid=ds_sop_class,
                dataset_sop_instance_uid=ds_sop_uid,
                status=status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        try:
            try:
                stored = move_atomic(event.dataset_path, target)
            except AttributeError:
                from .storage import write_atomic

                stored = write_atomic(target, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            bound.error(
                "store.write_failed", study_uid=study_uid, error=str(exc), status=status.OUT_OF_RESOURCES
            )
            return status.OUT_OF_RESOURCES
        try:
            outcome = record_instance(
                self.store,
                InstanceRecord(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_instance_uid=ds_sop_uid,
                    sop_class_uid=ds_sop_class,
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    modality=modality,
                    path=str(stored.path),
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    calling_ae=ae,
                    accession_number=accession,
                ),
            )
        except Exception as exc:
            # The file is whole but unrecorded; the start-up re-scan reconciles it. The sender
            # must retry, so we do not claim success.
            bound.error(
                "store.record_failed",
                study_uid=study_uid,
                error=type(exc).__name__,
                status=status.OUT_OF_RESOURCES,
            )
            return status.OUT_OF_RESOURCES
        bound.debug("store.ok", study_uid=study_uid, bytes=stored.size_bytes, duplicate=outcome.duplicate)
        self.on_stored(ReceivedInstance(study_uid, ds_sop_uid, ae))
        return status.SUCCESS


def _on_echo(event: evt.Event) -> int:
    log.info("echo", calling_ae=_calling_ae(event))
    return status.SUCCESS


def _on_assoc(event: evt.Event) -> None:
    log.info("association.accepted", calling_ae=_calling_ae(event), peer=event.assoc.requestor.address)


def _on_reject(event: evt.Event) -> None:
    log.warning("association.rejected", calling_ae=_calling_ae(event), peer=event.assoc.requestor.address)


def _on_abort(event: evt.Event) -> None:
    log.warning("association.aborted", calling_ae=_calling_ae(event))


def build_ae(ae_title: str) -> AE:
    """The node's AE: every storage SOP class in every transfer syntax, plus Verification."""
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 0  # no limit: large DX images arrive in fewer PDUs
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.require_called_aet = True
    return ae


def handlers(store_handler: StoreHandler) -> list[tuple[Any, Callable[..., Any]]]:
    """The event handlers bound when the SCP starts."""
    return [
        (evt.EVT_C_STORE, store_handler),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_ACCEPTED, _on_assoc),
        (evt.EVT_REJECTED, _on_reject),
        (evt.EVT_ABORTED, _on_abort),
    ]


def use_incoming_dir(path: Path) -> None:
    """Receive into ``path`` (same filesystem as storage, so stored files are renamed, not copied)."""
    path.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(path)
    os.environ.setdefault("TMPDIR", str(path))


__all__ = [
    "STORAGE_SOP_CLASSES",
    "ReceivedInstance",
    "StoreHandler",
    "build_ae",
    "handlers",
    "use_incoming_dir",
    "UID",
]
