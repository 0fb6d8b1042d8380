"""The node's DICOM listener: TCP (or TLS) accept loop and the association limits.

Each accepted connection is served on its own :class:`dicomnode.net.association.Association`
thread; the listener counts them, admits at most ``max_associations`` established ones and hands
each received C-STORE to its callback as a :class:`dicomnode.net.association.StoreRequest`. The
node answers associations itself rather than through pynetdicom's AE server, whose hand-over of
every message between threads and small socket reads cost most of the receive rate
(docs/sizing.md, "Where the time went before").

Floods are bounded before any thread starts: one source address holds at most
``max_associations_per_peer`` connections (negotiating or established); a connection beyond that
is closed in the accept loop, without a thread, a buffer or an A-ASSOCIATE-RJ (reading the request
to reject it is what a flood costs). All addresses together hold at most
``max_pending_connections`` connections that are still negotiating: at that cap the accept loop
closes the oldest of them to make room, so a flood from many addresses of connections that stay
silent or trickle holds a bounded number of threads, and a peer that sends its A-ASSOCIATE-RQ at
once still gets in (a slow one is what gets closed). When the process runs out of file descriptors
the accept loop backs off instead of spinning, and says so once per burst.
"""

from __future__ import annotations

import errno
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from dicomnode.net.association import Association, AssociationEndCallback, StoreCallback
from dicomnode.net.commitment_report import CommitmentCallback
from dicomnode.net.contexts import supported_contexts
from dicomnode.net.tls import client_ae_map
from dicomnode.storage import DIR_MODE

log = structlog.get_logger("dicomnode.scp")

#: accept() errors that mean the process or the system is out of something; retrying at once
#: only spins a core, since the pending connection stays queued.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: How long the accept loop waits after such an error.
_ACCEPT_BACKOFF = 0.1


