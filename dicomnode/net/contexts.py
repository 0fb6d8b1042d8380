"""What the node accepts: every storage SOP class in every transfer syntax, plus Verification.

The one definition shared by the listener's negotiation and the test PACS. Every storage-like
class is accepted at negotiation (``negotiate_unrestricted``), so a class we do not store gets a
DIMSE status (:data:`dicomnode.net.status.SOP_CLASS_NOT_SUPPORTED`) instead of a silently
rejected context; :data:`STORAGE_SOP_CLASSES` is what the C-STORE handler then stores.
"""

from __future__ import annotations

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at runtime, not in the stub

#: The storage SOP classes we store: pynetdicom's full storage list.
STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in StoragePresentationContexts)


def add_storage_contexts(ae: AE) -> None:
    """Accept every storage SOP class in every transfer syntax, plus Verification (C-ECHO)."""
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in StoragePresentationContexts:
        assert cx.abstract_syntax is not None  # pynetdicom's storage contexts all name their class
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)


def supported_contexts() -> list[PresentationContext]:
    """The presentation contexts the listener offers to negotiate (those of :func:`add_storage_contexts`)."""
    ae = AE()
    add_storage_contexts(ae)
    return list(ae.supported_contexts)


__all__ = ["STORAGE_SOP_CLASSES", "add_storage_contexts", "supported_contexts"]
