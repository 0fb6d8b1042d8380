"""A hostile peer against the node's own listener: what it announces never sizes what the node holds.

Each test speaks raw bytes on loopback to a real node (PDUs built as PS3.8 9.3 lays them out, the
A-ASSOCIATE-RQ encoded by pynetdicom), then checks that the node refused cleanly, that its memory
stayed bounded where the peer announced a lot, and that a legitimate C-ECHO still succeeds.

Peak memory is the process's own (the node runs in the test process): the high-water mark of the
resident set is reset through ``/proc/self/clear_refs`` before a probe and read from
``/proc/self/status`` after it.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    Verification,
)

from dicomnode.config import Settings
from dicomnode.net.dimse import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_STORE_RQ,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    encode_command,
)
from dicomnode.node import Node
from tests.integration.test_listener_protocol import _node
from tests.support import echo_ok, wait_until

MiB = 1 << 20
#: A probe that made the node hold what the peer announced (256 MiB) would pass this by far.
MEMORY_BOUND = 64 * MiB
ECHO_CONTEXT, STORE_CONTEXT = 1, 3


# --------------------------------------------------------------------------------------------
# raw PDUs (PS3.8 9.3)


def _associate_rq() -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title, prim.called_ae_title = "HOSTILE", "DICOMNODE"
    echo = build_context(Verification)
    echo.context_id = ECHO_CONTEXT
    store = build_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    store.context_id = STORE_CONTEXT
    prim.presentation_context_definition_list = [echo, store]
    max_len = MaximumLengthNotification()
    max_len.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.99"
    prim.user_information = [max_len, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def _pdu(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def _p_data_header(data_len: int, context_id: int, control: int) -> bytes:
    """A P-DATA-TF header and the header of its one PDV announcing ``data_len`` bytes of value."""
    return _pdu(0x04, data_len + 6) + struct.pack(">LBB", data_len + 2, context_id, control)


def _uid(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def _c_store_rq() -> bytes:
    return encode_command(
        [
            (AFFECTED_SOP_CLASS_UID, _uid(DigitalXRayImageStorageForPresentation)),
            (COMMAND_FIELD, struct.pack("<H", C_STORE_RQ)),
            (MESSAGE_ID, struct.pack("<H", 1)),
            (COMMAND_DATA_SET_TYPE, struct.pack("<H", 0)),
            (AFFECTED_SOP_INSTANCE_UID, _uid(generate_uid())),
        ]
    )


def _read_pdu(s: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(s, 6)
    (length,) = struct.unpack(">L", head[2:])
    return head[0], _recv_exact(s, length)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        part = s.recv(n - len(out))
        if not part:
            raise ConnectionError("closed")
        out += part
    return out


def _associated(port: int) -> socket.socket:
    """A raw connection with an accepted association (Verification and DX storage contexts)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(_associate_rq())
    pdu_type, _ = _read_pdu(s)
    assert pdu_type == 0x02, f"no A-ASSOCIATE-AC but PDU type 0x{pdu_type:02X}"
    return s


def _answer(s: socket.socket, timeout: float) -> int | None:
    """The type of the next PDU the node sends within ``timeout`` s; None if it closed the connection
    (a reset included) without one. Fails the test if nothing happens in time."""
    s.settimeout(timeout)
    try:
        head = s.recv(1)
    except TimeoutError:
        raise AssertionError(f"the node neither answered nor closed within {timeout} s") from None
    except ConnectionError:
        return None
    return head[0] if head else None


def _closed_within(s: socket.socket, timeout: float) -> bool:
    """True once the node closes ``s`` (end of stream or reset, whatever it sent before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([s], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                if not s.recv(65536):
                    return True
            except ConnectionError:
                return True
    return False


# --------------------------------------------------------------------------------------------
# peak memory of this process (the node's)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakMemory:
    """How far this process's resident set rose at its peak since :meth:`reset`."""

    def reset(self) -> None:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
        self.base = _status_kib("VmRSS")

    def rise(self) -> int:
        """Bytes."""
        return (_status_kib("VmHWM") - self.base) * 1024


@pytest.fixture
def peak_memory() -> PeakMemory:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("/proc/self/clear_refs cannot reset the peak resident set here")
    return PeakMemory()


def _send_in_background(s: socket.socket, head: bytes, body_len: int) -> threading.Thread:
    """Send ``head`` and then ``body_len`` zero bytes, as fast as the node takes them, until it
    closes the connection."""

    def send() -> None:
        chunk = bytes(MiB)
        try:
            s.sendall(head)
            left = body_len
            while left:
                left -= s.send(memoryview(chunk)[: min(left, MiB)])
        except OSError:
            pass

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------------------------
# PDU limits


