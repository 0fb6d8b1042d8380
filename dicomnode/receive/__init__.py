"""The receiving room: what the node does with each instance the listener hands it.

The C-STORE policy (:class:`StoreHandler`: header parse, durable store, SQL row), the recorder
that writes those rows off the C-STORE path, the start-up rescan that makes disk and SQL agree,
the tracker that sees a study complete, and the fingerprints taken once the senders are quiet.
It builds on :mod:`dicomnode.net` (the listener) and :mod:`dicomnode.storage`.
"""

from __future__ import annotations

from dicomnode.receive.fingerprint import Fingerprinter
from dicomnode.receive.handler import ReceivedInstance, StoreHandler
from dicomnode.receive.header import InstanceHeader, read_header, read_header_from
from dicomnode.receive.recorder import InstanceRecorder
from dicomnode.receive.rescan import RescanReport, rescan
from dicomnode.receive.tracker import StudyTracker

__all__ = [
    "Fingerprinter",
    "InstanceHeader",
    "InstanceRecorder",
    "ReceivedInstance",
    "RescanReport",
    "StoreHandler",
    "StudyTracker",
    "read_header",
    "read_header_from",
    "rescan",
]
