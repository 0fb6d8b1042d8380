"""One association on one connection, served on its own thread: negotiation, then C-STORE and C-ECHO.

The thread reads its socket with blocking reads (:class:`dicomnode.net.pdu.SocketReader`) and
streams each data set's fragments straight into a receive file
(:class:`dicomnode.storage.IncomingFile`); nothing polls and nothing is handed between threads.
pynetdicom decodes and encodes the association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-ABORT) and negotiates
the presentation contexts (``negotiate_unrestricted``, see :mod:`dicomnode.net.contexts`).

Its life: TLS handshake (when the listener has a context), A-ASSOCIATE, P-DATA until A-RELEASE,
A-ABORT or a timeout. Protocol violations end the association with an A-ABORT and one structured
log line (UIDs and AE titles only); the listener itself keeps serving.

What a peer can make it hold is bounded: until the association is accepted it reads into a small
buffer and the whole A-ASSOCIATE-RQ must arrive within the ACSE timeout (a total, not per read);
a PDU longer than the maximum we announced, a command set over
:data:`~dicomnode.net.pdu.MAX_COMMAND_SET` or an A-RELEASE-RQ/A-ABORT of the wrong length is
aborted from its header, unread. Between messages the next one must be complete within the network
timeout of the last, however many empty PDUs arrive meanwhile; while a data set arrives each read
has the DIMSE timeout, and empty PDUs or PDVs for the network timeout count as idle too. A data
set refused before it is whole (too large, disk full) is drained so the sender gets its status, but
at most :data:`MAX_DRAIN_BYTES` of it: past that the association is aborted.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydicom.uid import UID
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

from dicomnode.net import status
from dicomnode.net.commitment_report import MAX_REPORT_BYTES, STORAGE_COMMITMENT_PUSH_MODEL, decode_report
from dicomnode.net.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    EVENT_TYPE_ID,
    MESSAGE_ID,
    N_EVENT_REPORT_RQ,
    NO_DATA_SET,
    RESPONSE_BIT,
    c_echo_rsp,
    c_store_rsp,
    command_ui,
    command_us,
    decode_command,
    response,
)
from dicomnode.net.pdu import (
    A_ABORT_TYPE,
    A_ASSOCIATE_RQ_TYPE,
    A_RELEASE_RP_PDU,
    A_RELEASE_RQ_TYPE,
    HANDSHAKE_BUFFER,
    MAX_ASSOCIATE_RQ,
    MAX_COMMAND_SET,
    P_DATA_TF_TYPE,
    PDU_HEADER,
    PDV_HEADER,
    READ_BUFFER,
    RELEASE_ABORT_LENGTH,
    PeerGone,
    ProtocolError,
    SocketReader,
    encode_p_data,
)
from dicomnode.net.tls import certificate_cns
from dicomnode.storage import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IncomingFile,
    create_incoming_file,
    encode_file_meta,
)

if TYPE_CHECKING:
    from dicomnode.net.listener import Listener

log = structlog.get_logger("dicomnode.scp")

#: DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = UID("1.2.840.10008.3.1.1.1")

#: A-ASSOCIATE-RJ (result, source, diagnostic) and what we log (PS3.8 9.3.4).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_TOO_MANY = (0x02, 0x03, 0x02)
_REJECT_REASONS = {
    REJECT_CALLING_AE: "calling ae not allowed",
    REJECT_CALLED_AE: "called ae is not ours",
    REJECT_TOO_MANY: "too many associations",
}

#: How much of a data set refused before it was whole (0xA700: larger than
#: DICOMNODE_MAX_DATASET_BYTES, disk full) is read and dropped so that the sender gets its status;
#: a sender still sending past this is aborted instead. Room for a whole radiograph; it bounds how
#: long one association streams into nothing, not memory (drained bytes are never held).
MAX_DRAIN_BYTES = 64 << 20
#: After an A-ASSOCIATE-RJ the requestor closes the connection (PS3.8 Sta13, the ARTIM timer): we
#: wait this long for it, so that closing first cannot reset the connection before the
#: requestor has read the rejection (a TLS peer's unread bytes turn our close into a TCP RST).
REJECT_LINGER_SECONDS = 1.0


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
    #: the number of the association that sent it (:attr:`Association.serial`), for
    #: :data:`AssociationEndCallback`; 0: none
    association: int = 0


#: What the node does with each C-STORE: returns the DIMSE status to answer (:mod:`dicomnode.net.status`).
StoreCallback = Callable[[StoreRequest], int]
#: Told once an association has ended, with its :attr:`Association.serial` and whether the peer
#: released it (A-RELEASE-RQ answered): then every instance it sent has been answered and the peer
#: meant to stop. False: aborted (by either side), timed out or the connection dropped.
AssociationEndCallback = Callable[[int, bool], None]

#: Association numbers, unique within the process (the listener's accept loop takes them).
_SERIALS = itertools.count(1)


def next_serial() -> int:
    """A number no association or other sender (a STOW-RS request) of this process has had: the
    node's study tracker tells senders apart by it (:attr:`StoreRequest.association`)."""
    return next(_SERIALS)


