"""The resend button: ``dicomnode resend`` for one study, run off the request on one thread.

A re-send makes every attempt of a fresh budget with its backoff (:func:`dicomnode.delivery.resend`),
which can take minutes while a destination is down, so the page answers at once and the delivery
goes on here. Requests queue behind each other (at most :data:`MAX_QUEUED`; a study already queued
is not queued twice). Each one is recorded as events: ``study.resend_requested`` when asked, then
``study.resend_done`` (with the state it ended in) or ``study.resend_failed`` (with the error);
the delivery attempts themselves are recorded as for any delivery.
"""

from __future__ import annotations

import queue
import threading

import structlog

from dicomnode.config import Settings
from dicomnode.store.db import Store
from dicomnode.store.records import add_event

log = structlog.get_logger("dicomnode.web")

#: Re-sends waiting for the thread; past it the page says to try again later.
MAX_QUEUED = 16


class ResendBusy(RuntimeError):
    """Too many re-sends waiting: try again once they are done."""


class Resender:
    """Runs re-sends one at a time on a thread of its own."""

    def __init__(self, settings: Settings, store: Store, max_queued: int = MAX_QUEUED) -> None:
        self.settings = settings
        self.store = store
        self.max_queued = max_queued
        # bounded by _waiting: a study enters both together, and at most max_queued are waiting
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        """The thread, at the first re-send (a page nobody re-sends from runs none); under the lock."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dicomnode-web-resend", daemon=True)
            self._thread.start()

    def request(self, study_uid: str, *, by: str) -> bool:
        """Queue a re-send of the study's latest results; False if it is already queued.

        Raises :class:`dicomnode.config.ConfigError` with no destination, :class:`ResendBusy`
        when :attr:`max_queued` are waiting."""
        from dicomnode.config import ConfigError

        if not self.settings.destinations:
            raise ConfigError("nothing to re-send to: set DICOMNODE_DESTINATIONS, e.g. PACS@10.0.0.5:104")
        with self._lock:
            if study_uid in self._waiting:
                return False
            if len(self._waiting) >= self.max_queued:
                raise ResendBusy(f"{self.max_queued} re-sends are waiting: try again when they are done")
            self._waiting.add(study_uid)
        try:  # recorded before it can run, so the timeline reads requested, then done
            add_event(self.store, "study.resend_requested", study_uid, by=by)
        except Exception:
            with self._lock:
                self._waiting.discard(study_uid)
            raise
        log.info("web.resend_requested", study_uid=study_uid, by=by)
        with self._lock:
            self._queue.put(study_uid)
            self._start()
        return True

    def queued(self, study_uid: str) -> bool:
        """Whether a re-send of the study is waiting or running."""
        with self._lock:
            return study_uid in self._waiting

    def _run(self) -> None:
        from dicomnode.delivery import resend

        while (uid := self._queue.get()) is not None:
            try:
                state = resend(self.settings, self.store, uid)
            except Exception as exc:  # a missing result file, the database down: say which
                error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("web.resend_failed", study_uid=uid, error=error)
                try:
                    add_event(self.store, "study.resend_failed", uid, by="web", error=error)
                except Exception:  # the database is what failed; the log line above says so
                    pass
            else:
                add_event(self.store, "study.resend_done", uid, by="web", state=state.value)
                log.info("web.resend_done", study_uid=uid, state=state.value)
            finally:
                with self._lock:
                    self._waiting.discard(uid)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the re-send in hand (waiting ones are dropped: their events say requested
        without done; ``dicomnode resend`` sends them). Waits up to ``timeout`` seconds."""
        drained = 0
        with self._lock:
            while True:
                try:
                    uid = self._queue.get_nowait()
                except queue.Empty:
                    break
                if uid is not None:
                    self._waiting.discard(uid)
                    drained += 1
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
        if drained:
            log.warning("web.resend_dropped", studies=drained)


__all__ = ["MAX_QUEUED", "ResendBusy", "Resender"]
