"""Reading order: urgent band first (flagged or waited too long), each band oldest first."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dicomnode.results import Priority, RankReason, WorklistEntry, reading_order

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
MAX_WAIT = timedelta(hours=4)


def entry(uid: str, priority: Priority, minutes_ago: float, p: float | None = 0.5) -> WorklistEntry:
    return WorklistEntry(uid, priority, p, NOW - timedelta(minutes=minutes_ago), accession=f"A{uid}")


def test_mixed_worklist_reads_urgent_then_waited_routine_then_routine_by_arrival() -> None:
    entries = [
        entry("r-new", Priority.ROUTINE, 5, 0.10),
        entry("u-new", Priority.URGENT, 2, 0.95),
        entry("r-mid", Priority.ROUTINE, 60, 0.20),
        entry("r-starved", Priority.ROUTINE, 5 * 60, 0.30),  # waited 5 h > 4 h
        entry("u-old", Priority.URGENT, 30, 0.80),
        entry("r-unscored", Priority.ROUTINE, 90, None),
    ]
    ranked = reading_order(entries, now=NOW, max_wait=MAX_WAIT)
    assert [r.study_uid for r in ranked] == [
        "r-starved",  # raised into the urgent band, and the oldest in it
        "u-old",
        "u-new",
        "r-unscored",
        "r-mid",
        "r-new",
    ]
    assert [r.reason for r in ranked] == [
        RankReason.WAITED,
        RankReason.URGENT,
        RankReason.URGENT,
        RankReason.ROUTINE,
        RankReason.ROUTINE,
        RankReason.ROUTINE,
    ]
    assert [r.rank for r in ranked] == [1, 2, 3, 4, 5, 6]
    assert [r.in_urgent_band for r in ranked] == [True, True, True, False, False, False]
    assert ranked[0].waited == timedelta(hours=5)


def test_routine_study_is_raised_only_after_waiting_longer_than_max_wait() -> None:
    at_limit = entry("at-limit", Priority.ROUTINE, MAX_WAIT.total_seconds() / 60)
    past_limit = entry("past-limit", Priority.ROUTINE, MAX_WAIT.total_seconds() / 60 + 1)
    urgent = entry("urgent", Priority.URGENT, 1)
    ranked = reading_order([at_limit, urgent, past_limit], now=NOW, max_wait=MAX_WAIT)
    assert [(r.study_uid, r.reason) for r in ranked] == [
        ("past-limit", RankReason.WAITED),
        ("urgent", RankReason.URGENT),
        ("at-limit", RankReason.ROUTINE),
    ]


def test_equal_arrivals_are_ordered_by_study_uid_whatever_the_input_order() -> None:
    a, b = entry("1.2", Priority.URGENT, 10), entry("1.1", Priority.URGENT, 10)
    first = reading_order([a, b], now=NOW, max_wait=MAX_WAIT)
    second = reading_order([b, a], now=NOW, max_wait=MAX_WAIT)
    assert [r.study_uid for r in first] == [r.study_uid for r in second] == ["1.1", "1.2"]


def test_study_arriving_after_now_has_waited_zero() -> None:
    ranked = reading_order([entry("future", Priority.ROUTINE, -3)], now=NOW, max_wait=MAX_WAIT)
    assert ranked[0].waited == timedelta(0)
    assert ranked[0].reason is RankReason.ROUTINE


def test_mixing_naive_and_aware_times_is_refused() -> None:
    naive = WorklistEntry("1.1", Priority.URGENT, 0.9, datetime(2024, 3, 1, 11, 0))
    with pytest.raises(ValueError, match="timezone"):
        reading_order([naive], now=NOW, max_wait=MAX_WAIT)


def test_non_positive_max_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="max_wait"):
        reading_order([], now=NOW, max_wait=timedelta(0))


def test_empty_worklist_gives_empty_order() -> None:
    assert reading_order(iter([]), now=NOW, max_wait=MAX_WAIT) == []
