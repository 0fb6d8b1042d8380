"""The node's DICOM listener: TCP (or TLS) accept, association negotiation and the C-STORE data path.

One thread per association reads its socket with blocking reads into one reusable buffer and
streams data set fragments straight into a file in the node's incoming folder; nothing polls.
pynetdicom's AE server does the same job with a DUL thread and an association thread per
association that hand each message over through queues polled every millisecond, reads the socket
4 KiB at a time and copies each PDU several times; on loopback that held a busy sender to 0.2-0.3x
of DCMTK storescp (``bench/ingest.py``). So the node answers associations itself. pynetdicom still
decodes and encodes the association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-ABORT) and negotiates the
presentation contexts (``negotiate_unrestricted``: every storage-like class is accepted, so a class
we do not store gets a DIMSE status 0x0122 instead of a silently rejected context).

What is here: PDU and PDV framing (PS3.8 9.3), the command sets of C-STORE and C-ECHO (PS3.7
9.3.1, 9.3.5), the file meta of what is stored (PS3.10 7.1) and the association's life: A-RELEASE,
A-ABORT, timeouts, association limits. Protocol violations end the association with an A-ABORT and
one structured log line (UIDs and AE titles only); the listener itself keeps serving.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted

from dicomnode import __version__
from dicomnode.net import status

log = structlog.get_logger("dicomnode.scp")

#: Identifies dicomnode in A-ASSOCIATE-AC and in the file meta of what it stores (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = UID("2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "https://dicomnode.org/").int))
IMPLEMENTATION_VERSION_NAME = ("DICOMNODE_" + __version__.replace(".", ""))[:16]

_APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")
_PDU_HEADER = struct.Struct(">BBL")  # type, reserved, length
_PDV_HEADER = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")  # implicit VR little endian: group, element, length
#: Association requests and command sets are small; a peer announcing more is not speaking DICOM.
_MAX_ASSOCIATE_RQ = 1 << 20
_MAX_COMMAND_SET = 1 << 16
_READ_BUFFER = 1 << 20

# command set (PS3.7 E.1)
_C_STORE_RQ, _C_STORE_RSP, _C_ECHO_RQ, _C_ECHO_RSP, _C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
_NO_DATA_SET = 0x0101
_UNRECOGNISED_OPERATION = 0x0211
_PROCESSING_FAILURE = 0xC211  # what pynetdicom answers when a handler raises
_TAG_AFFECTED_SOP_CLASS = 0x00000002
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID = 0x00000110
_TAG_DATA_SET_TYPE = 0x00000800
_TAG_AFFECTED_SOP_INSTANCE = 0x00001000

#: A-ASSOCIATE-RJ (result, source, diagnostic) and what we log (PS3.8 9.3.4).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_TOO_MANY = (0x02, 0x03, 0x02)
_REJECT_REASONS = {
    REJECT_CALLING_AE: "calling ae not allowed",
    REJECT_CALLED_AE: "called ae is not ours",
    REJECT_TOO_MANY: "too many associations",
}


# --------------------------------------------------------------------------------------------
# what the listener hands to the node


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE: the data set is a whole Part 10 file at ``path`` (incoming folder).

    The callback owns ``path`` from here: it moves it into storage or leaves it to be deleted
    (the listener deletes whatever is still there once the callback returns)."""

    calling_ae: str
    sop_class_uid: str  # the presentation context's abstract syntax
    sop_instance_uid: str  # Affected SOP Instance UID of the request
    transfer_syntax_uid: str
    path: Path
    head: bytes = b""  # the first bytes of the data set (up to 64 KiB) as received, for the header


StoreCallback = Callable[[StoreRequest], int]


class ProtocolError(Exception):
    """The peer broke PS3.7/PS3.8: the association ends with an A-ABORT."""


class _PeerGone(Exception):
    """The connection closed (or timed out) under us."""


