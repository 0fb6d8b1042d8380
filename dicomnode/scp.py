"""The Storage + Verification SCP: pynetdicom AE, its access rules and its C-STORE handler.

A C-STORE is answered Success only after the instance is on disk (fsynced, renamed into place) and
recorded in SQL. Instances are received to a file in the node's incoming folder in chunks (never
whole in memory), hashed as the bytes arrive, and only the header up to the Series Instance UID is
parsed; pixel data is never decoded here. Every refusal is a named status from
:mod:`dicomnode.status` plus a log line with UIDs only.

Access (PS3.7 D.3.3.2, PS3.15 B.1): the called AE title must be ours; with an allow list only the
listed calling AE titles may associate; with a certificate the port speaks TLS only and, with a CA,
peers must present a certificate the CA signed.
"""

from __future__ import annotations

import hashlib
import os
import select
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import structlog
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, dimse_messages, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime, not in the stub

from . import status
from .config import Settings
from .storage import StoredFile, UnsafeUIDError, instance_path, move_atomic, write_atomic
from .store.db import Store
from .store.queries import instance_path_of
from .store.records import InstanceRecord, add_event, record_instance

log = structlog.get_logger("dicomnode.scp")

# Receive C-STORE data sets into a file instead of memory (see pynetdicom _config).
_config.STORE_RECV_CHUNKED_DATASET = True
# Accept any proposed storage context; the handler decides (0x0122 for classes we do not store),
# so the sender gets a DIMSE status instead of a silently rejected context.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# Never log C-STORE identifiers (they carry patient data).
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# pynetdicom's "standard" handlers format a debug dump of every PDU and DIMSE message, under the
# AE-wide lock, even when nobody logs at DEBUG. We log our own events; switch theirs off.
_config.LOG_HANDLER_LEVEL = "none"

#: The storage SOP classes we store: pynetdicom's full storage list.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)

#: The last top-level attribute the SCP reads: Series Instance UID (0020,000E). Everything the
#: handler needs (SOP Class/Instance UID, Accession Number, Modality, Study/Series UID) comes before.
_LAST_HEADER_TAG = 0x0020000E
#: Attributes that name the stored file and its row: each must be present and encoded as UI.
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


# --------------------------------------------------------------------------------------------
# receive buffers: per-node incoming folder, hashed while the bytes arrive


