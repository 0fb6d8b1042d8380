"""Delivery of a study's results to the destination AEs.

- :mod:`~dicomnode.delivery.sender`: one attempt, the result objects to one destination over one
  C-STORE association; :mod:`~dicomnode.delivery.pool` keeps that association open for the next
  study to the same destination (``DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS``);
  :mod:`~dicomnode.delivery.checkpoint` makes pynetdicom's pause of an association's own thread
  hold, so a send on a reused association never loses its answer to that thread.
- :mod:`~dicomnode.delivery.stow`: the same attempt to a ``stow+https://`` destination, one
  DICOMweb STOW-RS POST, and its reachability check (a QIDO-RS query instead of a C-ECHO).
- :mod:`~dicomnode.delivery.retry`: the retry policy (attempt budget, backoff, inline and
  scheduled rounds, the state a study ends in) and how each mode schedules a round.
- :mod:`~dicomnode.delivery.rounds`: a round for a study, every attempt recorded in SQL: the first
  (:func:`deliver_results`), a scheduled one (:func:`retry_delivery`), a re-send (:func:`resend`).
- :mod:`~dicomnode.delivery.hook`: urgent-finding notifications (JSON POST, or HL7 v2 ORU^R01
  over MLLP by :mod:`~dicomnode.delivery.hl7v2`), each attempt recorded, retried by the reconciler.

:mod:`dicomnode.delivery.push` (the ``dicomnode push`` SCU) is imported by its own path and not
re-exported here. Both it and the sender switch pynetdicom to sending a file given by path as its
bytes (``STORE_SEND_CHUNKED_DATASET``), not decoded and encoded again.
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