@dataclass
class _Message:
    """A DIMSE request being received: its command set, then (for C-STORE) its data set."""

    context_id: int
    command: int
    message_id: int
    sop_class: str
    sop_instance: str | None
    has_data_set: bool
    incoming: IncomingFile | None = None
    refuse: int | None = None  # a status decided before the data set arrived
    drained: int = 0  # bytes of a refused data set read and dropped
    event_type: int | None = None  # N-EVENT-REPORT-RQ's Event Type ID
    report: bytearray | None = None  # a commitment report's data set, kept in memory (bounded)


class Association(threading.Thread):
    """One TCP connection and the association on it, served on its own thread."""

    def __init__(self, listener: Listener, sock: socket.socket, peer: str) -> None:
        super().__init__(name=f"dicomnode-assoc-{peer}", daemon=True)
        self.listener = listener
        self.sock = sock
        self.peer = peer
        self.calling_ae = ""
        self.is_established = False
        #: this association's number, as its C-STOREs carry it (:attr:`StoreRequest.association`)
        self.serial = next_serial()
        #: the peer ended the association with an A-RELEASE-RQ (the only normal end)
        self.released = False
        #: closed by the listener while still negotiating, to make room (its pending cap)
        self.evicted = False
        self._send_lock = threading.Lock()
        self._closed = False
        self._contexts: dict[int, PresentationContext] = {}
        self._peer_max_pdu = 0
        self._message: _Message | None = None
        self._command = bytearray()
        self._spare: tuple[int, str] | None = None
        self._bound: Any = log.bind(peer=peer)
        #: when the current run of empty PDUs or PDVs inside a data set began
        self._stalled_since: float | None = None

    # -- life ----------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            if not self._handshake():
                return
            self._serve()
        except PeerGone as exc:
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
            self.listener.forget(self)
            self.listener.ended(self)

    def abort(self) -> None:
        """End the association now (node shutdown): A-ABORT, then close the socket."""
        self._abort(source=0x00, reason=0x00)

    def evict(self) -> None:
        """Close a connection that is still negotiating (from the accept loop, with
        :attr:`evicted` set): no PDU, the TCP connection shut down; its own thread then ends
        quietly."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _abort(self, source: int, reason: int) -> None:
        if self._closed:
            return
        prim = A_ABORT()
        prim.abort_source = source
        abort_pdu = A_ABORT_RQ()
        abort_pdu.from_primitive(prim)
        if source == 0x02:
            abort_pdu.reason_diagnostic = reason
        self._send_last(abort_pdu.encode())

    def _send_last(self, data: bytes) -> None:
        """Send a closing PDU (A-ABORT, A-ASSOCIATE-RJ) if the peer still listens, then close."""
        try:
            self._send(data)
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
        if self._closed or self.evicted:  # we closed it ourselves (abort, shutdown, eviction)
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
        self.reader = SocketReader(self.sock, HANDSHAKE_BUFFER)
        self.reader.deadline = time.monotonic() + cfg.acse_timeout
        try:
            pdu_type, _, length = PDU_HEADER.unpack(self.reader.exact(6))
        except PeerGone:
            if not self.evicted:
                self._bound.warning("connection.dropped", reason="no association requested")
            self._close()
            return False
        if pdu_type != A_ASSOCIATE_RQ_TYPE or length > MAX_ASSOCIATE_RQ:
            self._bound.warning("connection.dropped", reason="no association requested", pdu_type=pdu_type)
            self._abort(source=0x02, reason=0x02 if pdu_type in range(2, 8) else 0x01)
            return False
        body = self.reader.exact(length)
        try:
            rq_pdu = A_ASSOCIATE_RQ()
            rq_pdu.decode(PDU_HEADER.pack(pdu_type, 0, length) + body)
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
        elif self.listener.client_aes and not self._certificate_allows_calling_ae():
            self._reject(rq, REJECT_CALLING_AE)
            return False
        elif called != cfg.ae_title:
            verdict = REJECT_CALLED_AE
        elif not self.listener.admit(self):
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
        ac.application_context_name = APPLICATION_CONTEXT
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
        self.reader.grow(READ_BUFFER)
        # the next DIMSE message must be complete by then: reads between messages and of a command
        # set share this deadline (empty PDUs do not move it); _complete sets the next one
        self.reader.deadline = time.monotonic() + cfg.network_timeout
        self.is_established = True
        self._bound.info("association.accepted", contexts=len(self._contexts))
        return True

    def _certificate_allows_calling_ae(self) -> bool:
        """DICOMNODE_TLS_CLIENT_AES: the peer's certificate (by subject CN) is listed for the calling
        AE it asked for; logs the rejection (certificate CN and AE titles, nothing else) if not."""
        cns = certificate_cns(self.sock)
        allowed = self.listener.client_aes
        if any(self.calling_ae in allowed.get(cn, ()) for cn in cns):
            return True
        self._bound.warning(
            "association.rejected",
            reason="calling ae not allowed for this client certificate",
            certificate_cn=list(cns),
            allowed_calling_aes=sorted({ae for cn in cns for ae in allowed.get(cn, ())}),
            hint="list the certificate's CN with this AE title in DICOMNODE_TLS_CLIENT_AES",
        )
        return False

    def _reject(self, rq: A_ASSOCIATE, verdict: tuple[int, int, int]) -> None:
        rj = A_ASSOCIATE()
        rj.result, rj.result_source, rj.diagnostic = verdict
        rj.calling_ae_title, rj.called_ae_title = rq.calling_ae_title, rq.called_ae_title
        rj_pdu = A_ASSOCIATE_RJ()
        rj_pdu.from_primitive(rj)
        try:
            self._send(rj_pdu.encode())
        except OSError:
            pass
        self._await_peer_close(REJECT_LINGER_SECONDS)
        self._close()

    def _await_peer_close(self, seconds: float, max_bytes: int = 1 << 16) -> None:
        """Read (and drop) what the peer still sends until it closes, for at most ``seconds`` and
        ``max_bytes``."""
        deadline = time.monotonic() + seconds
        got = 0
        try:
            while got < max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
                data = self.sock.recv(4096)
                if not data:
                    return
                got += len(data)
        except OSError:  # timeout, reset, TLS alert: the peer had its chance
            return

    # -- data phase ----------------------------------------------------------------------------

    def _serve(self) -> None:
        cfg = self.listener.config
        reader = self.reader
        max_pdu = cfg.max_pdu_bytes
        while True:
            pdu_type, _, length = PDU_HEADER.unpack(reader.exact(6))
            if pdu_type == P_DATA_TF_TYPE:
                if max_pdu and length > max_pdu:
                    raise ProtocolError(
                        f"P-DATA-TF of {length} bytes, longer than the maximum PDU length we "
                        f"negotiated ({max_pdu}, DICOMNODE_MAX_PDU_BYTES)"
                    )
                if not length:
                    self._no_progress()
                self._p_data(length)
            elif pdu_type in (A_RELEASE_RQ_TYPE, A_ABORT_TYPE) and length != RELEASE_ABORT_LENGTH:
                raise ProtocolError(
                    f"PDU type 0x{pdu_type:02X} of {length} bytes (PS3.8 9.3.6, 9.3.8: always 4)"
                )
            elif pdu_type == A_RELEASE_RQ_TYPE:
                reader.exact(length)
                self._send(A_RELEASE_RP_PDU)
                # a release in the middle of a data set is no normal end: that instance was never answered
                self.released = self._message is None
                self._discard_partial()
                self.is_established = False
                self._bound.debug("association.released")
                self._close()
                return
            elif pdu_type == A_ABORT_TYPE:
                reader.exact(length)
                self._bound.warning("association.aborted")
                self._close()
                return
            elif pdu_type in (0x01, 0x02, 0x03, 0x06):  # association set-up and A-RELEASE-RP
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} on an established association")
            else:
                raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}")

    def _p_data(self, length: int) -> None:
        reader = self.reader
        left = length
        while left:
            if left < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV header")
            item_len, context_id, control = PDV_HEADER.unpack(reader.exact(6))
            left -= 6
            data_len = item_len - 2
            if data_len < 0 or data_len > left:
                raise ProtocolError("PDV length does not fit its P-DATA-TF")
            left -= data_len
            if context_id not in self._contexts:
                raise ProtocolError(f"PDV on presentation context {context_id}, which was not accepted")
            # message control header (PS3.8 E.2): bit 0 command (else data set), bit 1 last fragment
            last = bool(control & 0x02)
            if control & 0x01:
                self._command_fragment(context_id, data_len, last)
            else:
                self._data_fragment(context_id, data_len, last)

    def _command_fragment(self, context_id: int, data_len: int, last: bool) -> None:
        if self._message is not None:
            raise ProtocolError("a command set arrived before the previous data set was complete")
        if len(self._command) + data_len > MAX_COMMAND_SET:  # refused before it is read
            raise ProtocolError(f"command set longer than {MAX_COMMAND_SET} bytes")
        self._command += self.reader.exact(data_len)
        if not last:
            return
        values = decode_command(bytes(self._command))
        self._command.clear()
        command, message_id = command_us(values, COMMAND_FIELD), command_us(values, MESSAGE_ID)
        data_set_type = command_us(values, COMMAND_DATA_SET_TYPE)
        if command is None or data_set_type is None:
            raise ProtocolError("command set without Command Field or Command Data Set Type")
        if command == C_CANCEL_RQ or command & RESPONSE_BIT:
            return  # cancels and responses need no answer from a storage SCP
        if message_id is None:
            raise ProtocolError("request without Message ID")
        sop_class = command_ui(values, AFFECTED_SOP_CLASS_UID)
        if not sop_class:
            raise ProtocolError(f"request 0x{command:04X} without Affected SOP Class UID")
        msg = _Message(
            context_id=context_id,
            command=command,
            message_id=message_id,
            sop_class=sop_class,
            sop_instance=command_ui(values, AFFECTED_SOP_INSTANCE_UID),
            has_data_set=data_set_type != NO_DATA_SET,
        )
        if command == N_EVENT_REPORT_RQ:
            self._begin_report(msg, values)
        if command == C_STORE_RQ:
            if not msg.has_data_set:
                raise ProtocolError("C-STORE-RQ without a data set")
            if not msg.sop_instance:
                raise ProtocolError("C-STORE-RQ without Affected SOP Instance UID")
            cx = self._contexts[context_id]
            cfg = self.listener.config
            try:
                meta = encode_file_meta(
                    msg.sop_class, msg.sop_instance, str(cx.transfer_syntax[0]), self.calling_ae
                )
                if cfg.min_free_bytes and shutil.disk_usage(self.listener.incoming_dir).free < cfg.min_free_bytes:
                    # refused before any of it is written: the data set that follows is drained
                    self._bound.error(
                        "store.refused",
                        reason="free disk space below DICOMNODE_MIN_FREE_BYTES",
                        sop_instance_uid=msg.sop_instance,
                        status=status.OUT_OF_RESOURCES,
                    )
                    msg.refuse = status.OUT_OF_RESOURCES
                else:
                    spare, self._spare = self._spare, None
                    msg.incoming = IncomingFile(
                        self.listener.incoming_dir,
                        meta,
                        cfg.early_writeback,
                        spare,
                        max_bytes=cfg.max_dataset_bytes,
                    )
            except (ValueError, TypeError) as exc:  # UIDs that cannot go into a file meta
                self._bound.warning(
                    "store.refused",
                    reason="cannot write file meta",
                    error=type(exc).__name__,
                    status=status.CANNOT_UNDERSTAND,
                )
                msg.refuse = status.CANNOT_UNDERSTAND
            except OSError as exc:  # no receive file (disk or inodes full): the sender retries later
                self._bound.error(
                    "store.refused",
                    reason="cannot create the receive file",
                    error=type(exc).__name__,
                    status=status.OUT_OF_RESOURCES,
                )
                msg.refuse = status.OUT_OF_RESOURCES
        self._message = msg
        if not msg.has_data_set:
            self._complete()
        else:  # a data set may take long to arrive: each read has the DIMSE timeout, not a total
            self.reader.deadline = None
            self._stalled_since = None
            self.sock.settimeout(self.listener.config.dimse_timeout)

    def _data_fragment(self, context_id: int, data_len: int, last: bool) -> None:
        msg = self._message
        if msg is None or not msg.has_data_set or context_id != msg.context_id:
            raise ProtocolError("data set fragment without its command set")
        if not data_len:
            self._no_progress()
        elif self._stalled_since is not None:
            self._stalled_since = None
        if msg.incoming is None or msg.incoming.refused is not None:  # refused: drained, within a bound
            msg.drained += data_len
            if msg.drained > MAX_DRAIN_BYTES:
                self._stop_draining(msg)
        if msg.incoming is not None:
            self.reader.pipe(data_len, msg.incoming.write)
        elif msg.report is not None:
            self._report_fragment(msg, data_len)
        else:  # a data set we do not keep (refused up front, or not a C-STORE)
            self.reader.pipe(data_len, lambda _: None)
        if last:
            self._complete()

    def _complete(self) -> None:
        msg = self._message
        assert msg is not None
        if msg.command == C_STORE_RQ:
            code = self._store(msg)
            self.listener.last_store = time.monotonic()
            rsp = c_store_rsp(msg.message_id, msg.sop_class, msg.sop_instance, code)
        elif msg.command == C_ECHO_RQ:
            self._bound.info("echo")
            rsp = c_echo_rsp(msg.message_id, msg.sop_class)
        elif msg.report is not None:
            rsp = response(
                msg.command | RESPONSE_BIT, msg.message_id, msg.sop_class, msg.sop_instance, self._report(msg)
            )
        else:
            self._bound.warning(
                "request.refused", command=f"0x{msg.command:04X}", status=status.UNRECOGNISED_OPERATION
            )
            rsp = response(
                msg.command | RESPONSE_BIT,
                msg.message_id,
                msg.sop_class,
                msg.sop_instance,
                status.UNRECOGNISED_OPERATION,
            )
        self._message = None
        self.reader.deadline = time.monotonic() + self.listener.config.network_timeout
        self._send(encode_p_data(msg.context_id, rsp, self._peer_max_pdu))
        if msg.command == C_STORE_RQ and self._spare is None:
            # the next instance's file, made while the sender reads our response and sends again
            # rather than after its command arrives
            try:
                self._spare = create_incoming_file(self.listener.incoming_dir)
            except OSError:
                pass  # the next C-STORE makes its own and reports what is wrong

    # -- storage commitment reports (dicomnode.net.commitment_report) ---------------------------

    def _begin_report(self, msg: _Message, values: dict[int, bytes]) -> None:
        """An N-EVENT-REPORT-RQ: kept in memory when it is a commitment report we can record."""
        if msg.sop_class != STORAGE_COMMITMENT_PUSH_MODEL or self.listener.on_commitment is None:
            return  # answered "unrecognised operation"; its data set is drained
        if not msg.has_data_set:
            raise ProtocolError("storage commitment N-EVENT-REPORT-RQ without a data set")
        msg.event_type = command_us(values, EVENT_TYPE_ID)
        msg.report = bytearray()

    def _report_fragment(self, msg: _Message, data_len: int) -> None:
        assert msg.report is not None
        if len(msg.report) + data_len > MAX_REPORT_BYTES:  # refused from its header, unread
            raise ProtocolError(f"storage commitment report longer than {MAX_REPORT_BYTES} bytes")
        msg.report += self.reader.exact(data_len)

    def _report(self, msg: _Message) -> int:
        """Decode a commitment report and hand it to the listener's callback; the status to answer."""
        assert msg.report is not None and self.listener.on_commitment is not None
        try:
            report = decode_report(
                self.calling_ae,
                msg.event_type or 0,
                str(self._contexts[msg.context_id].transfer_syntax[0]),
                bytes(msg.report),
            )
        except Exception as exc:  # pydicom's decode errors are many; the PACS gets a clear status
            self._bound.warning("commitment.report_refused", reason="cannot decode", error=str(exc)[:200])
            return status.CANNOT_UNDERSTAND
        try:
            return int(self.listener.on_commitment(report))
        except Exception as exc:
            self._bound.error(
                "commitment.report_failed", error=type(exc).__name__, status=status.PROCESSING_FAILURE
            )
            return status.PROCESSING_FAILURE

    def _stop_draining(self, msg: _Message) -> None:
        """A refused data set is still arriving past :data:`MAX_DRAIN_BYTES`: abort, unread."""
        self._bound.error(
            "store.drain_limit",
            reason="refused data set still arriving; association aborted",
            sop_instance_uid=msg.sop_instance,
            drained=msg.drained,
            limit=MAX_DRAIN_BYTES,
        )
        self._abort(source=0x02, reason=0x00)
        raise PeerGone("drain limit")

    def _no_progress(self) -> None:
        """An empty P-DATA-TF or PDV: a peer sending only these for the network timeout is idle
        (between messages the idle deadline already covers it)."""
        if self._message is None:
            return
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since > self.listener.config.network_timeout:
            raise PeerGone("timeout")

    def _store(self, msg: _Message) -> int:
        incoming = msg.incoming
        if incoming is None:
            return msg.refuse if msg.refuse is not None else status.CANNOT_UNDERSTAND
        if incoming.refused is not None:  # disk full or too large: deleted, the rest was drained
            self._bound.error(
                "store.refused",
                reason=incoming.refused,
                sop_instance_uid=msg.sop_instance,
                bytes=incoming.received,
                status=status.OUT_OF_RESOURCES,
            )
            return status.OUT_OF_RESOURCES
        incoming.close()
        cx = self._contexts[msg.context_id]
        req = StoreRequest(
            calling_ae=self.calling_ae,
            sop_class_uid=str(cx.abstract_syntax),
            sop_instance_uid=str(msg.sop_instance),
            transfer_syntax_uid=str(cx.transfer_syntax[0]),
            path=incoming.path,
            head=bytes(incoming.head),
            association=self.serial,
        )
        try:
            return int(self.listener.on_store(req))
        except Exception as exc:
            self._bound.error("store.failed", error=type(exc).__name__, status=status.PROCESSING_FAILURE)
            return status.PROCESSING_FAILURE
        finally:
            incoming.path.unlink(missing_ok=True)  # still there only when it was not stored


__all__ = [
    "APPLICATION_CONTEXT",
    "MAX_DRAIN_BYTES",
    "REJECT_CALLED_AE",
    "REJECT_CALLING_AE",
    "REJECT_TOO_MANY",
    "Association",
    "AssociationEndCallback",
    "StoreCallback",
    "StoreRequest",
]
