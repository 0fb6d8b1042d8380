"""The reconciler: no study stranded while the node runs.

A study can be left behind between two steps: its quiet period ended while the database was away,
its task was never published because the broker was down, the worker analysing it died and its
task ran out of retries, its next delivery round was lost with a timer or a broker message, or it
was held because no model could be loaded. The node's start-up recovery catches all of these, but
only at a restart. The reconciler looks every ``DICOMNODE_RECONCILE_INTERVAL_SECONDS`` for studies
that made no progress for ``DICOMNODE_RECONCILE_AFTER_SECONDS`` and hands each on again, exactly
once: it takes a lease first (:func:`dicomnode.store.records.claim_study`, one conditional
UPDATE), so two passes, or two nodes on one database, never both dispatch a study.

It also watches the destinations: one whose latest attempt failed without an association is
*down* (a ``destination.down`` event, the ``dicomnode_destination_down`` metric); it is sent a
C-ECHO on every pass, and when it answers, the deliveries waiting for it run at once instead of
after their backoff (``destination.up``). Last, it has the urgent-finding notifications that are
due again sent (``notify``: :func:`dicomnode.delivery.hook.send_due` through the task runner), so
their retries go on after a restart too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from dicomnode.config import Settings
from dicomnode.store.commitments import expire_overdue
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState, utcnow
from dicomnode.store.queries import (
    destinations_down,
    due_deliveries,
    pending_delivery_attempts,
    quiet_receiving_studies,
    stranded_studies,
)
from dicomnode.store.records import (
    add_event,
    claim_delivery,
    claim_study,
    make_deliveries_due,
    set_study_state,
)

log = structlog.get_logger("dicomnode.reconcile")


@dataclass
class ReconcileReport:
    """What one pass handed on again (study UIDs) and which destinations it found down or back."""

    rearmed: list[str] = field(default_factory=list)  # RECEIVING, unknown to the tracker
    redispatched: list[str] = field(default_factory=list)  # COMPLETE, not picked up
    requeued: list[str] = field(default_factory=list)  # ANALYSING, never finished
    deliveries: list[str] = field(default_factory=list)  # delivery round overdue or destination back
    down: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)


class Reconciler:
    """Hands stranded studies on again while the node runs (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        pending: Callable[[], list[str]],
        rearm: Callable[[str], None],
        dispatch: Callable[[str], None],
        deliver_now: Callable[[str, int], None] | None = None,
        echo: Callable[[str], bool] | None = None,
        backlog: Callable[[], int | None] | None = None,
        notify: Callable[[], object] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.store = store
        self._pending = pending
        self._rearm = rearm
        self._dispatch = dispatch
        self._deliver_now = deliver_now
        self._echo = echo
        self._backlog = backlog
        self._notify = notify
        self._clock = clock
        self._down: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def after(self) -> timedelta:
        return timedelta(seconds=self.settings.reconcile_after_seconds)

    def run_once(self) -> ReconcileReport:
        """One pass over the store; what it handed on."""
        report = ReconcileReport()
        now = self._clock()
        s = self.settings
        # quiet for longer than the quiet period and the grace, and not in the tracker: lost
        pending = set(self._pending())
        quiet_before = now - timedelta(seconds=s.quiet_seconds) - self.after
        for uid in quiet_receiving_studies(self.store, last_received_before=quiet_before):
            if uid not in pending:
                self._rearm(uid)
                report.rearmed.append(uid)
        # a study still waiting in the broker's queue is not lost: while the queue holds tasks,
        # complete studies are left to it (a backlog drains; re-publishing would double it); while
        # the broker cannot be reached (None) publishing would fail anyway
        hold = False
        if self._backlog is not None:
            backlog = self._backlog()
            hold = backlog is None or backlog > 0
        stale = now - self.after
        complete = [] if hold else stranded_studies(self.store, (StudyState.COMPLETE,), stale_before=stale)
        for st in complete:
            if claim_study(
                self.store, st.study_uid, (StudyState.COMPLETE,), stale_before=stale,
                seen_claimed_at=st.claimed_at, now=now,
            ):  # fmt: skip
                self._dispatch(st.study_uid)
                report.redispatched.append(st.study_uid)
        # an analysis is bounded by the task time limit: past it, its worker is gone
        analysing_before = now - max(self.after, timedelta(seconds=s.task_time_limit))
        for st in stranded_studies(self.store, (StudyState.ANALYSING,), stale_before=analysing_before):
            if claim_study(
                self.store, st.study_uid, (StudyState.ANALYSING,), stale_before=analysing_before,
                seen_claimed_at=st.claimed_at, now=now,
            ) and set_study_state(
                self.store, st.study_uid, StudyState.COMPLETE,
                "re-queued by the reconciler: its analysis never finished",
                only_from=(StudyState.ANALYSING,),
            ):  # fmt: skip
                self._dispatch(st.study_uid)
                report.requeued.append(st.study_uid)
        if s.storage_commitment:  # no report in time: the objects are due for delivery again
            expire_overdue(
                self.store, requested_before=now - timedelta(seconds=s.storage_commitment_timeout_seconds)
            )
        if self._deliver_now is not None:
            self._overdue_deliveries(now - self.after, report)
            self._watch_destinations(report)
        for kind, uids in (
            ("rearmed", report.rearmed),
            ("redispatched", report.redispatched),
            ("requeued", report.requeued),
        ):
            for uid in uids:
                log.info(f"reconcile.{kind}", study_uid=uid)
                add_event(self.store, f"study.{kind}", uid, by="reconciler")
        # last: a hook that hangs delays nothing above (urgent-finding POSTs due, a restart's too)
        if self._notify is not None and s.urgent_hook_urls:
            self._notify()
        return report

    def _overdue_deliveries(self, due_before: datetime, report: ReconcileReport) -> None:
        assert self._deliver_now is not None
        lease = self.settings.delivery_attempt_timeout_seconds * 2 + self.settings.reconcile_after_seconds
        for d in due_deliveries(self.store, due_before=due_before):
            if claim_delivery(
                self.store, d.study_uid, seen_due_at=d.due_at, lease_seconds=lease, now=self._clock()
            ):
                log.info("reconcile.delivery", study_uid=d.study_uid, analysis_id=d.analysis_id)
                self._deliver_now(d.study_uid, d.analysis_id)
                report.deliveries.append(d.study_uid)

    def _watch_destinations(self, report: ReconcileReport) -> None:
        down = destinations_down(self.store)
        for name, error in down.items():
            if name not in self._down:
                log.warning("destination.down", destination=name, error=error)
                add_event(self.store, "destination.down", destination=name, error=error)
                report.down.append(name)
        for name in [n for n in self._down if n not in down]:  # a delivery got through
            log.info("destination.up", destination=name, by="delivery")
            add_event(self.store, "destination.up", destination=name, by="delivery")
            report.back.append(name)
        self._down = dict(down)
        if self._echo is None:
            return
        for name in list(down):
            if self._stop.is_set() or not self._echo(name):
                continue
            # a STOW-RS destination answers a QIDO-RS query instead of a C-ECHO
            by = "qido-rs" if name.startswith("stow+") else "c-echo"
            log.info("destination.up", destination=name, by=by)
            add_event(self.store, "destination.up", destination=name, by=by)
            report.back.append(name)
            del self._down[name]
            _, waiting = pending_delivery_attempts(self.store)
            make_deliveries_due(self.store, waiting.get(name, []))
            # due now: run them at once (claimed, so an overdue pass does not take them twice)
            self._overdue_deliveries(self._clock() + timedelta(seconds=1), report)

    def _run(self) -> None:
        interval = self.settings.reconcile_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception as exc:  # the database away: the next pass tries again
                log.warning("reconcile.failed", error=type(exc).__name__)

    def start(self) -> Reconciler:
        """Run a pass every ``DICOMNODE_RECONCILE_INTERVAL_SECONDS`` on a daemon thread."""
        if self._thread is None and self.settings.reconcile_interval_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="dicomnode-reconcile", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (a pass waiting on a C-ECHO is not waited for: a daemon thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None


__all__ = ["ReconcileReport", "Reconciler"]
