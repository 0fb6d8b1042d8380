"""DICOMweb into the node: a STOW-RS service (PS3.18 10.5) beside the C-STORE listener.

- :mod:`~dicomnode.dicomweb.parts`: a request body read as it arrives, each ``application/dicom``
  part into a receive file and through the node's C-STORE callback;
- :mod:`~dicomnode.dicomweb.response`: the STOW-RS answer (200 / 202 / 409, Referenced and Failed
  SOP Sequences);
- :mod:`~dicomnode.dicomweb.app`: the Starlette app (``POST /studies``, token, media type, limits);
- :mod:`~dicomnode.dicomweb.server`: uvicorn on its own port (``DICOMNODE_DICOMWEB_PORT``).

Sending results over STOW-RS is :mod:`dicomnode.delivery.stow`'s.
"""

from __future__ import annotations

from dicomnode.dicomweb.app import CALLING_AE, StowConfig, create_app
from dicomnode.dicomweb.parts import BodyError, PartOutcome, StowBody
from dicomnode.dicomweb.response import MEDIA_TYPE, stow_response
from dicomnode.dicomweb.server import StowServer

__all__ = [
    "CALLING_AE",
    "MEDIA_TYPE",
    "BodyError",
    "PartOutcome",
    "StowBody",
    "StowConfig",
    "StowServer",
    "create_app",
    "stow_response",
]
