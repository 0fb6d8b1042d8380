"""One delivery attempt: the result objects to one destination over one C-STORE association.

Reports one :class:`AttemptResult` per object and never raises for a peer that is down, refuses or
aborts. Retries and their waits are :mod:`dicomnode.delivery.retry`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicomnode.config import Destination

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


def send_once(
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str,
    attempt: int = 1,
    fallback: Fallback | None = None,
    extra_sop_classes: Sequence[str] = (),
    timeout: float = 30,
) -> list[AttemptResult]:
    """Send ``datasets`` over one association; one result per dataset."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    classes = list(dict.fromkeys([str(ds.SOPClassUID) for ds in datasets] + list(extra_sop_classes)))
    for uid in classes:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    name = str(dest)

    def result(ds: Dataset, ok: bool, st: int | None, err: str | None) -> AttemptResult:
        return AttemptResult(name, str(ds.SOPInstanceUID), attempt, ok, st, err)

    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    except Exception as exc:  # socket errors etc.
        return [result(ds, False, None, f"association failed: {exc}") for ds in datasets]
    if not assoc.is_established:
        why = (
            "association rejected"
            if assoc.is_rejected
            else "association failed (peer unreachable or aborted)"
        )
        return [result(ds, False, None, why) for ds in datasets]
    out = []
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
    finally:
        if assoc.is_established:
            assoc.release()
    return out


__all__ = ["STORED_STATUSES", "AttemptResult", "Fallback", "send_once"]
