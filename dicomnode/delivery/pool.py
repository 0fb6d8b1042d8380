"""Kept-open delivery associations: one per destination and calling AE in a process, reused by the
next attempt to that destination.

An attempt checks the destination's idle association out (:meth:`AssociationPool.checkout`),
uses it alone and checks it back in (:meth:`AssociationPool.checkin`), which keeps it for
``DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS`` of idleness and then releases it (A-RELEASE). The pool
keeps at most one idle association per (calling AE, destination): an attempt that finds none (two
rounds to one destination at once) opens its own, which the pool releases at check-in when it
already keeps one. A destination so sees at most one idle association from a process, and no
more in use than there are delivery threads, as before.

An idle association is *parked*: pynetdicom's association thread is paused (as
``Association.send_c_store`` pauses it) and its DUL thread looks at the socket every
:data:`PARKED_POLL_SECONDS` instead of every millisecond, woken at once at check-out; both
threads otherwise poll while idle and would cost more CPU than a new association saves
(docs/sizing.md). Check-out and the pool's thread tell a live association (DUL state Sta6,
nothing received) from one the peer aborted, released or closed while it was idle; the latter is
let go. The sender retries once on a fresh association when a reused one dies before anything
went through (:func:`dicomnode.delivery.sender.send_once`).

A forked child (a Celery prefork worker) starts with an empty pool: it never writes to its
parent's sockets.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass

import structlog
from pynetdicom.association import Association

from dicomnode.config import Destination

log = structlog.get_logger("dicomnode.delivery")

#: How often a parked association's DUL thread looks at its socket (pynetdicom's: every 1 ms): a
#: peer closing it is seen within this. Taking it out wakes the thread at once.
PARKED_POLL_SECONDS = 0.1
#: How often the pool's thread looks for idle associations the peer ended (aborted, closed, or
#: asked to release: a parked association answers that only once it is let go).
CHECK_SECONDS = 0.25
#: How long a peer has to answer the A-RELEASE of an idle association before it is aborted: a
#: release never holds the pool's thread or a shutdown for an ACSE timeout.
RELEASE_TIMEOUT_SECONDS = 2.0
#: The DUL state of an established association (PS3.8 9.2: Sta6, data transfer).
_ESTABLISHED_STATE = "Sta6"

#: (calling AE title, destination): one kept association each.
PoolKey = tuple[str, Destination]


@dataclass
class _Idle:
    assoc: Association
    requested: frozenset[str]  # the SOP classes it asked for
    expires: float  # time.monotonic() when it is released
    pid: int  # the process that opened it


def _park(assoc: Association) -> None:
    """Stop an idle association's threads from polling (see the module docstring)."""
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is None:  # not pynetdicom 3.0: left polling
        return
    checkpoint.clear()  # as Association.send_c_store pauses it
    until = time.monotonic() + 1.0
    while not assoc._is_paused and time.monotonic() < until:
        time.sleep(0.0001)
    park = getattr(assoc.dul, "park", None)  # our DUL (dicomnode.delivery.sender._DUL)
    if park is not None:
        park()


def _unpark(assoc: Association) -> None:
    unpark = getattr(assoc.dul, "unpark", None)
    if unpark is not None:
        unpark()
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    if checkpoint is not None:
        checkpoint.set()


def _alive(assoc: Association) -> bool:
    """A parked association the peer has not aborted, released, closed or written to."""
    return (
        assoc.is_established
        and assoc.dul.is_alive()
        and assoc.dul.state_machine.current_state == _ESTABLISHED_STATE
        and assoc.dimse.msg_queue.empty()
    )


def close_association(assoc: Association) -> None:
    """Release ``assoc`` (parked or not), aborting it if the peer does not answer in time; one
    the peer already ended is left to its own thread, which winds it down."""
    _unpark(assoc)
    if not assoc.is_established or assoc.dul.state_machine.current_state != _ESTABLISHED_STATE:
        return
    assoc.acse_timeout = min(assoc.acse_timeout or RELEASE_TIMEOUT_SECONDS, RELEASE_TIMEOUT_SECONDS)
    try:
        assoc.release()
    except Exception:  # a peer that broke the protocol at the last moment
        assoc.abort()


class AssociationPool:
    """At most one idle, kept-open association per (calling AE, destination); thread-safe."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # also in a forked child: the parent's entries, lock and release thread are not the child's
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._idle: dict[PoolKey, _Idle] = {}
        self._releaser: threading.Thread | None = None

    def checkout(self, key: PoolKey) -> tuple[Association, frozenset[str]] | None:
        """The association kept for ``key`` and the SOP classes it asked for, now the caller's
        alone; None when none is kept or it died while idle (then it is discarded)."""
        with self._lock:
            entry = self._idle.pop(key, None)
        if entry is None or entry.pid != os.getpid():
            return None
        alive = _alive(entry.assoc)
        _unpark(entry.assoc)
        if not alive:
            log.info("delivery.pool_discarded", destination=str(key[1]), why="ended by the peer while idle")
            close_association(entry.assoc)
            return None
        return entry.assoc, entry.requested

    def checkin(
        self, key: PoolKey, assoc: Association, requested: frozenset[str], idle_seconds: float
    ) -> bool:
        """Keep ``assoc`` for the next attempt to ``key`` for up to ``idle_seconds`` idle; False
        when it was released instead (ended, ``idle_seconds`` 0, or one is kept already)."""
        if idle_seconds <= 0 or not assoc.is_established:
            close_association(assoc)
            return False
        # the idle timer would abort it at check-out: the attempt deadline bounds every wait instead
        assoc.network_timeout = None
        _park(assoc)
        entry = _Idle(assoc, requested, time.monotonic() + idle_seconds, os.getpid())
        with self._lock:
            kept = key not in self._idle
            if kept:
                self._idle[key] = entry
                if self._releaser is None:
                    self._releaser = threading.Thread(
                        target=self._release_idle, name="dicomnode-delivery-pool", daemon=True
                    )
                    self._releaser.start()
                self._changed.notify()
        if not kept:
            close_association(assoc)
        return kept

    def close(self) -> int:
        """Release every idle association now (shutdown); how many there were."""
        with self._lock:
            entries = list(self._idle.values())
            self._idle.clear()
            self._changed.notify()
        for entry in entries:
            if entry.pid == os.getpid():
                close_association(entry.assoc)
        return len(entries)

    def __len__(self) -> int:
        """Idle associations kept now."""
        with self._lock:
            return len(self._idle)

    def _release_idle(self) -> None:
        """The pool's thread: releases each association once its idle time is up, and lets go of
        one the peer ended; ends when the pool is empty (the next check-in starts another)."""
        while True:
            with self._lock:
                if not self._idle:
                    self._releaser = None
                    return
                now = time.monotonic()
                due = [k for k, e in self._idle.items() if e.expires <= now or not _alive(e.assoc)]
                if not due:
                    next_expiry = min(entry.expires for entry in self._idle.values())
                    self._changed.wait(min(next_expiry - now, CHECK_SECONDS))
                    continue
                ended = [(key, self._idle.pop(key)) for key in due]
            for key, entry in ended:
                why = "idle" if entry.expires <= now else "ended by the peer while idle"
                log.info("delivery.pool_released", destination=str(key[1]), why=why)
                close_association(entry.assoc)


#: This process's pool (each Celery worker process has its own).
POOL = AssociationPool()
atexit.register(POOL.close)

__all__ = [
    "CHECK_SECONDS",
    "PARKED_POLL_SECONDS",
    "POOL",
    "RELEASE_TIMEOUT_SECONDS",
    "AssociationPool",
    "PoolKey",
    "close_association",
]