@dataclass(frozen=True)
class ListenerConfig:
    """The association rules of the listener (from :class:`dicomnode.config.Settings`)."""

    ae_title: str
    allowed_calling_aes: tuple[str, ...] = ()
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu_bytes: int = 1 << 20
    #: start the disk writing a data set while it still arrives (Linux), so the fsync before
    #: Success has less left to do; only useful when the node fsyncs
    early_writeback: bool = True


def _supported_contexts() -> list[PresentationContext]:
    from dicomnode.receive.handler import add_storage_contexts  # the one definition of what the node accepts

    ae = AE()
    add_storage_contexts(ae)
    return list(ae.supported_contexts)


# --------------------------------------------------------------------------------------------
# socket reading and file writing


class _Reader:
    """Blocking reads from one socket into one reusable buffer: as many bytes per system call as
    the kernel has, handed out as views (no copy) or short ``bytes``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(_READ_BUFFER)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def _fill(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):  # keep the unread tail, make room behind it
            tail = self.end - self.start
            self.buf[:tail] = self.buf[self.start : self.end]
            self.start, self.end = 0, tail
        try:
            n = self.sock.recv_into(self.view[self.end :])
        except TimeoutError as exc:
            raise _PeerGone("timeout") from exc
        except (OSError, ssl.SSLError) as exc:
            raise _PeerGone(type(exc).__name__) from exc
        if n == 0:
            raise _PeerGone("closed")
        self.end += n

    def exact(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if self.end - self.start >= n:
            out = bytes(self.view[self.start : self.start + n])
            self.start += n
            return out
        parts = bytearray()
        self.pipe(n, parts.extend)
        return bytes(parts)

    def pipe(self, n: int, sink: Callable[[memoryview], Any]) -> None:
        """Hand the next ``n`` bytes to ``sink`` in as few pieces as they arrive in."""
        while n:
            if self.start == self.end:
                self._fill()
            take = min(n, self.end - self.start)
            sink(self.view[self.start : self.start + take])
            self.start += take
            n -= take


try:  # Linux: start writeback of a file range without waiting for it (sync_file_range(2))
    _libc = ctypes.CDLL(None, use_errno=True)
    _sync_file_range: Any = _libc.sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _sync_file_range = None
_SYNC_FILE_RANGE_WRITE = 2
_HEAD_BYTES = 1 << 16
_WRITEBACK_EVERY = 1 << 20  # and once more when the data set is complete


class _Incoming:
    """One data set being received into ``<incoming>/rx-*.dcm``: preamble, file meta, fragments.
    ``created`` is a file already made by :func:`_mkstemp` (the association's spare)."""

    def __init__(
        self, directory: str, meta: bytes, early_writeback: bool, created: tuple[int, str] | None = None
    ) -> None:
        fd, name = created or _mkstemp(directory)
        self.fd, self.path = fd, Path(name)
        self.size = 0
        self._meta_size = len(meta)
        self.head = bytearray()  # the first _HEAD_BYTES of the data set, kept for the header parse
        self._flushed = 0
        self._early = early_writeback and _sync_file_range is not None
        self.write(memoryview(meta))

    def write(self, data: memoryview) -> None:
        if self.size >= self._meta_size and len(self.head) < _HEAD_BYTES:
            self.head += data[: _HEAD_BYTES - len(self.head)]
        while data:
            n = os.write(self.fd, data)
            data = data[n:]
            self.size += n
        if self._early and self.size - self._flushed >= _WRITEBACK_EVERY:
            _sync_file_range(self.fd, self._flushed, self.size - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self.size

    def close(self) -> None:
        if self.fd >= 0:
            if self._early and self.size > self._flushed:
                # start the disk on the rest now: it works while the header is parsed, the fsync
                # before Success then waits for less
                _sync_file_range(self.fd, self._flushed, 0, _SYNC_FILE_RANGE_WRITE)
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


_names = itertools.count()


def _mkstemp(directory: str) -> tuple[int, str]:
    """A new file of our own in ``directory`` (cheaper than tempfile's random names: the counter
    and the process ID are unique already; O_EXCL still guards against a leftover)."""
    while True:
        name = os.path.join(directory, f"rx-{os.getpid()}-{next(_names)}.dcm")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name  # patient data
        except FileExistsError:
            continue


def _short_element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 7.1, explicit VR little endian).

    Written by hand: it is the same six elements for every instance, and pydicom's general
    writer took half a millisecond per instance here. Raises ValueError for UIDs that cannot go
    into a file meta (the C-STORE is then refused)."""
    uids = []
    for uid in (sop_class, sop_instance, transfer_syntax):
        raw = uid.encode("ascii")  # UnicodeEncodeError is a ValueError
        if not 0 < len(raw) <= 64:
            raise ValueError(f"UID of {len(raw)} characters")
        uids.append(raw + b"\x00" if len(raw) % 2 else raw)
    impl = str(IMPLEMENTATION_CLASS_UID).encode("ascii")
    name = IMPLEMENTATION_VERSION_NAME.encode("ascii")
    ae = source_ae.encode("ascii", "replace")[:16]
    body = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _short_element(0x0002, 0x0002, b"UI", uids[0])
        + _short_element(0x0002, 0x0003, b"UI", uids[1])
        + _short_element(0x0002, 0x0010, b"UI", uids[2])
        + _short_element(0x0002, 0x0012, b"UI", impl + b"\x00" if len(impl) % 2 else impl)
        + _short_element(0x0002, 0x0013, b"SH", name + b" " if len(name) % 2 else name)
    )
    if ae:
        body += _short_element(0x0002, 0x0016, b"AE", ae + b" " if len(ae) % 2 else ae)
    return b"\x00" * 128 + b"DICM" + _short_element(0x0002, 0x0000, b"UL", struct.pack("<L", len(body))) + body


# --------------------------------------------------------------------------------------------
# command sets (implicit VR little endian, PS3.7 6.3.1)


def decode_command(data: bytes) -> dict[int, bytes]:
    """Raw values of a command set by tag; raises :class:`ProtocolError` when it does not parse."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise ProtocolError("command set ends inside an element header")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            raise ProtocolError(f"command set element ({group:04X},{elem:04X}) is malformed")
        out[elem] = data[pos : pos + length]
        pos += length
    return out


def _us(values: dict[int, bytes], tag: int) -> int | None:
    raw = values.get(tag & 0xFFFF)
    return struct.unpack("<H", raw)[0] if raw is not None and len(raw) == 2 else None


def _ui(values: dict[int, bytes], tag: int) -> str | None:
    raw = values.get(tag & 0xFFFF)
    if raw is None:
        return None
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def encode_command(elements: list[tuple[int, bytes]]) -> bytes:
    """A command set with its group length; ``elements`` as (tag, raw value), in tag order."""
    body = b"".join(_ELEMENT.pack(0, tag & 0xFFFF, len(v)) + v for tag, v in elements)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _response(command: int, message_id: int, sop_class: str, sop_instance: str | None, code: int) -> bytes:
    elements = [(_TAG_AFFECTED_SOP_CLASS, _uid_value(sop_class))]
    elements += [
        (_TAG_COMMAND_FIELD, struct.pack("<H", command)),
        (0x00000120, struct.pack("<H", message_id)),  # Message ID Being Responded To
        (_TAG_DATA_SET_TYPE, struct.pack("<H", _NO_DATA_SET)),
        (0x00000900, struct.pack("<H", code)),  # Status
    ]
    if sop_instance is not None:
        elements.append((_TAG_AFFECTED_SOP_INSTANCE, _uid_value(sop_instance)))
    return encode_command(elements)


@dataclass
class _Message:
    """A DIMSE request being received: its command set, then (for C-STORE) its data set."""

    context_id: int
    command: int
    message_id: int
    sop_class: str
    sop_instance: str | None
    has_data_set: bool
    incoming: _Incoming | None = None
    refuse: int | None = None  # a status decided before the data set arrived


# --------------------------------------------------------------------------------------------
# one association


class Association(threading.Thread):
    """One TCP connection and the association on it, served on its own thread."""

    def __init__(self, listener: Listener, sock: socket.socket, peer: str) -> None:
        super().__init__(name=f"dicomnode-assoc-{peer}", daemon=True)
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.calling_ae = ""
        self.is_established = False
        self._send_lock = threading.Lock()
        self._closed = False
        self._contexts: dict[int, PresentationContext] = {}
        self._peer_max_pdu = 0
        self._message: _Message | None = None
        self._command = bytearray()
        self._spare: tuple[int, str] | None = None
        self._bound: Any = log.bind(peer=peer)

    # -- life ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            if not self._handshake():
                return
            self._serve()
        except _PeerGone as exc:
            self._peer_gone(str(exc))
        except ProtocolError as exc:
            self._bound.error(
                "association.failed",
                reason="malformed message from peer; association aborted without a response",
                error=str(exc)[:200],
            )
            self._abort(source=0x02, reason=0x00)
        except Exception as exc:  # never let one peer take the listener down
            self._bound.error("association.failed", reason="internal error", error=type(exc).__name__)
            self._abort(source=0x02, reason=0x00)
        finally:
            self._discard_partial()
            self._discard_spare()
            self._close()
            self.listener._forget(self)

    def abort(self) -> None:
        """End the association now (node shutdown): A-ABORT, then close the socket."""
        self._abort(source=0x00, reason=0x00)

    def _abort(self, source: int, reason: int) -> None:
        if self._closed:
            return
        prim = A_ABORT()
        prim.abort_source = source
        pdu = A_ABORT_RQ()
        pdu.from_primitive(prim)
        if source == 0x02:
            pdu.reason_diagnostic = reason
        self._send_last(pdu.encode())

    def _send_last(self, pdu: bytes) -> None:
        """Send a closing PDU (A-ABORT, A-ASSOCIATE-RJ) if the peer still listens, then close."""
        try:
            self._send(pdu)
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.is_established = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes our own thread if another one closes us
        except OSError:
            pass
        self.sock.close()

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _peer_gone(self, why: str) -> None:
        if self._closed:  # we closed it ourselves (abort, shutdown)
            return
        if why == "timeout" and self.is_established:
            self._bound.warning("association.timed_out", calling_ae=self.calling_ae)
            self._abort(source=0x02, reason=0x00)
        elif not self.calling_ae:
            self._bound.warning("connection.dropped", reason="no association requested")
        elif self._message is not None or self.is_established:
            self._bound.warning("association.lost", calling_ae=self.calling_ae, reason=why)

    def _discard_partial(self) -> None:
        msg, self._message = self._message, None
        if msg is not None and msg.incoming is not None:
            msg.incoming.discard()
            log.warning("store.partial_discarded", calling_ae=self.calling_ae, bytes=msg.incoming.size)

    def _discard_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            os.close(spare[0])
            Path(spare[1]).unlink(missing_ok=True)

    # -- association negotiation -------------------------------------------------------------------

    def _handshake(self) -> bool:
        cfg = self.listener.config
        if self.listener.ssl_context is not None:
            try:
                self.sock = self.listener.ssl_context.wrap_socket(self.sock, server_side=True)
            except (OSError, ValueError):
                self._closed = True  # the context logged it and closed the socket
                return False
        self.sock.settimeout(cfg.acse_timeout)
        self.reader = _Reader(self.sock)
        try:
            pdu_type, _, length = _PDU_HEADER.unpack(self.reader.exact(6))
        except _PeerGone:
            self._bound.warning("connection.dropped", reason="no association requested")
            self._close()
            return False
        if pdu_type != 0x01 or length > _MAX_ASSOCIATE_RQ:
            self._bound.warning("connection.dropped", reason="no association requested", pdu_type=pdu_type)
            self._abort(source=0x02, reason=0x02 if pdu_type in range(2, 8) else 0x01)
            return False
        body = self.reader.exact(length)
        try:
            rq_pdu = A_ASSOCIATE_RQ()
            rq_pdu.decode(_PDU_HEADER.pack(pdu_type, 0, length) + body)
            rq = rq_pdu.to_primitive()
        except Exception as exc:
            self._bound.warning(
                "connection.dropped", reason="no association requested", error=type(exc).__name__
            )
            self._abort(source=0x02, reason=0x06)  # invalid PDU parameter value
            return False
        self.calling_ae = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        self._bound = self._bound.bind(calling_ae=self.calling_ae)
        self._peer_max_pdu = int(rq.maximum_length_received or 0)

        verdict: tuple[int, int, int] | None = None
        if cfg.allowed_calling_aes and self.calling_ae not in cfg.allowed_calling_aes:
            verdict = REJECT_CALLING_AE
        elif called != cfg.ae_title:
            verdict = REJECT_CALLED_AE
        elif not self.listener._admit(self):
            verdict = REJECT_TOO_MANY
        if verdict is not None:
            self._bound.warning("association.rejected", reason=_REJECT_REASONS[verdict], called_ae=called)
            self._reject(rq, verdict)
            return False

        roles: dict[UID, tuple[bool | None, bool | None]] = {}
        async_rq = False
        for item in rq.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
            elif isinstance(item, AsynchronousOperationsWindowNegotiation):
                async_rq = True
        result, role_items = negotiate_unrestricted(
            rq.presentation_context_definition_list,
            self.listener.supported_contexts,
            roles,  # type: ignore[arg-type]
        )
        self._contexts = {int(cx.context_id): cx for cx in result if cx.result == 0x00 and cx.context_id}

        ac = A_ASSOCIATE()
        ac.application_context_name = _APPLICATION_CONTEXT
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = result
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = cfg.max_pdu_bytes
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        user_info: list[Any] = [max_len, impl_uid, impl_name, *role_items]
        if async_rq:  # we perform and invoke one operation at a time (the default window)
            window = AsynchronousOperationsWindowNegotiation()
            window.maximum_number_operations_invoked = window.maximum_number_operations_performed = 1
            user_info.append(window)
        ac.user_information = user_info
        ac_pdu = A_ASSOCIATE_AC()
        ac_pdu.from_primitive(ac)
        self._send(ac_pdu.encode())
        self.is_established = True
        self._bound.info("association.accepted", contexts=len(self._contexts))
        return True

    def _reject(self, rq: A_ASSOCIATE, verdict: tuple[int, int, int]) -> None:
        rj = A_ASSOCIATE()
        rj.result, rj.result_source, rj.diagnostic = verdict
        rj.calling_ae_title, rj.called_ae_title = rq.calling_ae_title, rq.called_ae_title
        pdu = A_ASSOCIATE_RJ()
        pdu.from_primitive(rj)
        self._send_last(pdu.encode())

    # -- data phase ----------------------------------------------------------------------------

    def _serve(self) -> None:
        cfg = self.listener.config
        reader = self.reader
        while True:
            self.sock.settimeout(cfg.network_timeout if self._message is None else cfg.dimse_timeout)
            pdu_type, _, length = _PDU_HEADER.unpack(reader.exact(6))
            if pdu_type == 0x04:  # P-DATA-TF
                self.sock.settimeout(cfg.dimse_timeout)
                self._p_data(length)
            elif pdu_type == 0x05:  # A-RELEASE-RQ
                reader.exact(length)
                self._send(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RP
                self._discard_partial()
                self.is_established = False
                self._bound.debug("association.released")
                self._close()
                return
            elif pdu_type == 0x07:  # A-ABORT
                reader.exact(min(length, 64))
                self._bound.warning("association.aborted")
                self._close()
                return
            elif pdu_type in (0x01, 0x02, 0x03, 0x06):
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} on an established association")
            else:
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}")

    def _p_data(self, length: int) -> None:
        reader = self.reader
        left = length
        while left:
            if left < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV header")
            item_len, context_id, control = _PDV_HEADER.unpack(reader.exact(6))
            left -= 6
            data_len = item_len - 2
            if data_len < 0 or data_len > left:
                raise ProtocolError("PDV length does not fit its P-DATA-TF")
            left -= data_len
            if context_id not in self._contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
            last = bool(control & 0x02)
            if control & 0x01:
                self._command_fragment(context_id, reader.exact(data_len), last)
            else:
                self._data_fragment(context_id, data_len, last)

    def _command_fragment(self, context_id: int, data: bytes, last: bool) -> None:
        if self._message is not None:
            raise ProtocolError("a command set arrived before the previous data set was complete")
        self._command += data
        if len(self._command) > _MAX_COMMAND_SET:
            raise ProtocolError("command set too long")
        if not last:
            return
        values = decode_command(bytes(self._command))
        self._command.clear()
        command, message_id = _us(values, _TAG_COMMAND_FIELD), _us(values, _TAG_MESSAGE_ID)
        data_set_type = _us(values, _TAG_DATA_SET_TYPE)
        if command is None or data_set_type is None:
            raise ProtocolError("command set without Command Field or Command Data Set Type")
        if command == _C_CANCEL_RQ or command & 0x8000:
            return  # cancels and responses need no answer from a storage SCP
        if message_id is None:
            raise ProtocolError("request without Message ID")
        sop_class = _ui(values, _TAG_AFFECTED_SOP_CLASS)
        if not sop_class:
            raise ProtocolError(f"request 0x{command:04X} without Affected SOP Class UID")
        msg = _Message(
            context_id=context_id,
            command=command,
            message_id=message_id,
            sop_class=sop_class,
            sop_instance=_ui(values, _TAG_AFFECTED_SOP_INSTANCE),
            has_data_set=data_set_type != _NO_DATA_SET,
        )
        if command == _C_STORE_RQ:
            if not msg.has_data_set:
                raise ProtocolError("C-STORE-RQ without a data set")
            if not msg.sop_instance:
                raise ProtocolError("C-STORE-RQ without Affected SOP Instance UID")
            cx = self._contexts[context_id]
            try:
                meta = _file_meta(msg.sop_class, msg.sop_instance, str(cx.transfer_syntax[0]), self.calling_ae)
                spare, self._spare = self._spare, None
                msg.incoming = _Incoming(
                    self.listener.incoming_dir, meta, self.listener.config.early_writeback, spare
                )
            except (ValueError, TypeError) as exc:  # UIDs that cannot go into a file meta
                self._bound.warning(
                    "store.refused",
                    reason="cannot write file meta",
                    error=type(exc).__name__,
                    status=status.CANNOT_UNDERSTAND,
                )
                msg.refuse = status.CANNOT_UNDERSTAND
        self._message = msg
        if not msg.has_data_set:
            self._complete()

    def _data_fragment(self, context_id: int, data_len: int, last: bool) -> None:
        msg = self._message
        if msg is None or not msg.has_data_set or context_id != msg.context_id:
            raise ProtocolError("data set fragment without its command set")
        if msg.incoming is not None:
            self.reader.pipe(data_len, msg.incoming.write)
        else:  # a data set we do not keep (refused up front, or not a C-STORE)
            self.reader.pipe(data_len, lambda _: None)
        if last:
            self._complete()

    def _complete(self) -> None:
        msg = self._message
        assert msg is not None
        if msg.command == _C_STORE_RQ:
            code = self._store(msg)
            self.listener.last_store = time.monotonic()
            rsp = _response(_C_STORE_RSP, msg.message_id, msg.sop_class, msg.sop_instance, code)
        elif msg.command == _C_ECHO_RQ:
            self._bound.info("echo")
            rsp = _response(_C_ECHO_RSP, msg.message_id, msg.sop_class, None, status.SUCCESS)
        else:
            self._bound.warning(
                "request.refused", command=f"0x{msg.command:04X}", status=_UNRECOGNISED_OPERATION
            )
            rsp = _response(
                msg.command | 0x8000, msg.message_id, msg.sop_class, msg.sop_instance, _UNRECOGNISED_OPERATION
            )
        self._message = None
        self._send_command(msg.context_id, rsp)
        if msg.command == _C_STORE_RQ and self._spare is None:
            # the next instance's file, made while the sender reads our response and sends again
            # rather than after its command arrives (about 3 % of a 200-slice CT push)
            try:
                self._spare = _mkstemp(self.listener.incoming_dir)
            except OSError:
                pass  # the next C-STORE makes its own and reports what is wrong

    def _store(self, msg: _Message) -> int:
        incoming = msg.incoming
        if incoming is None:
            return msg.refuse if msg.refuse is not None else status.CANNOT_UNDERSTAND
        incoming.close()
        cx = self._contexts[msg.context_id]
        req = StoreRequest(
            calling_ae=self.calling_ae,
            sop_class_uid=str(cx.abstract_syntax),
            sop_instance_uid=str(msg.sop_instance),
            transfer_syntax_uid=str(cx.transfer_syntax[0]),
            path=incoming.path,
            head=bytes(incoming.head),
        )
        try:
            return int(self.listener.on_store(req))
        except Exception as exc:
            self._bound.error("store.failed", error=type(exc).__name__, status=_PROCESSING_FAILURE)
            return _PROCESSING_FAILURE
        finally:
            incoming.path.unlink(missing_ok=True)  # still there only when it was not stored

    def _send_command(self, context_id: int, command: bytes) -> None:
        """The command set in P-DATA-TF PDUs no longer than the peer accepts."""
        room = self._peer_max_pdu - 6 if self._peer_max_pdu >= 8 else len(command)
        room = max(room, 1)
        out = bytearray()
        for start in range(0, len(command), room):
            part = command[start : start + room]
            control = 0x03 if start + room >= len(command) else 0x01
            out += _PDU_HEADER.pack(0x04, 0, len(part) + 6)
            out += _PDV_HEADER.pack(len(part) + 2, context_id, control) + part
        self._send(bytes(out))


