"""One delivery attempt: the result objects to one destination over one C-STORE association.

Reports one :class:`AttemptResult` per object and never raises for a peer that is down, refuses or
aborts. Retries and their waits are :mod:`dicomnode.delivery.retry`'s.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pynetdicom.association
import structlog
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from dicomnode.config import Destination
from dicomnode.delivery.tls import client_tls_args

log = structlog.get_logger("dicomnode.delivery")

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
    AEs in the process (``dicomnode push``, the test PACS) keep pynetdicom's behaviour."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        if isinstance(assoc.ae, _DeliveryAE):
            self.daemon = True


pynetdicom.association.DULServiceProvider = _DUL  # type: ignore[misc]

# Associations of delivery attempts in progress: abort_all() ends them at shutdown, so a node
# stopping never waits for a destination that does not answer.
_active: set[Association] = set()
_active_lock = threading.Lock()


def abort_all() -> int:
    """Abort every delivery association in progress in this process; how many were aborted."""
    with _active_lock:
        live = list(_active)
    for assoc in live:
        try:
            assoc.abort()
        except Exception:  # already gone
            pass
    return len(live)


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
) -> list[AttemptResult]:
    """Send ``datasets`` over one association; one result per dataset.

    ``connect_timeout`` bounds the TCP connect (a host that drops SYNs would otherwise cost the
    kernel's ~2 minutes of SYN retries); ``deadline`` the whole attempt: the association is
    aborted when it passes, whatever it is waiting for; ``timeout`` each ACSE/DIMSE wait."""
    ae = _DeliveryAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = min(timeout, deadline)
    ae.connection_timeout = min(connect_timeout, deadline)
    ae.maximum_pdu_size = 0
    classes = list(dict.fromkeys([str(ds.SOPClassUID) for ds in datasets] + list(extra_sop_classes)))
    for uid in classes:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    name = str(dest)

    def result(ds: Dataset, ok: bool, st: int | None, err: str | None) -> AttemptResult:
        return AttemptResult(name, str(ds.SOPInstanceUID), attempt, ok, st, err)

    started = time.monotonic()
    try:
        # TLS per destination (delivery/tls.py); an unreadable PEM file fails the attempt like a peer down
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest))
    except Exception as exc:  # socket errors etc.
        return [result(ds, False, None, f"association failed: {exc}") for ds in datasets]
    if not assoc.is_established:
        why = (
            "association rejected"
            if assoc.is_rejected
            else "association failed (peer unreachable or aborted)"
        )
        if dest.tls:  # pynetdicom logs the handshake error itself; say where to look
            why += " over TLS: check the peer's certificate against ca= and name=, and cert=/key="
        return [result(ds, False, None, why) for ds in datasets]
    out: list[AttemptResult] = []
    watchdog = threading.Timer(max(0.0, deadline - (time.monotonic() - started)), assoc.abort)
    watchdog.daemon = True
    watchdog.start()
    with _active_lock:
        _active.add(assoc)
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
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
            try:
                rsp = assoc.send_c_store(to_send)
            except Exception as exc:
                out.append(result(ds, False, None, f"C-STORE failed: {exc}"))
                continue
            st = int(rsp.Status) if rsp and "Status" in rsp else None
            ok = st in STORED_STATUSES
            out.append(
                result(ds, ok, st, None if ok else ("no response" if st is None else f"status 0x{st:04X}"))
            )
            if not assoc.is_established:
                break
        # anything not attempted because the association dropped
        done = {r.sop_instance_uid for r in out}
        out += [
            result(ds, False, None, "association dropped")
            for ds in datasets
            if str(ds.SOPInstanceUID) not in done
        ]
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
    finally:
        watchdog.cancel()
        with _active_lock:
            _active.discard(assoc)
        if assoc.is_established:
            assoc.release()
    return out


def echo(dest: Destination, *, calling_ae: str, connect_timeout: float = 10.0, timeout: float = 10.0) -> bool:
    """True when ``dest`` answers a C-ECHO with Success (a destination that was down is back)."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime

    ae = _DeliveryAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = connect_timeout
    ae.add_requested_context(Verification)
    try:
        # TLS per destination (delivery/tls.py); an unreadable PEM file fails the attempt like a peer down
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest))
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
    "STORED_STATUSES",
    "AttemptResult",
    "Fallback",
    "abort_all",
    "echo",
    "enhanced_sr_fallback",
    "send_once",
]
