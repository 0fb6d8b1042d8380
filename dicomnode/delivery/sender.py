"""One delivery attempt: the result objects to one destination over one C-STORE association.

Reports one :class:`AttemptResult` per object and never raises for a peer that is down, refuses or
aborts. Retries and their waits are :mod:`dicomnode.delivery.retry`'s; kept-open associations
reused across studies :mod:`dicomnode.delivery.pool`'s.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pynetdicom.association
import structlog
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    Comprehensive3DSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import EventHandlerType

from dicomnode.config import Destination
from dicomnode.delivery import checkpoint
from dicomnode.delivery.pool import PARKED_POLL_SECONDS, POOL, PoolKey, close_association
from dicomnode.delivery.tls import client_tls_args

log = structlog.get_logger("dicomnode.delivery")

# send_c_store(path) sends the file's bytes as they are (else pynetdicom decodes and re-encodes
# it): a stored result goes out as written, encoded once (encoded_file)
_config.STORE_SEND_CHUNKED_DATASET = True

#: C-STORE statuses that mean the peer stored the object (success and the 0xB0xx warnings).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True)
class AttemptResult:
    """One C-STORE attempt of one object to one destination."""

    destination: str
    sop_instance_uid: str
    attempt: int
    success: bool
    status: int | None  # None when no association could be made
    error: str | None


#: Rebuilds an object in another SOP class when the peer refuses ours (e.g. 3D SR -> Enhanced SR).
Fallback = Callable[[Dataset], Dataset | None]


def enhanced_sr_fallback(ds: Dataset) -> Dataset | None:
    """Our Comprehensive 3D SR as an Enhanced SR, for a peer that does not take the former.

    Our SR has no 3D spatial coordinates, so the content is valid Enhanced SR as it is (the
    pipeline builds the same document with ``enhanced=True``); only the SOP class changes. This
    lets a round that reads the results back from disk fall back as the first round does."""
    if str(ds.SOPClassUID) != str(Comprehensive3DSRStorage):
        return None
    alt = copy.deepcopy(ds)
    alt.filename = None  # no longer what the file holds: encoded when sent
    alt.SOPClassUID = EnhancedSRStorage
    if "file_meta" in alt.__dict__ or hasattr(alt, "file_meta"):
        alt.file_meta.MediaStorageSOPClassUID = EnhancedSRStorage
    return alt


class _DeliveryAE(AE):
    """The AE of our delivery and C-ECHO associations: their DUL threads are daemons."""


class _DUL(DULServiceProvider):
    """pynetdicom runs each association's DUL on a non-daemon thread (``dul.py``: ``self.daemon =
    False``), so a connect to a host that drops SYNs holds the interpreter's exit until its
    connection timeout, after SIGTERM. Ours are daemons: a delivery cut short at shutdown is due
    again at the next start (``studies.delivery_due_at``), so nothing is lost by not waiting. Other
    AEs in the process (``dicomnode push``, the test PACS) keep pynetdicom's behaviour there.

    Every association of the process gets a pause of its reactor that holds
    (:mod:`dicomnode.delivery.checkpoint`): without it a send on a reused association can lose its
    answer to the reactor and wait out its DIMSE timeout."""

    def __init__(self, assoc: Association) -> None:
        self._awake = threading.Event()  # cleared while parked (dicomnode.delivery.pool)
        self._awake.set()
        self._poll_seconds = 0.001
        super().__init__(assoc)
        if isinstance(assoc.ae, _DeliveryAE):
            self.daemon = True

    def run(self) -> None:
        # the association's thread runs only once this one has negotiated: nothing uses its
        # checkpoint yet (delivery/checkpoint.py)
        checkpoint.install(self.assoc)
        super().run()

    # pynetdicom's loop sleeps ``_run_loop_delay`` between looks at the socket when idle: a parked
    # association waits here instead, woken at once when it is taken out again
    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        if not self._awake.is_set():
            self._awake.wait(PARKED_POLL_SECONDS)
        return self._poll_seconds

    @_run_loop_delay.setter
    def _run_loop_delay(self, seconds: float) -> None:
        self._poll_seconds = seconds

    def park(self) -> None:
        """Look at the socket every :data:`~dicomnode.delivery.pool.PARKED_POLL_SECONDS` only."""
        self._awake.clear()

    def unpark(self) -> None:
        """Back to pynetdicom's polling, at once."""
        self._awake.set()


