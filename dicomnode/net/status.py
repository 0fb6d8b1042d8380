"""DIMSE C-STORE status codes the SCP returns, each with when it is returned (PS3.4 B.2.3, PS3.7 C)."""

from __future__ import annotations

#: The instance is on disk (fsynced) and recorded in SQL.
SUCCESS = 0x0000
#: Storage or database unavailable (disk full, DB down): the sender should retry later.
OUT_OF_RESOURCES = 0xA700
#: The dataset's SOP Class UID or SOP Instance UID differs from the DIMSE request / context.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: The dataset cannot be parsed, or lacks a valid Study/Series/SOP Instance UID.
CANNOT_UNDERSTAND = 0xC210
#: The SOP class is not a storage SOP class this node accepts.
SOP_CLASS_NOT_SUPPORTED = 0x0122

MEANINGS = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: out of resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP class",
    CANNOT_UNDERSTAND: "Error: cannot understand",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
}
