"""Reading order of the radiologist's worklist: suspected positives first, nobody buried.

Two bands, each oldest first:

1. the urgent band: studies the model calls URGENT, and ROUTINE studies that have waited longer
   than ``max_wait`` (the model misses some positives; a cap on waiting bounds the harm);
2. the routine band: the other ROUTINE studies.

>>> from datetime import datetime, timedelta
>>> now = datetime(2024, 1, 1, 12, 0)
>>> entries = [
...     WorklistEntry("1.1", Priority.ROUTINE, 0.1, now - timedelta(hours=5)),
...     WorklistEntry("1.2", Priority.URGENT, 0.9, now - timedelta(minutes=10)),
...     WorklistEntry("1.3", Priority.ROUTINE, 0.2, now - timedelta(minutes=30)),
... ]
>>> [(r.study_uid, r.reason.value) for r in reading_order(entries, now=now, max_wait=timedelta(hours=4))]
[('1.1', 'waited'), ('1.2', 'urgent'), ('1.3', 'routine')]
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dicomnode.results.finding import Priority

__all__ = ["RankReason", "RankedEntry", "WorklistEntry", "reading_order"]


@dataclass(frozen=True)
class WorklistEntry:
    """One study waiting to be read."""

    study_uid: str
    priority: Priority
    #: the model's probability; None when the study has no result yet (it counts as routine)
    probability: float | None
    arrived_at: datetime
    accession: str = ""


class RankReason(str, enum.Enum):
    """Why a study sits where it does in the reading order."""

    #: the model flagged it
    URGENT = "urgent"
    #: routine, but raised into the urgent band because it waited longer than max_wait
    WAITED = "waited"
    #: routine, within its wait limit
    ROUTINE = "routine"


@dataclass(frozen=True)
class RankedEntry:
    """A worklist entry with its place in the reading order and the reason for it."""

    entry: WorklistEntry
    #: 1-based position in the reading order
    rank: int
    reason: RankReason
    #: how long the study had waited at ``now`` (zero if it arrived after ``now``)
    waited: timedelta

    @property
    def study_uid(self) -> str:
        return self.entry.study_uid

    @property
    def in_urgent_band(self) -> bool:
        """Whether the study is read before all routine ones (flagged or waited too long)."""
        return self.reason is not RankReason.ROUTINE


def reading_order(
    entries: Iterable[WorklistEntry], *, now: datetime, max_wait: timedelta
) -> list[RankedEntry]:
    """Order ``entries`` for reading: the urgent band, then the routine band, each oldest first.

    A ROUTINE study that has waited longer than ``max_wait`` at ``now`` joins the urgent band
    (reason ``WAITED``). Ties on arrival are broken by study UID so the order is stable across
    calls. ``now`` and every ``arrived_at`` must be all timezone-aware or all naive.
    """
    if max_wait <= timedelta(0):
        raise ValueError(f"max_wait must be positive, got {max_wait}")
    entries = list(entries)
    aware = now.tzinfo is not None
    for e in entries:
        if not isinstance(e.priority, Priority):
            raise TypeError(f"study {e.study_uid}: priority must be a Priority, got {e.priority!r}")
        if (e.arrived_at.tzinfo is not None) != aware:
            raise ValueError(
                f"study {e.study_uid}: arrived_at and now must both be timezone-aware or both "
                "naive; store arrival times in UTC and pass now=datetime.now(timezone.utc)"
            )

    def reason(e: WorklistEntry) -> RankReason:
        if e.priority is Priority.URGENT:
            return RankReason.URGENT
        return RankReason.WAITED if now - e.arrived_at > max_wait else RankReason.ROUTINE

    classified = [(e, reason(e)) for e in entries]
    classified.sort(key=lambda pair: (pair[1] is RankReason.ROUTINE, pair[0].arrived_at, pair[0].study_uid))
    return [
        RankedEntry(entry=e, rank=i, reason=r, waited=max(now - e.arrived_at, timedelta(0)))
        for i, (e, r) in enumerate(classified, start=1)
    ]