def test_p_data_pdu_longer_than_our_maximum_pdu_is_aborted_from_its_header(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory, max_pdu_bytes=65536)
    with _associated(node.port) as s:
        # a command PDV 64 MiB long: only the headers are sent, the node must not wait for the rest
        s.sendall(_p_data_header(64 * MiB, ECHO_CONTEXT, 0x03))
        assert _answer(s, 5) == 0x07  # A-ABORT
    [line] = [e for e in logs if e["event"] == "association.failed"]
    assert "maximum PDU length" in line["error"]
    assert echo_ok(node.port)


def test_command_set_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    logs: list[dict[str, Any]],
    peak_memory: PeakMemory,
) -> None:
    node = _node(tmp_path, node_factory, max_pdu_bytes=0)  # no PDU limit: only the command-set limit
    with _associated(node.port) as s:
        peak_memory.reset()
        started = time.monotonic()
        sender = _send_in_background(s, _p_data_header(256 * MiB, ECHO_CONTEXT, 0x03), 256 * MiB)
        assert _answer(s, 30) in (0x07, None)  # A-ABORT (or the reset that overtook it)
        took = time.monotonic() - started
        sender.join(30)
    rose = peak_memory.rise()
    assert rose < MEMORY_BOUND, f"a 256 MiB command set raised the node's peak memory by {rose >> 20} MiB"
    assert took < 5
    [line] = [e for e in logs if e["event"] == "association.failed"]
    assert "command set longer than" in line["error"]
    assert echo_ok(node.port)


def test_release_request_with_a_huge_body_is_aborted_not_released(
    tmp_path: Path, node_factory: Callable[[Settings], Node], peak_memory: PeakMemory
) -> None:
    node = _node(tmp_path, node_factory)
    with _associated(node.port) as s:
        peak_memory.reset()
        sender = _send_in_background(s, _pdu(0x05, 256 * MiB), 256 * MiB)
        assert _answer(s, 30) in (0x07, None)  # never A-RELEASE-RP (0x06)
        sender.join(30)
    rose = peak_memory.rise()
    assert rose < MEMORY_BOUND, f"a 256 MiB A-RELEASE-RQ raised the node's peak memory by {rose >> 20} MiB"
    assert echo_ok(node.port)


@pytest.mark.parametrize(
    ("pdu_type", "length"), [(0x05, 0), (0x05, 5), (0x07, 100)], ids=["release-0", "release-5", "abort-100"]
)
def test_release_and_abort_of_a_length_other_than_four_are_answered_with_abort(
    tmp_path: Path, node_factory: Callable[[Settings], Node], pdu_type: int, length: int
) -> None:
    node = _node(tmp_path, node_factory)
    with _associated(node.port) as s:
        s.sendall(_pdu(pdu_type, length) + bytes(min(length, 4)))
        assert _answer(s, 5) == 0x07
    assert echo_ok(node.port)


# --------------------------------------------------------------------------------------------
# floods


def test_connection_reads_into_a_small_buffer_until_its_association_is_accepted(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory)
    assert node._server is not None
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        wait_until(
            lambda: any(hasattr(a, "reader") for a in node._server.active_associations),  # type: ignore[union-attr]
            5,
            "the connection's reader",
        )
        [assoc] = node._server.active_associations
        assert len(assoc.reader.buf) <= 64 * 1024, "a full read buffer before any AE title was checked"
        s.sendall(_associate_rq())
        assert _read_pdu(s)[0] == 0x02
        # accepted: now the buffer data sets are read with
        wait_until(lambda: len(assoc.reader.buf) >= 1 << 20, 5, "the full read buffer once accepted")
    assert echo_ok(node.port)


