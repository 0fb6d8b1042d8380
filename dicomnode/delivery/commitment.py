"""Storage Commitment Push Model as SCU (PS3.4 J.3): ask a destination to commit to our results.

After a round stored a destination's objects, :func:`request_commitment` sends one N-ACTION-RQ
(Action Type 1) listing them under a new Transaction UID and records one
:class:`~dicomnode.store.models.Commitment` row per object. The destination answers later with an
N-EVENT-REPORT on an association it opens to our listener (so it must list this node's AE title,
host and port among its modalities); :func:`dicomnode.store.commitments.record_report` records it.
A refused request, a failed report or none within ``DICOMNODE_STORAGE_COMMITMENT_TIMEOUT_SECONDS``
makes the objects due for delivery again (:mod:`dicomnode.store.commitments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomnode.config import Destination
from dicomnode.delivery.sender import _DeliveryAE
from dicomnode.delivery.tls import client_tls_args
from dicomnode.net.commitment_report import STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from dicomnode.store.commitments import fail_request, record_requested
from dicomnode.store.db import Store

log = structlog.get_logger("dicomnode.delivery")

#: N-ACTION Action Type ID "Request Storage Commitment" (PS3.4 J.3.2.1).
REQUEST_STORAGE_COMMITMENT = 1


@dataclass(frozen=True)
class CommitmentRequest:
    """The outcome of one N-ACTION: the Transaction UID when the destination accepted it."""

    transaction_uid: str | None
    error: str | None


def request_commitment(
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str,
    connect_timeout: float = 10.0,
    timeout: float = 30.0,
    transaction_uid: str | None = None,
) -> CommitmentRequest:
    """Send one Storage Commitment request for ``datasets`` to ``dest`` under ``transaction_uid``
    (default: a new UID); never raises for a peer."""
    ae = _DeliveryAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = connect_timeout
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    action = Dataset()
    action.TransactionUID = transaction_uid or generate_uid()
    refs = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    action.ReferencedSOPSequence = refs
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=client_tls_args(dest))
    except Exception as exc:
        return CommitmentRequest(None, f"association failed: {exc}")
    if not assoc.is_established:
        return CommitmentRequest(None, "association rejected or peer unreachable")
    try:
        if not assoc.accepted_contexts:
            return CommitmentRequest(None, "destination does not offer Storage Commitment Push Model")
        st, _ = assoc.send_n_action(
            action, REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        code = int(st.Status) if st is not None and "Status" in st else None
        if code != 0x0000:
            return CommitmentRequest(None, "no response" if code is None else f"N-ACTION status 0x{code:04X}")
        return CommitmentRequest(str(action.TransactionUID), None)
    except Exception as exc:
        return CommitmentRequest(None, f"N-ACTION failed: {exc}")
    finally:
        if assoc.is_established:
            assoc.release()


def request_and_record(
    store: Store,
    analysis_id: int,
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str,
    connect_timeout: float = 10.0,
) -> CommitmentRequest:
    """:func:`request_commitment` with a pending row per object, written before the request goes
    out (Orthanc may report within milliseconds of its N-ACTION-RSP); failed when it is refused."""
    transaction_uid = str(generate_uid())
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    record_requested(store, analysis_id, str(dest), transaction_uid, uids)
    req = request_commitment(
        datasets,
        dest,
        calling_ae=calling_ae,
        connect_timeout=connect_timeout,
        transaction_uid=transaction_uid,
    )
    if req.transaction_uid is None:
        log.warning("commitment.request_failed", destination=str(dest), error=req.error)
        # the objects count as not delivered: the round retries them like a failed C-STORE
        fail_request(store, transaction_uid, f"commitment request failed: {req.error}")
        return req
    log.info(
        "commitment.requested", destination=str(dest), transaction_uid=transaction_uid, objects=len(datasets)
    )
    return req


__all__ = ["REQUEST_STORAGE_COMMITMENT", "CommitmentRequest", "request_and_record", "request_commitment"]
