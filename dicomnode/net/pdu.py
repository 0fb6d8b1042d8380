"""Upper layer PDUs on the wire: headers, P-DATA-TF framing and the socket reader (PS3.8 9.3).

pynetdicom decodes and encodes the association PDUs themselves (A-ASSOCIATE-RQ/AC/RJ, A-ABORT);
this module frames P-DATA and reads the socket. :class:`SocketReader` makes one blocking read per
system call into one reusable buffer and hands the bytes on as views, so a data set fragment goes
from the socket to its file without a copy.

Nothing here allocates from a length field the peer wrote before that length is checked against a
limit: the association PDU (:data:`MAX_ASSOCIATE_RQ`), the command set (:data:`MAX_COMMAND_SET`),
A-RELEASE-RQ and A-ABORT (:data:`RELEASE_ABORT_LENGTH`), P-DATA-TF (the maximum PDU length we
announced); data set fragments are streamed, never held whole.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

#: type, reserved, length (PS3.8 9.3.1)
PDU_HEADER = struct.Struct(">BBL")
#: item length, presentation context ID, message control header (PS3.8 9.3.5.1, E.2)
PDV_HEADER = struct.Struct(">LBB")

# PDU types (PS3.8 9.3.1), the first byte of every PDU
A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF_TYPE = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_ABORT_TYPE = 0x07
#: The whole A-RELEASE-RP PDU (PS3.8 9.3.7): type 0x06, length 4, four reserved bytes.
A_RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

#: Association requests and command sets are small; a peer announcing more is not speaking DICOM.
MAX_ASSOCIATE_RQ = 1 << 20
MAX_COMMAND_SET = 1 << 16
#: A-RELEASE-RQ, A-RELEASE-RP and A-ABORT carry four bytes after the header (PS3.8 9.3.6-9.3.8).
RELEASE_ABORT_LENGTH = 4
#: What one read from the socket may fill, once an association is accepted.
READ_BUFFER = 1 << 20
#: The buffer of a connection still negotiating: a typical A-ASSOCIATE-RQ fits, and a peer that
#: never gets past its AE title check never costs the node :data:`READ_BUFFER`.
HANDSHAKE_BUFFER = 1 << 14


class ProtocolError(Exception):
    """The peer broke PS3.7/PS3.8: the association ends with an A-ABORT."""


class PeerGone(Exception):
    """The connection closed (or timed out) under us."""


class SocketReader:
    """Blocking reads from one socket into one reusable buffer: as many bytes per system call as
    the kernel has, handed out as views (no copy) or short ``bytes``. Raises :class:`PeerGone`
    when the connection closes or a read times out.

    ``deadline`` (a :func:`time.monotonic` time, or None) bounds every read until it is cleared as
    a total, not per read: a peer sending one byte just inside the socket timeout cannot hold the
    connection past it. The socket timeout is left at what remained; whoever clears ``deadline``
    sets the socket timeout it wants next."""

    def __init__(self, sock: socket.socket, size: int = READ_BUFFER) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.deadline: float | None = None

    def grow(self, size: int) -> None:
        """Read into a buffer of ``size`` bytes from now on, keeping what is unread."""
        if size <= len(self.buf):
            return
        buf = bytearray(size)
        tail = self.end - self.start
        buf[:tail] = self.view[self.start : self.end]
        self.buf, self.view = buf, memoryview(buf)
        self.start, self.end = 0, tail

    def _fill(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise PeerGone("timeout")
            self.sock.settimeout(left)
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):  # keep the unread tail, make room behind it
            tail = self.end - self.start
            self.buf[:tail] = self.buf[self.start : self.end]
            self.start, self.end = 0, tail
        try:
            n = self.sock.recv_into(self.view[self.end :])
        except TimeoutError as exc:
            raise PeerGone("timeout") from exc
        except (OSError, ssl.SSLError) as exc:
            raise PeerGone(type(exc).__name__) from exc
        if n == 0:
            raise PeerGone("closed")
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


def encode_p_data(context_id: int, message: bytes, peer_max_pdu: int) -> bytes:
    """``message`` (a command set) as P-DATA-TF PDUs of one PDV each, none longer than the peer
    accepts (``peer_max_pdu``; 0 or too small to matter: one PDU)."""
    room = peer_max_pdu - 6 if peer_max_pdu >= 8 else len(message)
    room = max(room, 1)
    out = bytearray()
    for start in range(0, len(message), room):
        part = message[start : start + room]
        control = 0x03 if start + room >= len(message) else 0x01  # command, last fragment or not
        out += PDU_HEADER.pack(P_DATA_TF_TYPE, 0, len(part) + 6)
        out += PDV_HEADER.pack(len(part) + 2, context_id, control) + part
    return bytes(out)


__all__ = [
    "A_ABORT_TYPE",
    "A_ASSOCIATE_RQ_TYPE",
    "A_RELEASE_RP_PDU",
    "A_RELEASE_RQ_TYPE",
    "HANDSHAKE_BUFFER",
    "MAX_ASSOCIATE_RQ",
    "MAX_COMMAND_SET",
    "PDU_HEADER",
    "PDV_HEADER",
    "P_DATA_TF_TYPE",
    "READ_BUFFER",
    "RELEASE_ABORT_LENGTH",
    "PeerGone",
    "ProtocolError",
    "SocketReader",
    "encode_p_data",
]
