"""What the node accepts: every storage SOP class in every transfer syntax, plus Verification
and the Storage Commitment reports to our requests.

The one definition shared by the listener's negotiation and the test PACS. Every storage-like
class is accepted at negotiation (``negotiate_unrestricted``), so a class we do not store gets a
DIMSE status (:data:`dicomnode.net.status.SOP_CLASS_NOT_SUPPORTED`) instead of a silently
rejected context; :data:`STORAGE_SOP_CLASSES` is what the C-STORE handler then stores.
"""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime, not in the stub

from dicomnode.net.commitment_report import STORAGE_COMMITMENT_PUSH_MODEL

#: The storage SOP classes we store: pynetdicom's full storage list.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


def add_storage_contexts(ae: AE) -> None:
    """Accept every storage SOP class in every transfer syntax, plus Verification (C-ECHO)."""
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom's storage contexts all name their class
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)


def add_commitment_report_context(ae: AE) -> None:
    """Accept Storage Commitment Push Model for the reports of our commitment requests: the PACS
    requests that association as the SCP of the class (role selection SCU 0, SCP 1, PS3.4 J.3.3),
    so both roles are allowed for the requestor here."""
    ae.add_supported_context(
        STORAGE_COMMITMENT_PUSH_MODEL,
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        scu_role=True,
        scp_role=True,
    )


def supported_contexts() -> list[PresentationContext]:
    """The presentation contexts the listener offers to negotiate: those of
    :func:`add_storage_contexts` and the commitment reports'."""
    ae = AE()
    add_storage_contexts(ae)
    add_commitment_report_context(ae)
    return list(ae.supported_contexts)


__all__ = [
    "STORAGE_SOP_CLASSES",
    "add_commitment_report_context",
    "add_storage_contexts",
    "supported_contexts",
]
