"""The DICOM upper layer of the node, split as pynetdicom splits it.

- :mod:`~dicomnode.net.pdu`: PDU and PDV framing, the socket reader, size limits;
- :mod:`~dicomnode.net.dimse`: command sets of C-STORE and C-ECHO;
- :mod:`~dicomnode.net.association`: one association on its own thread (negotiation, P-DATA);
- :mod:`~dicomnode.net.listener`: the accept loop and the association limit;
- :mod:`~dicomnode.net.contexts`: the presentation contexts the node accepts;
- :mod:`~dicomnode.net.status`: the DIMSE statuses it answers;
- :mod:`~dicomnode.net.tls`: the server TLS context.

It builds on :mod:`dicomnode.storage` (the receive file, the file meta) and knows nothing of what
the node does with a received instance: that is the callback's (:mod:`dicomnode.receive`).
"""

from __future__ import annotations

from dicomnode.net import (
    pynetdicom_logs,  # noqa: F401  (its logging switches hold for every association the process makes)
    status,
)
from dicomnode.net.association import (
    REJECT_CALLED_AE,
    REJECT_CALLING_AE,
    REJECT_TOO_MANY,
    Association,
    StoreCallback,
    StoreRequest,
)
from dicomnode.net.contexts import STORAGE_SOP_CLASSES, add_storage_contexts
from dicomnode.net.dimse import decode_command, encode_command
from dicomnode.net.listener import Listener, ListenerConfig
from dicomnode.net.pdu import ProtocolError
from dicomnode.net.tls import server_tls_context

__all__ = [
    "REJECT_CALLED_AE",
    "REJECT_CALLING_AE",
    "REJECT_TOO_MANY",
    "STORAGE_SOP_CLASSES",
    "Association",
    "Listener",
    "ListenerConfig",
    "ProtocolError",
    "StoreCallback",
    "StoreRequest",
    "add_storage_contexts",
    "decode_command",
    "encode_command",
    "server_tls_context",
    "status",
]
