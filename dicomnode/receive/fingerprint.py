"""The SHA-256 of every stored instance, taken after receipt, once the senders have gone quiet.

Hashing costs about as much CPU as receiving the bytes (docs/sizing.md), so the listener answers a
C-STORE as soon as the file is durable and recorded, with ``instances.sha256`` still empty. This thread fills it in
batches when no C-STORE has been answered for ``quiet_seconds``, or after ``max_delay_seconds`` of
continuous traffic at the latest. Rows a previous run left without a fingerprint are taken at start.

A row whose instance is overwritten while its old file is being hashed keeps no stale value: the
update only lands if the row still has the ``received_at`` it had when the batch was read, and an
overwrite clears the fingerprint again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import structlog
from sqlalchemy import select, update

from dicomnode.storage import sha256_of
from dicomnode.store.db import Store
from dicomnode.store.models import Instance

log = structlog.get_logger("dicomnode.fingerprint")


class Fingerprinter:
    """Background thread filling ``instances.sha256``; ``poke()`` after each stored instance."""

    def __init__(
        self,
        store: Store,
        *,
        last_activity: Callable[[], float],
        quiet_seconds: float = 1.0,
        max_delay_seconds: float = 60.0,
        batch: int = 200,
    ) -> None:
        self.store = store
        self.last_activity = last_activity  # time.monotonic() of the last C-STORE answered
        self.quiet_seconds = quiet_seconds
        self.max_delay_seconds = max_delay_seconds
        self.batch = batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending_since: float | None = time.monotonic()  # rows from an earlier run, maybe
        self._unreadable: set[int] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> Fingerprinter:
        self._thread = threading.Thread(target=self._run, name="dicomnode-fingerprint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current file; rows still empty are taken at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def poke(self) -> None:
        """An instance was stored: there is work once the senders are quiet. Only the first
        instance after a quiet spell wakes the thread; it then waits for quiet on its own."""
        if self._pending_since is None:
            self._pending_since = time.monotonic()
            self._wake.set()

    def _due_in(self) -> float:
        """Seconds until hashing should start (0: now)."""
        if self._pending_since is None:
            return self.quiet_seconds * 10  # nothing known to do: look again now and then
        now = time.monotonic()
        quiet_left = self.quiet_seconds - (now - self.last_activity())
        overdue_left = self.max_delay_seconds - (now - self._pending_since)
        return max(0.0, min(quiet_left, overdue_left))

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self._due_in()
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            self._pending_since = None  # an instance stored from here on starts the next round
            try:
                done = self.run_once()
            except Exception as exc:  # the database went away: try again later
                log.warning("fingerprint.failed", error=type(exc).__name__)
                self._pending_since = self._pending_since or time.monotonic()
                self._stop.wait(5.0)
                continue
            if done >= self.batch:  # more rows than one batch: carry on
                self._pending_since = self._pending_since or time.monotonic()

    def run_once(self) -> int:
        """Hash one batch of instances without a fingerprint; returns how many rows were read."""
        with self.store.engine.connect() as conn:
            query = select(Instance.id, Instance.path, Instance.received_at).where(
                Instance.sha256.is_(None),
                Instance.purged_at.is_(None),  # retention deleted the file (revision 0005)
                Instance.missing_at.is_(None),  # the start-up re-scan reported it gone
            )
            if self._unreadable:
                query = query.where(Instance.id.not_in(self._unreadable))
            rows = conn.execute(query.order_by(Instance.id).limit(self.batch)).all()
        done: list[tuple[int, datetime, str]] = []
        for row_id, path, received_at in rows:
            if self._stop.is_set():
                break
            try:
                done.append((row_id, received_at, sha256_of(Path(path))))
            except OSError as exc:  # gone or unreadable: the start-up rescan reports missing files
                self._unreadable.add(row_id)
                log.warning("fingerprint.unreadable", path=path, error=type(exc).__name__)
        if done:
            with self.store.engine.begin() as conn:
                for row_id, received_at, digest in done:
                    conn.execute(
                        update(Instance)
                        .where(
                            Instance.id == row_id,
                            Instance.received_at == received_at,
                            Instance.sha256.is_(None),
                        )
                        .values(sha256=digest)
                    )
            log.debug("fingerprint.batch", instances=len(done))
        return len(rows)


__all__ = ["Fingerprinter"]