pynetdicom.association.DULServiceProvider = _DUL  # type: ignore[misc]


def _no_delay(event: evt.Event) -> None:
    """Turn off Nagle's algorithm on a delivery association's socket once it is connected.

    A C-STORE ends with a short P-DATA PDU: with Nagle it waits for the peer's delayed ACK (up to
    40 ms on Linux) before leaving, for every object and the association's negotiation. The socket
    is the TLS one for a TLS destination (the option is set on the TCP socket under it)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # closed meanwhile: the send reports it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Handlers bound to every delivery and C-ECHO association (``AE.associate(evt_handlers=...)``).
_HANDLERS: list[EventHandlerType] = [(evt.EVT_CONN_OPEN, _no_delay)]

# Associations of delivery attempts in progress: abort_all() ends them at shutdown, so a node
# stopping never waits for a destination that does not answer.
_active: set[Association] = set()
_active_lock = threading.Lock()


def _forget_active() -> None:
    # a forked child has none of its parent's attempts, and the lock may have been held at the fork
    global _active, _active_lock
    _active, _active_lock = set(), threading.Lock()


os.register_at_fork(after_in_child=_forget_active)


def abort_all() -> int:
    """Abort every delivery association in progress in this process and release the kept-open
    ones (:mod:`dicomnode.delivery.pool`); how many there were."""
    with _active_lock:
        live = list(_active)
    for assoc in live:
        try:
            assoc.abort()
        except Exception:  # already gone
            pass
    return len(live) + POOL.close()


#: SOP classes a kept-open association asks for whatever the first attempt sends: the results
#: (Comprehensive 3D SR, its Enhanced SR fallback, the heatmap SC), so the next study's fit too.
POOLED_SOP_CLASSES = (
    str(Comprehensive3DSRStorage),
    str(EnhancedSRStorage),
    str(SecondaryCaptureImageStorage),
)


def _request(ae: AE, dest: Destination) -> Association:
    """``ae``'s association request to ``dest``: TLS per destination (delivery/tls.py; an
    unreadable PEM file raises, failing the attempt like a peer down) and TCP_NODELAY."""
    return ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.ae_title,
        tls_args=client_tls_args(dest),
        evt_handlers=_HANDLERS,
    )


def _associate(
    dest: Destination,
    calling_ae: str,
    classes: Sequence[str],
    *,
    timeout: float,
    connect_timeout: float,
    deadline: float,
) -> Association | str:
    """A new association to ``dest`` asking for ``classes``, or why there is none."""
    ae = _DeliveryAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = min(timeout, deadline)
    ae.connection_timeout = min(connect_timeout, deadline)
    ae.maximum_pdu_size = 0
    # a context per transfer syntax: an acceptor picks one syntax of a context, maybe not the one a
    # stored file is in, and a file goes out only in its own (encoded_file)
    for uid in classes:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
        ae.add_requested_context(uid, ImplicitVRLittleEndian)
    try:
        assoc = _request(ae, dest)
    except Exception as exc:  # socket errors etc.
        return f"association failed: {exc}"
    if not assoc.is_established:
        why = (
            "association rejected"
            if assoc.is_rejected
            else "association failed (peer unreachable or aborted)"
        )
        if dest.tls:  # pynetdicom logs the handshake error itself; say where to look
            why += " over TLS: check the peer's certificate against ca= and name=, and cert=/key="
        return why
    return assoc


def encoded_file(ds: Dataset) -> tuple[Path, str] | None:
    """The Part 10 file ``ds`` was read from (``ds.filename``) and its transfer syntax, when that
    file still holds this SOP instance in this SOP class; else None.

    Such a dataset is sent as the file's bytes (pynetdicom streams them), never encoded again; a
    changed copy (:func:`enhanced_sr_fallback`) has another class or no file name and is encoded."""
    name = getattr(ds, "filename", None)
    if not isinstance(name, str | os.PathLike) or not name:
        return None
    path = Path(name)
    try:
        meta = read_file_meta_info(path)
    except (OSError, InvalidDicomError):
        return None
    same = meta.get("MediaStorageSOPInstanceUID") == ds.get("SOPInstanceUID") and meta.get(
        "MediaStorageSOPClassUID"
    ) == ds.get("SOPClassUID")
    if not same or "TransferSyntaxUID" not in meta:
        return None
    return path, str(meta.TransferSyntaxUID)


def _store_all(
    assoc: Association,
    datasets: Sequence[Dataset],
    result: Callable[[Dataset, bool, int | None, str | None], AttemptResult],
    fallback: Fallback | None,
    name: str,
) -> tuple[list[AttemptResult], bool]:
    """C-STORE each dataset over ``assoc``; one result each, the ones not attempted after the
    association dropped included, and whether it dropped (a C-STORE went unanswered: the peer
    aborted or closed it, or the DIMSE timeout passed and pynetdicom aborted it)."""
    out: list[AttemptResult] = []
    lost = False
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    # (class, transfer syntax) an object's file can go in as it is
    as_is = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    for ds in datasets:
        to_send = ds
        if str(ds.SOPClassUID) not in accepted and fallback is not None:
            alt = fallback(ds)
            if alt is not None and str(alt.SOPClassUID) in accepted:
                log.info("delivery.fallback", destination=name, sop_class_uid=str(alt.SOPClassUID))
                to_send = alt
        if str(to_send.SOPClassUID) not in accepted:
            out.append(
                result(ds, False, None, f"destination does not accept SOP class {to_send.SOPClassUID}")
            )
            continue
        source = encoded_file(to_send)
        try:
            if source is not None and (str(to_send.SOPClassUID), source[1]) in as_is:
                rsp = assoc.send_c_store(source[0])  # the file's bytes: encoded once, by whoever wrote it
            else:
                rsp = assoc.send_c_store(to_send)
        except Exception as exc:
            out.append(result(ds, False, None, f"C-STORE failed: {exc}"))
            continue
        st = int(rsp.Status) if rsp and "Status" in rsp else None
        ok = st in STORED_STATUSES
        out.append(
            result(ds, ok, st, None if ok else ("no response" if st is None else f"status 0x{st:04X}"))
        )
        # pynetdicom marks an aborted association from its own thread, maybe not yet: no answer is enough
        lost = st is None or not assoc.is_established
        if lost:
            break
    # anything not attempted because the association dropped
    done = {r.sop_instance_uid for r in out}
    out += [
        result(ds, False, None, "association dropped")
        for ds in datasets
        if str(ds.SOPInstanceUID) not in done
    ]
    return out, lost or not assoc.is_established


def _watched(
    assoc: Association, left: float, store: Callable[[Association], tuple[list[AttemptResult], bool]]
) -> tuple[list[AttemptResult], bool]:
    """``store(assoc)`` with ``assoc`` aborted should ``left`` seconds pass first, and known to
    :func:`abort_all` meanwhile."""
    watchdog = threading.Timer(max(0.0, left), assoc.abort)
    watchdog.daemon = True
    watchdog.start()
    with _active_lock:
        _active.add(assoc)
    try:
        return store(assoc)
    finally:
        watchdog.cancel()
        with _active_lock:
            _active.discard(assoc)


def send_once(
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str,
    attempt: int = 1,
    fallback: Fallback | None = None,
    extra_sop_classes: Sequence[str] = (),
    timeout: float = 30,
    connect_timeout: float = 10.0,
    deadline: float = 120.0,
    keep_open: float = 0.0,
) -> list[AttemptResult]:
    """Send ``datasets`` over one association; one result per dataset.

    ``connect_timeout`` bounds the TCP connect (a host that drops SYNs would otherwise cost the
    kernel's ~2 minutes of SYN retries); ``deadline`` the whole attempt: the association is
    aborted when it passes, whatever it is waiting for; ``timeout`` each ACSE/DIMSE wait.

    ``keep_open`` > 0 (``DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS``): the association is taken
    from this process's pool (:mod:`dicomnode.delivery.pool`) and kept there afterwards, released
    once idle this many seconds. A kept association that turns out dead before any C-STORE got an
    answer costs nothing: the objects go again on a fresh one within the same attempt. 0: a fresh
    association, released at the end. A dataset read from a file (``ds.filename``) is sent as the
    file's bytes (:func:`encoded_file`)."""
    name = str(dest)
    started = time.monotonic()

    def result(ds: Dataset, ok: bool, st: int | None, err: str | None) -> AttemptResult:
        return AttemptResult(name, str(ds.SOPInstanceUID), attempt, ok, st, err)

    def store(assoc: Association) -> tuple[list[AttemptResult], bool]:
        return _store_all(assoc, datasets, result, fallback, name)

    classes = list(dict.fromkeys([str(ds.SOPClassUID) for ds in datasets] + list(extra_sop_classes)))
    key: PoolKey = (calling_ae, dest)
    out: list[AttemptResult] | None = None
    requested = frozenset(classes)
    lease = POOL.checkout(key) if keep_open > 0 else None
    if lease is not None:
        assoc, requested = lease
        if not requested.issuperset(classes):  # asked for other classes: a fresh one asks for all
            close_association(assoc)
            requested |= frozenset(classes)
        else:
            left = deadline - (time.monotonic() - started)
            assoc.acse_timeout = assoc.dimse_timeout = min(timeout, max(left, 0.0))
            out, lost = _watched(assoc, left, store)
            if lost:
                close_association(assoc)
                if all(r.status is None for r in out):  # dead before anything went through
                    log.info(
                        "delivery.pool_discarded", destination=name, why="dropped at reuse; sending again"
                    )
                    out = None
            else:
                POOL.checkin(key, assoc, requested, keep_open)
    if out is None:
        if keep_open > 0:
            requested = requested | frozenset(POOLED_SOP_CLASSES)
        left = deadline - (time.monotonic() - started)
        if left <= 0:
            return [result(ds, False, None, f"attempt deadline of {deadline:g} s passed") for ds in datasets]
        opened = _associate(
            dest,
            calling_ae,
            sorted(requested, key=lambda uid: (uid not in classes, uid)),
            timeout=timeout,
            connect_timeout=connect_timeout,
            deadline=left,
        )
        if isinstance(opened, str):
            return [result(ds, False, None, opened) for ds in datasets]
        out, lost = _watched(opened, deadline - (time.monotonic() - started), store)
        if lost:
            close_association(opened)
        else:
            POOL.checkin(key, opened, requested, keep_open)  # keep_open 0: released now
    if time.monotonic() - started >= deadline:
        out = [
            r
            if r.success
            else AttemptResult(
                r.destination,
                r.sop_instance_uid,
                r.attempt,
                False,
                r.status,
                f"attempt deadline of {deadline:g} s passed ({r.error})",
            )
            for r in out
        ]
    return out


def echo(dest: Destination, *, calling_ae: str, connect_timeout: float = 10.0, timeout: float = 10.0) -> bool:
    """True when ``dest`` answers a C-ECHO with Success (a destination that was down is back)."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime

    ae = _DeliveryAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = connect_timeout
    ae.add_requested_context(Verification)
    try:
        assoc = _request(ae, dest)
    except Exception:
        return False
    if not assoc.is_established:
        return False
    with _active_lock:
        _active.add(assoc)
    try:
        rsp = assoc.send_c_echo()
        return bool(rsp) and int(getattr(rsp, "Status", -1)) == 0x0000
    except Exception:
        return False
    finally:
        with _active_lock:
            _active.discard(assoc)
        if assoc.is_established:
            assoc.release()


__all__ = [
    "POOLED_SOP_CLASSES",
    "STORED_STATUSES",
    "AttemptResult",
    "Fallback",
    "abort_all",
    "echo",
    "encoded_file",
    "enhanced_sr_fallback",
    "send_once",
]