def test_associate_request_trickled_a_byte_at_a_time_is_cut_off_at_the_acse_timeout(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    node = _node(tmp_path, node_factory, acse_timeout_seconds=1)
    rq = _associate_rq()
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        started = time.monotonic()
        closed = False
        for byte in rq:  # one byte every 0.25 s: each read well inside the 1 s timeout
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if _closed_within(s, 0.25):
                closed = True
                break
            if time.monotonic() - started > 4:
                break
        assert closed, "a peer trickling its A-ASSOCIATE-RQ held the connection past the ACSE timeout"
        assert time.monotonic() - started < 3
    assert echo_ok(node.port)


def test_idle_association_kept_open_by_empty_p_data_is_aborted(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory, network_timeout_seconds=1)
    with _associated(node.port) as s:
        assert _keep_sending_until_answered(s, _pdu(0x04, 0), within=4) == 0x07
    assert [e for e in logs if e["event"] == "association.timed_out"]
    assert echo_ok(node.port)


def test_data_set_that_only_ever_gets_empty_fragments_is_aborted(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory, network_timeout_seconds=1, dimse_timeout_seconds=5)
    command = _c_store_rq()
    with _associated(node.port) as s:
        s.sendall(_p_data_header(len(command), STORE_CONTEXT, 0x03) + command)
        empty_fragment = _p_data_header(0, STORE_CONTEXT, 0x00)
        assert _keep_sending_until_answered(s, empty_fragment, within=4) == 0x07
    assert [e for e in logs if e["event"] == "association.timed_out"]
    wait_until(lambda: list(node.incoming_dir.iterdir()) == [], 5, "the partial receive file to go")
    assert echo_ok(node.port)


def _keep_sending_until_answered(s: socket.socket, pdu: bytes, *, within: float) -> int | None:
    """Send ``pdu`` every 0.2 s until the node answers or closes; its answer's PDU type."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            s.sendall(pdu)
        except OSError:
            return None
        if select.select([s], [], [], 0.2)[0]:
            return _answer(s, 1)
    raise AssertionError(f"the association was still open after {within} s of empty PDUs")


def test_connections_beyond_the_per_address_cap_are_closed_on_accept(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory, max_associations_per_peer=2)
    assert node._server is not None
    held = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(2)]
    try:
        wait_until(lambda: len(node._server.active_associations) == 2, 5, "two connections held")  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as extra:
            assert _closed_within(extra, 3), "a third connection from the same address was kept"
        assert len(node._server.active_associations) == 2
        wait_until(lambda: any(e["event"] == "connection.refused" for e in logs), 5, "the refusal logged")
        [line] = [e for e in logs if e["event"] == "connection.refused"]
        assert line["peer"] == "127.0.0.1" and line["open"] == 2
    finally:
        for s in held:
            s.close()
    wait_until(lambda: not node._server.active_associations, 5, "the held connections to be let go")  # type: ignore[union-attr]
    assert echo_ok(node.port)


def _thread_cpu_seconds(stat_fd: int) -> float:
    """User and system CPU time of one thread, from its /proc/self/task/<tid>/stat opened as
    ``stat_fd`` (proc(5): fields 14 and 15); read again from the start, so no new descriptor."""
    fields = os.pread(stat_fd, 4096, 0).decode().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _at_descriptor_limit(port: int, stat_fd: int) -> float:
    """Connect to ``port`` with every descriptor of this process in use; the CPU seconds the
    accept thread (its ``/proc`` stat open as ``stat_fd``) spends in the next 1.5 s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.socket()  # made before the limit: connecting it needs no new descriptor
    fillers: list[int] = []
    try:
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, hard))
        while True:  # every descriptor below the limit in use: the node's accept() gets EMFILE
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        client.connect(("127.0.0.1", port))  # waits in the backlog, the listener readable
        before = _thread_cpu_seconds(stat_fd)
        time.sleep(1.5)
        return _thread_cpu_seconds(stat_fd) - before
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()


def test_accept_loop_backs_off_when_out_of_file_descriptors(
    tmp_path: Path, node_factory: Callable[[Settings], Node], logs: list[dict[str, Any]]
) -> None:
    node = _node(tmp_path, node_factory)
    assert node._server is not None and node._server._thread is not None
    accept_thread = node._server._thread.native_id
    stat_fd = os.open(f"/proc/self/task/{accept_thread}/stat", os.O_RDONLY)
    try:
        # another thread of this test process (an earlier test's idle association or decoding
        # child winding down) may close a descriptor meanwhile, and the accept then succeeds:
        # measure again, at most three times, until the node met the limit
        for _ in range(3):
            spent = _at_descriptor_limit(node.port, stat_fd)
            if any(e["event"] == "listener.accept_failed" for e in logs):
                break
    finally:
        os.close(stat_fd)
    assert spent < 0.4, f"the accept loop used {spent:.2f} s of CPU in 1.5 s at the descriptor limit"
    failed = [e for e in logs if e["event"] == "listener.accept_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "EMFILE"
    assert echo_ok(node.port)
