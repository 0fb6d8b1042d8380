"""The node's C-STORE handler and what it needs: header parse, storage rules, TLS context.

:mod:`dicomnode.net.listener` receives each data set into a file in the node's incoming folder and hands
it here. A C-STORE is answered Success only after the instance is on disk (fsynced, renamed into
place) and recorded in SQL. Only the header up to the Series Instance UID is parsed; pixel data is
never decoded here. Every refusal is a named status from :mod:`dicomnode.net.status` plus a log line with
UIDs only.

Access (PS3.7 D.3.3.2, PS3.15 B.1), enforced by the listener: the called AE title must be ours; with
an allow list only the listed calling AE titles may associate; with a certificate the port speaks
TLS only and, with a CA, peers must present a certificate the CA signed.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime, not in the stub

from dicomnode.config import Settings
from dicomnode.net import status
from dicomnode.net.listener import StoreRequest
from dicomnode.receive.recorder import InstanceRecorder
from dicomnode.receive.storage import UnsafeUIDError, instance_path, move_atomic
from dicomnode.store.db import Store
from dicomnode.store.queries import instance_path_of
from dicomnode.store.records import InstanceOutcome, InstanceRecord, add_event

log = structlog.get_logger("dicomnode.scp")

# pynetdicom still carries our outgoing associations (delivery, push, echo) and the test PACS.
# Never log C-STORE identifiers (they carry patient data); its "standard" handlers format a debug
# dump of every PDU and DIMSE message even when nobody logs at DEBUG: switch them off.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"

#: The storage SOP classes we store: pynetdicom's full storage list.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)

#: The last top-level attribute the SCP reads: Series Instance UID (0020,000E). Everything the
#: handler needs (SOP Class/Instance UID, Accession Number, Modality, Study/Series UID) comes before.
_LAST_HEADER_TAG = 0x0020000E
#: Attributes that name the stored file and its row: each must be present and encoded as UI.
_UID_TAGS: dict[str, int] = {
    keyword: int(tag_for_keyword(keyword) or 0)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
}


# --------------------------------------------------------------------------------------------
# header


@dataclass(frozen=True)
class InstanceHeader:
    """What the node needs from a data set's header (no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    accession_number: str | None
    transfer_syntax_uid: str


def _past_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_HEADER_TAG


def read_header(path: str | Path) -> InstanceHeader:
    """Parse a Part 10 file up to its Series Instance UID; raises on anything unreadable."""
    with open(path, "rb") as fh:
        ds = read_partial(fh, stop_when=_past_header, defer_size=4096)
    return _header_of(ds, str(ds.file_meta.get("TransferSyntaxUID", "") or ""))


def read_header_from(head: bytes, transfer_syntax_uid: str) -> InstanceHeader | None:
    """Parse the header from the first bytes of a data set as it came off the network (no file
    meta), or None when ``head`` does not reach past the Series Instance UID, the data set is
    deflated or anything goes wrong: then :func:`read_header` on the file decides."""
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax or ts.is_deflated:
        return None
    fp = io.BytesIO(head)
    try:
        ds = read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian, stop_when=_past_header, defer_size=4096)
    except Exception:  # e.g. an element cut off at the end of ``head``
        return None
    if fp.tell() >= len(head):  # ran out of bytes rather than reaching the stop tag
        return None
    try:
        return _header_of(ds, transfer_syntax_uid)
    except Exception:
        return None  # the whole file gives the error its proper name


def _uid(ds: Dataset, keyword: str, tag: int) -> str:
    """A UID attribute as text; raises KeyError when missing, ValueError when not encoded as UI.

    Straight from the raw bytes as pydicom read them (``convert_UI`` less the :class:`UID` object
    and its validation regex, a third of the header parse): UIDs are checked once more, strictly,
    before they name a file (:func:`dicomnode.receive.storage.instance_path`)."""
    elem = ds.get_item(tag)
    if elem is None:
        raise KeyError(keyword)
    # None: implicit VR, where the dictionary says UI; UN: explicit VR from a writer that did not
    # know the tag, which pydicom reads as UI too (config.replace_un_with_known_vr). Any other VR
    # takes pydicom's path below, which names what is wrong with it.
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.VR in (None, "UI", "UN"):
        return elem.value.decode("latin-1").rstrip("\0 ")
    vr = ds[keyword].VR  # NotImplementedError for a VR that does not exist
    if vr != "UI":
        raise ValueError(f"{keyword} is encoded with VR {vr}, not UI")
    return str(ds[keyword].value)


