"""The delivery retry policy: how many attempts, when, and what state a study is left in.

Every destination gets a budget of ``DICOMNODE_DELIVERY_ATTEMPTS`` attempts per analysis, with
waits of ``DICOMNODE_DELIVERY_BACKOFF_SECONDS`` doubling after each failed attempt up to
``DICOMNODE_DELIVERY_BACKOFF_MAX_SECONDS`` (defaults 8, 2 s, 60 s: attempts at about 0, 2, 6, 14,
30, 62, 122 and 182 s). The budget is spent in *rounds* (:mod:`dicomnode.delivery.rounds` runs
them and records each attempt in SQL):

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


def backoff_after(attempt: int, backoff_seconds: float, backoff_max_seconds: float) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): doubling, capped."""
    return float(min(backoff_seconds * 2 ** (attempt - 1), backoff_max_seconds))


@dataclass(frozen=True)
class RetryPolicy:
    """One destination's attempt budget and the waits between its attempts."""

    budget: int
    backoff_seconds: float
    backoff_max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy ``DICOMNODE_DELIVERY_ATTEMPTS`` and the two backoff settings describe."""
        return cls(
            settings.delivery_attempts,
            settings.delivery_backoff_seconds,
            settings.delivery_backoff_max_seconds,
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
        left = self.budget - first + 1
        if left <= 0:
            return 0
        if not scheduled:
            return left
        return min(left, SCHEDULED_ROUND_ATTEMPTS if continuing else INLINE_ATTEMPTS)

    def next_round_in(self, last: int) -> float | None:
        """Seconds until the next round after failed attempt ``last``; None when it was the
        budget's last."""
        return self.wait_after(last) if last < self.budget else None


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
) -> bool:
    """Deliver every dataset to ``dest``; retry the ones that failed with exponential backoff.

    Makes attempts ``first_attempt`` .. ``first_attempt + attempts - 1`` of a budget that ends at
    ``last_attempt`` (default: the last of these). Returns True when all were stored, False when
    these attempts ran out.
    """
    pending = list(datasets)
    stop = first_attempt + attempts - 1
    budget_end = stop if last_attempt is None else last_attempt
    for n in range(first_attempt, stop + 1):
        results = send_once(
            pending,
            dest,
            calling_ae=calling_ae,
            attempt=n,
            fallback=fallback,
            extra_sop_classes=extra_sop_classes,
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
            "delivery.retry" if n < budget_end else "delivery.failed",
            destination=str(dest),
            attempt=n,
            of=budget_end,
            errors=errors,
        )
        if n < stop:
            sleep(backoff_after(n, backoff_seconds, backoff_max_seconds))
    return False


__all__ = [
    "INLINE_ATTEMPTS",
    "SCHEDULED_ROUND_ATTEMPTS",
    "Defer",
    "RetryPolicy",
    "backoff_after",
    "deliver",
    "end_state",
]
