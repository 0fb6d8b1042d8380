"""Delivery of a study's results to the destination AEs.

- :mod:`~dicomnode.delivery.sender`: one attempt, the result objects to one destination over one
  C-STORE association.
- :mod:`~dicomnode.delivery.retry`: the retry policy (attempt budget, backoff, inline and
  scheduled rounds, the state a study ends in) and how each mode schedules a round.
- :mod:`~dicomnode.delivery.rounds`: a round for a study, every attempt recorded in SQL: the first
  (:func:`deliver_results`), a scheduled one (:func:`retry_delivery`), a re-send (:func:`resend`).

:mod:`dicomnode.delivery.push` (the ``dicomnode push`` SCU) is imported by its own path and not
re-exported here: it switches pynetdicom to sending files in chunks when imported.
"""

from dicomnode.delivery.retry import (
    INLINE_ATTEMPTS,
    SCHEDULED_ROUND_ATTEMPTS,
    Defer,
    RetryPolicy,
    backoff_after,
    deliver,
    end_state,
)
from dicomnode.delivery.rounds import (
    deliver_results,
    hand_off,
    read_results,
    resend,
    result_file,
    retry_delivery,
)
from dicomnode.delivery.sender import (
    STORED_STATUSES,
    AttemptResult,
    Fallback,
    abort_all,
    echo,
    enhanced_sr_fallback,
    send_once,
)

__all__ = [
    "INLINE_ATTEMPTS",
    "SCHEDULED_ROUND_ATTEMPTS",
    "STORED_STATUSES",
    "AttemptResult",
    "Defer",
    "Fallback",
    "RetryPolicy",
    "abort_all",
    "backoff_after",
    "deliver",
    "deliver_results",
    "echo",
    "end_state",
    "enhanced_sr_fallback",
    "hand_off",
    "read_results",
    "resend",
    "result_file",
    "retry_delivery",
    "send_once",
]
