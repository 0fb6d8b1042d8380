"""pynetdicom's logging switches, set once for the whole process when :mod:`dicomnode.net` is imported.

pynetdicom still carries our outgoing associations (delivery, push, echo) and the test PACS. Never
log C-STORE identifiers (they carry patient data); its "standard" handlers format a debug dump of
every PDU and DIMSE message even when nobody logs at DEBUG: switch them off.
"""

from __future__ import annotations

from pynetdicom import _config

_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_HANDLER_LEVEL = "none"

__all__: list[str] = []
