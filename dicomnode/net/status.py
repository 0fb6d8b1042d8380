"""DIMSE status codes the listener returns, each with when it is returned (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

#: The instance is on disk (fsynced) and recorded in SQL; also the answer to every C-ECHO.
SUCCESS = 0x0000
#: Storage or database unavailable (disk full, DB down): the sender should retry later.
OUT_OF_RESOURCES = 0xA700
#: The dataset's SOP Class UID or SOP Instance UID differs from the DIMSE request / context.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: The dataset cannot be parsed, or lacks a valid Study/Series/SOP Instance UID.
CANNOT_UNDERSTAND = 0xC210
#: The C-STORE handler raised: the instance was not stored (pynetdicom answers a raising handler
#: with the same code).
PROCESSING_FAILURE = 0xC211
#: The SOP class is not a storage SOP class this node accepts.
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: A request other than C-STORE or C-ECHO (C-FIND, N-GET, ...): this node is a storage SCP only.
UNRECOGNISED_OPERATION = 0x0211

MEANINGS = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP class",
    CANNOT_UNDERSTAND: "Error: cannot understand",
    PROCESSING_FAILURE: "Failure: processing failure",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
    UNRECOGNISED_OPERATION: "Failure: unrecognised operation",
}