class _Burst:
    """Counts a run of like events and says when to log: the first one, then at most once every
    ``every`` seconds with how many happened since (a flood writes a few lines, not one per try)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = -math.inf
        self.count = 0

    def hit(self) -> int | None:
        """Count one event; the number to log now, or None to stay quiet."""
        self.count += 1
        now = time.monotonic()
        if now - self.last < self.every:
            return None
        n, self.count, self.last = self.count, 0, now
        return n


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
    #: connections one source address may hold open (negotiating or established); 0: no cap
    max_associations_per_peer: int = 8
    #: connections still negotiating, from all addresses; at the cap the oldest is closed; 0: no cap
    max_pending_connections: int = 64
    #: ``CN:AE`` entries: a client certificate's subject CN and a calling AE it may use (empty: any)
    tls_client_aes: tuple[str, ...] = ()
    #: start the disk writing a data set while it still arrives (Linux), so the fsync before
    #: Success has less left to do; only useful when the node fsyncs
    early_writeback: bool = True
    #: a data set larger than this is refused with 0xA700 and not kept (0: no limit)
    max_dataset_bytes: int = 0
    #: below this much free space in the incoming folder a C-STORE is refused with 0xA700 at once
    min_free_bytes: int = 0


class Listener:
    """Accepts connections on ``(host, port)`` and serves each on an :class:`Association` thread."""

    def __init__(
        self,
        config: ListenerConfig,
        on_store: StoreCallback,
        *,
        incoming_dir: Path,
        ssl_context: ssl.SSLContext | None = None,
        on_commitment: CommitmentCallback | None = None,
        on_association_end: AssociationEndCallback | None = None,
    ) -> None:
        self.config = config
        self.on_store = on_store
        #: told when each association ends, released or not (the node completes studies on release)
        self.on_association_end = on_association_end
        #: records Storage Commitment reports to our requests; None: they are refused
        self.on_commitment = on_commitment
        self.incoming_dir = str(incoming_dir)
        self.ssl_context = ssl_context
        self.supported_contexts = supported_contexts()
        #: client certificate subject CN -> calling AE titles it may use; empty: not checked
        self.client_aes = client_ae_map(config.tls_client_aes)
        self._lock = threading.Lock()
        self._open: set[Association] = set()
        self._established: set[Association] = set()
        self._per_peer: dict[str, int] = {}
        #: connections not yet established, oldest first (a dict as an ordered set)
        self._pending: dict[Association, None] = {}
        self._refused = _Burst()
        self._evicted = _Burst()
        self._starved = _Burst()
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
        Path(self.incoming_dir).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
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
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in _RESOURCE_ERRNOS:
                    self._back_off(exc)
                continue
            peer = str(addr[0])
            cap = self.config.max_associations_per_peer
            with self._lock:
                held = self._per_peer.get(peer, 0)
                if not cap or held < cap:
                    self._per_peer[peer] = held + 1
            if cap and held >= cap:
                self._refuse(conn, peer, held)
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assoc = Association(self, conn, peer)
            with self._lock:
                self._open.add(assoc)
                oldest = self._make_room()
                self._pending[assoc] = None
            if oldest is not None:
                self._evict(oldest)
            try:
                assoc.start()
            except RuntimeError as exc:  # no thread to be had: the process is out of memory or tasks
                self.forget(assoc)
                conn.close()
                self._back_off(exc)

    def _make_room(self) -> Association | None:
        """With the lock held: the oldest connection still negotiating, taken off the pending list,
        when the pending cap is reached (None: room enough)."""
        cap = self.config.max_pending_connections
        if not cap or len(self._pending) < cap:
            return None
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        oldest.evicted = True
        return oldest

    def _evict(self, assoc: Association) -> None:
        """Close a connection still negotiating to make room for a new one."""
        n = self._evicted.hit()
        if n is not None:
            log.warning(
                "connection.evicted",
                peer=assoc.peer,
                reason="too many connections still negotiating; closed the oldest",
                pending=self.config.max_pending_connections,
                evicted=n,
                hint="peers that connect and send no A-ASSOCIATE-RQ (a scan or a flood); "
                "or raise DICOMNODE_MAX_PENDING_CONNECTIONS",
            )
        assoc.evict()

    def _refuse(self, conn: socket.socket, peer: str, held: int) -> None:
        """Close a connection from a peer that already holds its share, before any thread or read."""
        n = self._refused.hit()
        if n is not None:
            log.warning(
                "connection.refused",
                peer=peer,
                reason="too many connections from this address",
                open=held,
                refused=n,
                hint="the peer should reuse or close its associations; "
                "or raise DICOMNODE_MAX_ASSOCIATIONS_PER_PEER",
            )
        conn.close()

    def _back_off(self, exc: Exception) -> None:
        n = self._starved.hit()
        if n is not None:
            code = getattr(exc, "errno", None)
            log.error(
                "listener.accept_failed",
                error=errno.errorcode.get(code, type(exc).__name__) if code else type(exc).__name__,
                failed=n,
                hint="out of file descriptors, threads or memory: raise the open files limit "
                "(ulimit -n, LimitNOFILE=) or lower DICOMNODE_MAX_ASSOCIATIONS / _PER_PEER",
            )
        self._stopping.wait(_ACCEPT_BACKOFF)

    def admit(self, assoc: Association) -> bool:
        """Count ``assoc`` as established if the association limit allows it (and it was not
        closed meanwhile to make room for newer connections)."""
        with self._lock:
            self._pending.pop(assoc, None)
            if assoc.evicted or len(self._established) >= self.config.max_associations:
                return False
            self._established.add(assoc)
            return True

    def forget(self, assoc: Association) -> None:
        """``assoc`` has ended: it no longer counts against the limit."""
        with self._lock:
            if assoc in self._open:
                self._open.discard(assoc)
                left = self._per_peer.get(assoc.peer, 1) - 1
                if left > 0:
                    self._per_peer[assoc.peer] = left
                else:
                    self._per_peer.pop(assoc.peer, None)
            self._established.discard(assoc)
            self._pending.pop(assoc, None)

    def ended(self, assoc: Association) -> None:
        """``assoc``'s thread is ending (after :meth:`forget`): tell ``on_association_end``."""
        if self.on_association_end is None or not assoc.calling_ae:
            return  # no association was requested: nothing was sent over it
        try:
            self.on_association_end(assoc.serial, assoc.released)
        except Exception as exc:  # the association is over either way; the study keeps its quiet period
            log.error("association.end_callback_failed", peer=assoc.peer, error=type(exc).__name__)

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket; open associations carry on."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()


__all__ = ["Listener", "ListenerConfig"]
