"""The delivery retry policy: how many attempts, when, and what state a study is left in.

Every destination is retried for ``DICOMNODE_DELIVERY_WINDOW_SECONDS`` (default 24 h) from the
first attempt of an analysis, with waits of ``DICOMNODE_DELIVERY_BACKOFF_SECONDS`` doubling after
each failed attempt up to ``DICOMNODE_DELIVERY_BACKOFF_MAX_SECONDS`` (defaults 2 s, 300 s);
``DICOMNODE_DELIVERY_ATTEMPTS``, when set (> 0), also caps the number of attempts, as it did alone
before the window existed (8 attempts with a 60 s cap spanned about 3 minutes). The budget is
spent in *rounds* (:mod:`dicomnode.delivery.rounds` runs them and records each attempt in SQL):

- The analysing worker makes the first :data:`INLINE_ATTEMPTS` itself (a PACS that blinked), then
  hands the rest to scheduled rounds of one attempt each, so a PACS that is down does not hold
  the worker. A round is scheduled through a :data:`Defer`, after :func:`backoff_after`:

  - embedded mode (no broker): :meth:`worker.runners.InProcessRunner.retry_delivery` starts a
    ``threading.Timer`` that puts the round on the analysis thread. Timers die with the process;
    on start the node finds studies whose state reason starts with
    :data:`dicomnode.store.models.DELIVERY_RETRY_REASON` and asks the runner to resume them.
  - Celery (``DICOMNODE_BROKER_URL``): ``worker.tasks._schedule_delivery`` sends the
    ``dicomnode.deliver_results`` task with ``apply_async(countdown=...)`` on the study's queue;
    the countdown task is kept in the broker and survives a worker restart.
  - no scheduler (``dicomnode resend``): every attempt left is made in the caller, sleeping
    between them.

- A study stays ANALYSED while a round is scheduled, becomes DELIVERED when every destination has
  every object, and DELIVERY_FAILED when a destination used up its budget
  (:func:`end_state`); ``dicomnode resend`` starts a new budget for it.

Change the policy here; nothing else decides attempts, waits or end states.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from pydicom import Dataset

from dicomnode.config import Destination, Settings
from dicomnode.delivery.sender import AttemptResult, Fallback, send_once
from dicomnode.store.models import StudyState

log = structlog.get_logger("dicomnode.delivery")

#: Schedules another delivery round for (study UID, analysis ID) after a delay in seconds: a
#: Celery task with a countdown, or a timer in the embedded runner. Without one, every retry
#: happens in the caller (``dicomnode resend``).
Defer = Callable[[str, int, float], None]

#: Delivery attempts the analysing worker makes itself (a PACS that blinked); the rest of the
#: budget is left to scheduled rounds, so a PACS that is down does not hold the worker.
INLINE_ATTEMPTS = 2

#: Attempts one scheduled round makes before it schedules the next.
SCHEDULED_ROUND_ATTEMPTS = 1

#: Attempts made at once without a scheduler (``dicomnode resend``) when no attempt count is set:
#: the window is for scheduled rounds; a command line does not wait a day.
UNSCHEDULED_ATTEMPTS = 8


def backoff_after(attempt: int, backoff_seconds: float, backoff_max_seconds: float) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(backoff_seconds * 2 ** (attempt - 1), backoff_max_seconds))


@dataclass(frozen=True)
class RetryPolicy:
    """One destination's attempt budget and the waits between its attempts."""

    budget: int  # most attempts; 0: no count, the window decides
    backoff_seconds: float
    backoff_max_seconds: float
    window_seconds: float = float("inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy ``DICOMNODE_DELIVERY_ATTEMPTS``, ``DICOMNODE_DELIVERY_WINDOW_SECONDS`` and
        the two backoff settings describe."""
        return cls(
            settings.delivery_attempts,
            settings.delivery_backoff_seconds,
            settings.delivery_backoff_max_seconds,
            settings.delivery_window_seconds,
        )

    def wait_after(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt``."""
        return backoff_after(attempt, self.backoff_seconds, self.backoff_max_seconds)

    def attempts_now(self, first: int, *, scheduled: bool, continuing: bool) -> int:
        """How many attempts this round makes, starting at attempt number ``first``.

        0 when the budget is spent. Without a scheduler (``scheduled`` false) every attempt left;
        with one, :data:`INLINE_ATTEMPTS` in the analysing worker and
        :data:`SCHEDULED_ROUND_ATTEMPTS` in a scheduled round (``continuing``).
        """
        if not scheduled and not self.budget:
            return UNSCHEDULED_ATTEMPTS
        left = self.budget - first + 1 if self.budget else INLINE_ATTEMPTS
        if left <= 0:
            return 0
        if not scheduled:
            return left
        return min(left, SCHEDULED_ROUND_ATTEMPTS if continuing else INLINE_ATTEMPTS)

    def next_round_in(self, last: int, elapsed: float = 0.0) -> float | None:
        """Seconds until the next round after failed attempt ``last``, ``elapsed`` seconds after
        the first attempt; None when it was the budget's last or the window has passed."""
        if self.budget and last >= self.budget:
            return None
        wait = self.wait_after(last)
        if elapsed >= self.window_seconds:
            return None
        return min(wait, max(self.window_seconds - elapsed, 0.0))


def end_state(*, has_destinations: bool, all_delivered: bool, round_scheduled: bool) -> StudyState:
    """The study's state after a delivery round."""
    if round_scheduled or not has_destinations:
        return StudyState.ANALYSED
    return StudyState.DELIVERED if all_delivered else StudyState.DELIVERY_FAILED


def deliver(
    datasets: Sequence[Dataset],
    dest: Destination,
    *,
    calling_ae: str,
    attempts: int,
    backoff_seconds: float,
    backoff_max_seconds: float = 60.0,
    on_attempt: Callable[[AttemptResult], None] = lambda r: None,
    fallback: Fallback | None = None,
    extra_sop_classes: Sequence[str] = (),
    sleep: Callable[[float], None] = time.sleep,
    first_attempt: int = 1,
    last_attempt: int | None = None,
    connect_timeout: float = 10.0,
    attempt_timeout: float = 120.0,
    send: Callable[..., list[AttemptResult]] = send_once,
) -> bool:
    """Deliver every dataset to ``dest``; retry the ones that failed with exponential backoff.

    Makes attempts ``first_attempt`` .. ``first_attempt + attempts - 1`` of a budget that ends at
    ``last_attempt`` (default: the last of these). Returns True when all were stored, False when
    these attempts ran out. ``send`` makes one attempt: C-STORE, or STOW-RS
    (:func:`dicomnode.delivery.stow.send_once`) for a ``stow+`` destination.
    """
    pending = list(datasets)
    stop = first_attempt + attempts - 1
    budget_end = stop if not last_attempt else last_attempt
    for n in range(first_attempt, stop + 1):
        results = send(
            pending,
            dest,
            calling_ae=calling_ae,
            attempt=n,
            fallback=fallback,
            extra_sop_classes=extra_sop_classes,
            connect_timeout=connect_timeout,
            deadline=attempt_timeout,
        )
        for r in results:
            on_attempt(r)
        failed = {r.sop_instance_uid for r in results if not r.success}
        pending = [ds for ds in pending if str(ds.SOPInstanceUID) in failed]
        if not pending:
            log.info("delivery.ok", destination=str(dest), objects=len(datasets), attempts=n)
            return True
        errors = sorted({r.error or "" for r in results if not r.success})
        log.warning(
            "delivery.retry" if not last_attempt or n < budget_end else "delivery.failed",
            destination=str(dest),
            attempt=n,
            of=budget_end if last_attempt != 0 else None,  # None: the window decides
            errors=errors,
        )
        if n < stop:
            sleep(backoff_after(n, backoff_seconds, backoff_max_seconds))
    return False


__all__ = [
    "INLINE_ATTEMPTS",
    "SCHEDULED_ROUND_ATTEMPTS",
    "UNSCHEDULED_ATTEMPTS",
    "Defer",
    "RetryPolicy",
    "backoff_after",
    "deliver",
    "end_state",
]