def _header_of(ds: Dataset, transfer_syntax_uid: str) -> InstanceHeader:
    ts = UID(transfer_syntax_uid)
    first = ds.get_item(0x00080016)  # SOP Class UID, still raw: it says how it was actually read
    if ts.is_transfer_syntax and isinstance(first, RawDataElement):
        if (first.is_implicit_VR, first.is_little_endian) != (ts.is_implicit_VR, ts.is_little_endian):
            # pydicom reads on with a guess; any other reader of the stored file would not
            raise ValueError(f"data set encoding does not match transfer syntax {ts}")
    uids = {keyword: _uid(ds, keyword, tag) for keyword, tag in _UID_TAGS.items()}
    return InstanceHeader(
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=str(ds.get("Modality", "") or "") or None,
        accession_number=str(ds.get("AccessionNumber", "") or "") or None,
        transfer_syntax_uid=transfer_syntax_uid,
    )


# --------------------------------------------------------------------------------------------
# C-STORE


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
    Success. Both record an event."""

    def __init__(
        self,
        store: Store,
        instances_dir: Path,
        on_stored: Callable[[ReceivedInstance], None],
        *,
        duplicate_policy: str = "overwrite",
        fsync: bool = True,
    ) -> None:
        self.store = store
        self.instances_dir = instances_dir
        self.on_stored = on_stored
        self.duplicate_policy = duplicate_policy
        self.fsync = fsync
        self.recorder = InstanceRecorder(store, self._recorded)

    def start(self) -> StoreHandler:
        self.recorder.start()
        return self

    def stop(self) -> None:
        """Commit the rows still queued (their files are already stored)."""
        self.recorder.stop()

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

        try:
            stored = move_atomic(req.path, target, sync=self.fsync)
        except OSError as exc:
            bound.error("store.write_failed", error=str(exc)[:200], status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        queued = self.recorder.submit(
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
            )
        )
        if not queued:
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

    @staticmethod
    def _refuse_unparseable(bound: Any, exc: BaseException) -> int:
        bound.warning(
            "store.refused",
            reason="cannot parse data set",
            error=type(exc).__name__,
            status=status.CANNOT_UNDERSTAND,
        )
        return status.CANNOT_UNDERSTAND


# --------------------------------------------------------------------------------------------
# AE, TLS, handlers


class _ServerTLSContext(ssl.SSLContext):
    """pynetdicom runs the TLS handshake on its accept loop with a blocking socket: a peer that
    connects and stays silent would stall every other connection. Bound the handshake."""

    handshake_timeout: float = 30.0

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        sock.settimeout(self.handshake_timeout)
        try:
            tls = super().wrap_socket(sock, *args, **kwargs)
        except (OSError, ValueError) as exc:
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
            log.warning(
                "tls.handshake_failed", peer=str(peer), error=type(exc).__name__, detail=str(exc)[:200]
            )
            sock.close()
            raise
        tls.settimeout(None)  # pynetdicom polls the socket with select()
        return tls


def server_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the SCP (TLS 1.2+, PS3.15 BCP 195), or None without a certificate."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    ctx = _ServerTLSContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.handshake_timeout = settings.acse_timeout_seconds
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca is not None:
        ctx.load_verify_locations(cafile=str(settings.tls_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def add_storage_contexts(ae: AE) -> None:
    """Accept every storage SOP class in every transfer syntax, plus Verification (C-ECHO)."""
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom's storage contexts all name their class
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)


__all__ = [
    "STORAGE_SOP_CLASSES",
    "InstanceHeader",
    "ReceivedInstance",
    "StoreHandler",
    "add_storage_contexts",
    "read_header",
    "server_tls_context",
]
