"""Study completeness: a study is complete once its sender says so, or after a quiet period.

DICOM has no "end of study" message. What comes closest is the sender releasing its association
(A-RELEASE, PS3.8 7.2): a modality or PACS pushes a study over one association and releases it when
the last instance is answered. So a study whose instances all came over one association is complete
``release_grace_seconds`` after that association is released normally; an instance arriving
within the grace, or a second association sending the same study, falls back to the quiet period.
Every other study (several associations, an aborted or dropped association, a study found by the
re-scan or re-armed by the reconciler) is complete after ``quiet_seconds`` without a new instance,
as with mercure and Orthanc's StableAge. A study that completed early and then gets a late
instance is re-opened and analysed again; its new results are revisions of the first
(:mod:`dicomnode.delivery.revisions`).

The tracker keeps, in memory, when each pending study is due and which association sent it, and
from its own thread hands each due study to ``on_complete`` exactly once. A study whose
``on_complete`` raised (the database or the broker away) is kept and handed on again
``retry_seconds`` later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("dicomnode.tracker")

#: Studies one association is remembered to have sent (a bulk push or a hostile sender can send
#: any number over one association): the studies past it wait out the quiet period.
MAX_STUDIES_PER_ASSOCIATION = 1000

#: ``_sender`` of a study that came over more than one association, or over none we know of.
_SEVERAL = -1


class StudyTracker:
    """Watches arrivals and association releases and reports studies that are complete.

    ``release_grace_seconds`` 0 turns completion on release off: every study waits out
    ``quiet_seconds``."""

    def __init__(
        self,
        quiet_seconds: float,
        on_complete: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float | None = None,
        release_grace_seconds: float = 0.0,
        max_studies_per_association: int = MAX_STUDIES_PER_ASSOCIATION,
    ) -> None:
        self.quiet_seconds = quiet_seconds
        #: how long after a failed ``on_complete`` the study is handed on again
        self.retry_seconds = max(0.5, quiet_seconds) if retry_seconds is None else retry_seconds
        self.release_grace_seconds = release_grace_seconds
        self.max_studies_per_association = max_studies_per_association
        self.on_complete = on_complete
        #: the tracker's time (seconds, monotonic): what :meth:`release`'s ``released_at`` is on
        self.clock = clock
        self._due: dict[str, float] = {}  # pending study -> when it is complete
        self._sender: dict[str, int] = {}  # pending study -> the one association that sent it, or _SEVERAL
        self._sent_by: dict[int, set[str]] = {}  # association -> its pending studies (capped)
        self._capped: set[int] = set()  # associations that reached the cap (logged once each)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, study_uid: str, association: int | None = None) -> None:
        """Record an arrival for ``study_uid`` now, sent over ``association`` (the listener's
        number for it; None: not over an association, or one not known). The quiet period
        starts again, and an early completion a release had set is called off."""
        with self._lock:
            self._due[study_uid] = self.clock() + self.quiet_seconds
            sender = self._sender.get(study_uid)
            if association is None:
                self._sender[study_uid] = _SEVERAL
            elif sender is None:
                self._sender[study_uid] = association
            elif sender != association:
                self._sender[study_uid] = _SEVERAL
            if association is None or self._sender[study_uid] != association:
                return
            studies = self._sent_by.setdefault(association, set())
            if study_uid in studies:
                return
            if len(studies) < self.max_studies_per_association:
                studies.add(study_uid)
                return
            first_time = association not in self._capped
            self._capped.add(association)
        if first_time:
            log.warning(
                "tracker.association_study_cap",
                association=association,
                cap=self.max_studies_per_association,
                detail="further studies of this association wait out DICOMNODE_QUIET_SECONDS",
            )

    def release(self, association: int, *, released_at: float | None = None) -> list[str]:
        """``association`` was released normally (at ``released_at`` on :attr:`clock`; default
        now) and every instance it sent is recorded: each study that it alone sent is complete
        ``release_grace_seconds`` after the release (unless an instance arrives meanwhile).
        Returns those studies."""
        with self._lock:
            studies = self._sent_by.pop(association, set())
            self._capped.discard(association)
            if self.release_grace_seconds <= 0:
                return []
            due = (self.clock() if released_at is None else released_at) + self.release_grace_seconds
            early = sorted(uid for uid in studies if self._sender.get(uid) == association and uid in self._due)
            for uid in early:
                self._due[uid] = min(self._due[uid], due)
        if early:
            self._wake.set()  # sooner than the thread planned to look
            log.debug("tracker.released", association=association, studies=len(early))
        return early

    def forget(self, association: int) -> None:
        """``association`` ended without a release (aborted, dropped) or its instances could not
        all be recorded: its studies wait out the quiet period."""
        with self._lock:
            self._sent_by.pop(association, None)
            self._capped.discard(association)

    def pending(self) -> list[str]:
        """Studies not yet complete."""
        with self._lock:
            return list(self._due)

    def due(self) -> list[str]:
        """Remove and return the studies that are complete now."""
        now = self.clock()
        with self._lock:
            ready = [uid for uid, t in self._due.items() if t <= now]
            self._drop(ready)
        return ready

    def seconds_to_next_due(self) -> float:
        """How long until the next pending study is due (a full quiet period when none is
        pending: a study touched from now on is due no sooner)."""
        with self._lock:
            earliest = min(self._due.values(), default=None)
        if earliest is None:
            return self.quiet_seconds
        return max(0.0, earliest - self.clock())

    def flush(self) -> list[str]:
        """Hand on every pending study now (used at shutdown)."""
        with self._lock:
            ready = list(self._due)
            self._drop(ready)
        self._emit(ready)
        return ready

    def _drop(self, uids: list[str]) -> None:
        """With the lock held: forget ``uids`` (handed on) and who sent them."""
        for uid in uids:
            del self._due[uid]
            sender = self._sender.pop(uid, _SEVERAL)
            studies = self._sent_by.get(sender)
            if studies is not None:
                studies.discard(uid)
                if not studies:  # an association whose end we never hear of holds nothing
                    del self._sent_by[sender]

    def _emit(self, uids: list[str]) -> None:
        for uid in uids:
            try:
                self.on_complete(uid)
            except Exception:  # keep the study: it is handed on again after retry_seconds
                log.exception(
                    "tracker.on_complete_failed", study_uid=uid, retry_in_seconds=self.retry_seconds
                )
                with self._lock:
                    # due again retry_seconds from now, unless an arrival meanwhile set a later time
                    again = self.clock() + self.retry_seconds
                    self._due[uid] = max(self._due.get(uid, again), again)
                    self._sender[uid] = _SEVERAL

    def _run(self) -> None:
        # Sleep until the next study is due, not by a fixed tick (a tick of 0.25 s added 0.125 s
        # on average to every study's time to result); a release or stop() wakes the wait. The
        # event is cleared before looking, so a release while we look is not missed; the floor
        # keeps an early wake-up from spinning.
        while not self._stop.is_set():
            self._wake.clear()
            self._emit(self.due())
            self._wake.wait(max(self.seconds_to_next_due(), 0.002))

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dicomnode-tracker", daemon=True)
            self._thread.start()

    def stop(self, *, flush: bool = False) -> None:
        """Stop the thread; with ``flush`` hand on pending studies first."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if flush:
            self.flush()


__all__ = ["MAX_STUDIES_PER_ASSOCIATION", "StudyTracker"]
