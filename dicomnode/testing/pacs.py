"""A small listening Storage SCP that keeps what it is sent in a folder.

Used as the receiving "PACS" of the demo and the tests. The result SRs it collects in its folder
are what ``dicomnode worklist --sr-dir FOLDER`` reads (the command does not listen itself).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt

from dicomnode.net.contexts import add_storage_contexts
from dicomnode.storage import instance_path, write_atomic


@dataclass(frozen=True)
class Received:
    """One object the receiver stored."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    calling_ae: str
    at: float  # time.time() when stored


class Receiver:
    """A Storage SCP writing to ``out_dir/<study>/<series>/<sop>.dcm``; thread-safe record list."""

    def __init__(
        self, out_dir: Path, *, ae_title: str = "PACS", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.out_dir = out_dir
        self.ae_title = ae_title
        self.host = host
        self._port = port
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self._port

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        path = instance_path(
            self.out_dir, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
        write_atomic(path, event.encoded_dataset())
        rec = Received(
            path,
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            str(ds.StudyInstanceUID),
            str(event.assoc.requestor.ae_title).strip(),
            time.time(),
        )
        with self._cond:
            self.received.append(rec)
            self._cond.notify_all()
        return 0x0000

    def start(self) -> Receiver:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = 0
        add_storage_contexts(ae)
        self._server = ae.start_server(
            (self.host, self._port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        """Block until at least ``count`` objects arrived (or ``timeout``); returns what arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.received)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
