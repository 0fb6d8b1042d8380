"""The node's DICOM listener: TCP (or TLS) accept loop and the association limits.

Each accepted connection is served on its own :class:`dicomnode.net.association.Association`
thread; the listener counts them, admits at most ``max_associations`` established ones and hands
each received C-STORE to its callback as a :class:`dicomnode.net.association.StoreRequest`. The
node answers associations itself rather than through pynetdicom's AE server, whose hand-over of
every message between threads and small socket reads cost most of the receive rate
(docs/sizing.md, "Where the time went before").
"""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from dicomnode.net.association import Association, StoreCallback
from dicomnode.net.contexts import supported_contexts


@dataclass(frozen=True)
class ListenerConfig:
    """The association rules of the listener (from :class:`dicomnode.config.Settings`)."""

    ae_title: str
    allowed_calling_aes: tuple[str, ...] = ()
    max_associations: int = 10
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu_bytes: int = 1 << 20
    #: start the disk writing a data set while it still arrives (Linux), so the fsync before
    #: Success has less left to do; only useful when the node fsyncs
    early_writeback: bool = True


class Listener:
    """Accepts connections on ``(host, port)`` and serves each on an :class:`Association` thread."""

    def __init__(
        self,
        config: ListenerConfig,
        on_store: StoreCallback,
        *,
        incoming_dir: Path,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.on_store = on_store
        self.incoming_dir = str(incoming_dir)
        self.ssl_context = ssl_context
        self.supported_contexts = supported_contexts()
        self._lock = threading.Lock()
        self._open: set[Association] = set()
        self._established: set[Association] = set()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: time.monotonic() of the last C-STORE answered (background work waits for quiet)
        self.last_store = 0.0

    @property
    def server_address(self) -> tuple[str, int]:
        assert self._sock is not None, "listener not started"
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def active_associations(self) -> list[Association]:
        with self._lock:
            return list(self._open)

    def start(self, host: str, port: int) -> None:
        Path(self.incoming_dir).mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.settimeout(0.2)  # the accept loop looks at the stop flag this often
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="dicomnode-listener", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = Association(self, conn, str(addr[0]))
            with self._lock:
                self._open.add(assoc)
            assoc.start()

    def admit(self, assoc: Association) -> bool:
        """Count ``assoc`` as established if the association limit allows it."""
        with self._lock:
            if len(self._established) >= self.config.max_associations:
                return False
            self._established.add(assoc)
            return True

    def forget(self, assoc: Association) -> None:
        """``assoc`` has ended: it no longer counts against the limit."""
        with self._lock:
            self._open.discard(assoc)
            self._established.discard(assoc)

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; open associations carry on."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()


__all__ = ["Listener", "ListenerConfig"]