class IncomingFile:
    """The file pynetdicom writes a C-STORE data set into (it expects a NamedTemporaryFile).

    Created in the receiving node's incoming folder (same filesystem as storage, so the instance is
    renamed into place, not copied) and hashed as pynetdicom writes it, so the stored file is never
    read back to compute its SHA-256."""

    def __init__(self, directory: str | None) -> None:
        fd, self.name = tempfile.mkstemp(suffix=".dcm", prefix="rx-", dir=directory)
        self.file = os.fdopen(fd, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._sha.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def digest(self) -> tuple[int, str]:
        """(bytes written, hex SHA-256) so far."""
        return self.size, self._sha.hexdigest()


#: Attribute of a pynetdicom AE naming the folder its C-STORE data sets are received into.
_INCOMING_ATTR = "dicomnode_incoming_dir"


def _receive_buffer(*_: Any, **kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` inside pynetdicom's DIMSE decoder.

    pynetdicom creates the file on the association's DUL thread with the process-wide temp folder;
    we look up the AE of that association so each node (several may run in one process) receives
    into its own incoming folder. Other AEs (SCUs, test PACS) get the ordinary temp file."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    directory = getattr(getattr(assoc, "ae", None), _INCOMING_ATTR, None)
    if directory is None:
        return tempfile.NamedTemporaryFile(**kwargs)
    return IncomingFile(directory)


dimse_messages.NamedTemporaryFile = _receive_buffer  # type: ignore[attr-defined]


#: How long a DUL thread waits for bytes from its peer before it looks at its other queues again:
#: pynetdicom's own loop sleeps 1 ms, data or not; after a quiet spell we wait longer per round.
_DUL_WAIT_BUSY_SECONDS = 0.001
_DUL_WAIT_IDLE_SECONDS = 0.005
_DUL_QUIET_AFTER_SECONDS = 0.2


def _wake_on_data(dul: Any) -> None:
    """Let one association's DUL thread wait *on its socket* instead of sleeping blind.

    pynetdicom's DUL loop (dul.py ``run_reactor``) sleeps 1 ms whenever it finds nothing to do, so
    each C-STORE waits up to a millisecond after its first bytes arrive. Here the DUL's transport
    check blocks in ``select`` on the socket instead, and the loop's own sleep is switched off:
    bytes are read as soon as they arrive. Responses queued by the association thread are picked
    up within 1 ms as before while the association is busy; after 200 ms without traffic the wait
    grows to 5 ms, so an idle association wakes less often than pynetdicom's own loop. Uses
    pynetdicom 3.0 internals (checked here; if they are missing the DUL is left as it is)."""
    needed = ("_is_transport_event", "_run_loop_delay", "to_provider_queue", "event_queue", "socket")
    if not all(hasattr(dul, name) for name in needed):
        log.warning("scp.dul_unpatched", reason="pynetdicom DUL internals changed")
        return
    transport_event = dul._is_transport_event  # bound method of this DUL
    last_busy = [time.monotonic()]

    def wait_then_check() -> bool:
        if dul.to_provider_queue.empty() and dul.event_queue.empty():  # nothing else to do: wait
            quiet = time.monotonic() - last_busy[0] > _DUL_QUIET_AFTER_SECONDS
            wait = _DUL_WAIT_IDLE_SECONDS if quiet else _DUL_WAIT_BUSY_SECONDS
            sock = getattr(dul.socket, "socket", None)
            try:
                if sock is None:
                    raise ValueError("no socket")
                select.select([sock], [], [], wait)
            except (OSError, ValueError):
                time.sleep(_DUL_WAIT_BUSY_SECONDS)  # closed or closing: keep pynetdicom's pace
        else:
            last_busy[0] = time.monotonic()
        if transport_event():
            last_busy[0] = time.monotonic()
            return True
        return False

    dul._is_transport_event = wait_then_check
    dul._run_loop_delay = 0


def _on_conn_open(event: evt.Event) -> None:
    # fired by the server before the association's threads start
    _wake_on_data(event.assoc.dul)


def _discard_partial_receive(event: evt.Event) -> None:
    """A connection closed mid C-STORE: delete the half-received data set now, not at next start."""
    msg = getattr(getattr(event.assoc, "dimse", None), "message", None)
    buf = getattr(msg, "_data_set_file", None)
    if buf is None:
        return
    try:
        buf.close()
        os.unlink(buf.name)
        log.warning(
            "store.partial_discarded", calling_ae=_calling_ae(event), bytes=getattr(buf, "size", None)
        )
    except OSError:
        pass


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
    meta = ds.file_meta
    ts = UID(str(meta.get("TransferSyntaxUID", "") or ""))
    first = ds.get_item(0x00080016)  # SOP Class UID, still raw: it says how it was actually read
    if ts.is_transfer_syntax and isinstance(first, RawDataElement):
        if (first.is_implicit_VR, first.is_little_endian) != (ts.is_implicit_VR, ts.is_little_endian):
            # pydicom reads on with a guess; any other reader of the stored file would not
            raise ValueError(f"data set encoding does not match transfer syntax {ts}")
    for keyword in _UID_KEYWORDS:
        vr = ds[keyword].VR  # KeyError when missing
        if vr != "UI":
            raise ValueError(f"{keyword} is encoded with VR {vr}, not UI")
    return InstanceHeader(
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        modality=str(ds.get("Modality", "") or "") or None,
        accession_number=str(ds.get("AccessionNumber", "") or "") or None,
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "") or ""),
    )


# --------------------------------------------------------------------------------------------
# C-STORE


@dataclass(frozen=True)
class ReceivedInstance:
    """Handed to the tracker after an instance is durably stored (or kept as a duplicate)."""

    study_uid: str
    sop_instance_uid: str
    calling_ae: str


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


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
    """The EVT_C_STORE handler: validate, store durably, record, notify.

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

    def __call__(self, event: evt.Event) -> int:
        ae = _calling_ae(event)
        req = cast(C_STORE, event.request)  # the EVT_C_STORE handler: always a C-STORE request
        sop_class = str(event.context.abstract_syntax)
        sop_uid = str(req.AffectedSOPInstanceUID or "")
        bound = log.bind(calling_ae=ae, sop_instance_uid=sop_uid, sop_class_uid=sop_class)
        if sop_class not in STORAGE_SOP_CLASSES:
            bound.warning(
                "store.refused", reason="sop class not supported", status=status.SOP_CLASS_NOT_SUPPORTED
            )
            return status.SOP_CLASS_NOT_SUPPORTED
        try:
            path = event.dataset_path
        except AttributeError:  # chunked receive switched off by someone: the data set is in memory
            path = None
        try:
            if path is not None:
                hdr = read_header(path)
            else:
                ds = event.dataset
                hdr = InstanceHeader(
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID),
                    str(ds.get("Modality", "") or "") or None,
                    str(ds.get("AccessionNumber", "") or "") or None,
                    str(event.context.transfer_syntax),
                )
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

        if self.duplicate_policy == "ignore":
            try:
                kept = instance_path_of(self.store, sop_uid)
            except Exception as exc:
                bound.error("store.db_unavailable", error=type(exc).__name__, status=status.OUT_OF_RESOURCES)
                return status.OUT_OF_RESOURCES
            if kept is not None and Path(kept).is_file():
                return self._keep_first(bound, hdr, ae, kept)

        try:
            stored = self._write(event, path, target)
        except OSError as exc:
            bound.error("store.write_failed", error=str(exc)[:200], status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        try:
            outcome = record_instance(
                self.store,
                InstanceRecord(
                    study_uid=hdr.study_uid,
                    series_uid=hdr.series_uid,
                    sop_instance_uid=hdr.sop_instance_uid,
                    sop_class_uid=hdr.sop_class_uid,
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    modality=hdr.modality,
                    path=str(stored.path),
                    size_bytes=stored.size_bytes,
                    sha256=stored.sha256,
                    calling_ae=ae,
                    accession_number=hdr.accession_number,
                ),
            )
        except Exception as exc:
            # The file is whole but unrecorded; the start-up re-scan records it. The sender must
            # retry, so we do not claim success.
            bound.error("store.record_failed", error=type(exc).__name__, status=status.OUT_OF_RESOURCES)
            return status.OUT_OF_RESOURCES
        if outcome.duplicate:
            if outcome.previous_path not in (None, str(stored.path)):
                # same instance, new study/series: the old file is no longer the instance
                Path(str(outcome.previous_path)).unlink(missing_ok=True)
            bound.info("store.duplicate_overwritten", bytes=stored.size_bytes, policy=self.duplicate_policy)
        else:
            bound.debug("store.ok", bytes=stored.size_bytes, reopened=outcome.reopened)
        self.on_stored(ReceivedInstance(hdr.study_uid, hdr.sop_instance_uid, ae))
        return status.SUCCESS

    def _write(self, event: evt.Event, path: Path | None, target: Path) -> StoredFile:
        if path is None:
            return write_atomic(target, event.encoded_dataset(include_meta=True), sync=self.fsync)
        buf = getattr(event.request, "_dataset_file", None)
        digest = buf.digest() if isinstance(buf, IncomingFile) else None
        if buf is not None:
            buf.flush()
        return move_atomic(path, target, sync=self.fsync, digest=digest)

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
# association events

#: A-ASSOCIATE-RJ (result source, reason) -> what we log (PS3.8 9.3.4).
_REJECT_REASONS: dict[tuple[int | None, int | None], str] = {
    (0x01, 0x03): "calling ae not allowed",
    (0x01, 0x07): "called ae is not ours",
    (0x01, 0x02): "application context not supported",
    (0x01, 0x01): "no reason given",
    (0x02, 0x01): "user identity refused",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "too many associations",
}


def _peer(event: evt.Event) -> str:
    return str(event.assoc.requestor.address)


def _on_echo(event: evt.Event) -> int:
    log.info("echo", calling_ae=_calling_ae(event))
    return status.SUCCESS


def _on_assoc(event: evt.Event) -> None:
    log.info("association.accepted", calling_ae=_calling_ae(event), peer=_peer(event))


def _on_reject(event: evt.Event) -> None:
    rj = event.assoc.acceptor.primitive
    key = (getattr(rj, "result_source", None), getattr(rj, "diagnostic", None))
    rq = event.assoc.requestor.primitive
    log.warning(
        "association.rejected",
        reason=_REJECT_REASONS.get(key, f"source {key[0]} diagnostic {key[1]}"),
        calling_ae=_calling_ae(event),
        called_ae=str(getattr(rq, "called_ae_title", "") or "").strip(),
        peer=_peer(event),
    )


def _on_abort(event: evt.Event) -> None:
    log.warning("association.aborted", calling_ae=_calling_ae(event), peer=_peer(event))


def _on_conn_close(event: evt.Event) -> None:
    _discard_partial_receive(event)
    if getattr(event.assoc.requestor, "primitive", None) is None:
        # no A-ASSOCIATE-RQ ever arrived: a port scan, a health check, junk bytes, a failed handshake
        log.warning("connection.dropped", reason="no association requested", peer=_peer(event))


def _on_dul_crash(args: threading.ExceptHookArgs) -> None:
    """pynetdicom lets some malformed PDUs (e.g. a C-STORE-RQ without Affected SOP Class UID) raise
    inside its DUL thread: the thread dies, the association thread notices and closes the
    connection, no event fires. For our own associations, log that as one structured line."""
    assoc = getattr(args.thread, "assoc", None)
    if getattr(getattr(assoc, "ae", None), _INCOMING_ATTR, None) is None:
        _previous_excepthook(args)
        return
    where, tb = "?", args.exc_traceback
    while tb is not None:  # the innermost pynetdicom frame says what it choked on
        if "pynetdicom" in tb.tb_frame.f_code.co_filename:
            where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    log.error(
        "association.failed",
        reason="malformed message from peer; connection closed without a response",
        error=getattr(args.exc_type, "__name__", str(args.exc_type)),
        at=where,
        calling_ae=str(getattr(assoc.requestor, "ae_title", "") or "").strip(),  # type: ignore[union-attr]
        peer=str(getattr(assoc.requestor, "address", "")),  # type: ignore[union-attr]
    )


_previous_excepthook = threading.excepthook


def _install_excepthook() -> None:
    if threading.excepthook is not _on_dul_crash:
        global _previous_excepthook
        _previous_excepthook = threading.excepthook
        threading.excepthook = _on_dul_crash


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


def build_ae(s: Settings, incoming_dir: Path | None = None) -> AE:
    """The node's AE: every storage SOP class in every transfer syntax plus Verification, with the
    access rules, limits and timeouts of the settings; C-STORE data sets land in ``incoming_dir``."""
    ae = AE(ae_title=s.ae_title)
    ae.maximum_pdu_size = s.max_pdu_bytes
    add_storage_contexts(ae)
    ae.require_called_aet = True
    ae.require_calling_aet = list(s.allowed_calling_aes)
    ae.maximum_associations = s.max_associations
    ae.acse_timeout = s.acse_timeout_seconds
    ae.dimse_timeout = s.dimse_timeout_seconds
    ae.network_timeout = s.network_timeout_seconds
    if incoming_dir is not None:
        incoming_dir.mkdir(parents=True, exist_ok=True)
        setattr(ae, _INCOMING_ATTR, str(incoming_dir))
        _install_excepthook()
    return ae


def handlers(store_handler: StoreHandler) -> list[evt.EventHandlerType]:
    """The event handlers bound when the SCP starts."""
    return [
        (evt.EVT_C_STORE, store_handler),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_ACCEPTED, _on_assoc),
        (evt.EVT_REJECTED, _on_reject),
        (evt.EVT_ABORTED, _on_abort),
        (evt.EVT_CONN_OPEN, _on_conn_open),
        (evt.EVT_CONN_CLOSE, _on_conn_close),
    ]


__all__ = [
    "STORAGE_SOP_CLASSES",
    "IncomingFile",
    "InstanceHeader",
    "ReceivedInstance",
    "StoreHandler",
    "build_ae",
    "handlers",
    "read_header",
    "server_tls_context",
]