# --------------------------------------------------------------------------------------------
# the listening socket


class Listener:
    """Accepts connections on ``(host, port)`` and serves each on an :class:`Association` thread."""

    def __init__(
        self,
        config: ListenerConfig,
        on_store: StoreCallback,
        *,
        incoming_dir: Path,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.on_store = on_store
        self.incoming_dir = str(incoming_dir)
        self.ssl_context = ssl_context
        self.supported_contexts = _supported_contexts()
        self._lock = threading.Lock()
        self._open: set[Association] = set()
        self._established: set[Association] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: time.monotonic() of the last C-STORE answered (background work waits for quiet)
        self.last_store = 0.0

    @property
    def server_address(self) -> tuple[str, int]:
        assert self._sock is not None, "listener not started"
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_associations(self) -> list[Association]:
        with self._lock:
            return list(self._open)

    def start(self, host: str, port: int) -> None:
        Path(self.incoming_dir).mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dicomnode-listener", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = Association(self, conn, str(addr[0]))
            with self._lock:
                self._open.add(assoc)
            assoc.start()

    def _admit(self, assoc: Association) -> bool:
        """Count ``assoc`` as established if the association limit allows it."""
        with self._lock:
            if len(self._established) >= self.config.max_associations:
                return False
            self._established.add(assoc)
            return True

    def _forget(self, assoc: Association) -> None:
        with self._lock:
            self._open.discard(assoc)
            self._established.discard(assoc)

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; open associations carry on."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()


__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "Association",
    "Listener",
    "ListenerConfig",
    "ProtocolError",
    "StoreCallback",
    "StoreRequest",
    "decode_command",
    "encode_command",
]
