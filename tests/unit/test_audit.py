"""Time arguments, filters and output formats of ``dicomnode audit`` (no database)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from dicomnode.ops.audit import AuditFilter, parse_time
from dicomnode.ops.tables import render_rows

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)


def test_a_bare_date_is_midnight_utc_and_the_end_of_that_day_for_until() -> None:
    assert parse_time("2026-01-31") == datetime(2026, 1, 31, tzinfo=timezone.utc)
    assert parse_time("2026-01-31", end=True) == datetime(2026, 2, 1, tzinfo=timezone.utc)


def test_date_times_are_utc_and_offsets_are_converted() -> None:
    assert parse_time("2026-01-31T08:00:00") == datetime(2026, 1, 31, 8, tzinfo=timezone.utc)
    assert parse_time("2026-01-31T09:00:00+01:00") == datetime(2026, 1, 31, 8, tzinfo=timezone.utc)


def test_spans_count_back_from_now() -> None:
    assert parse_time("24h", now=NOW) == NOW - timedelta(hours=24)
    assert parse_time("7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_time("90m", now=NOW) == NOW - timedelta(minutes=90)


def test_an_unreadable_time_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"use a date \(2026-01-31\).*\(24h, 7d\)"):
        parse_time("last tuesday")


def test_filter_refuses_unknown_states_and_naive_times() -> None:
    with pytest.raises(ValueError, match="unknown state 'done'"):
        AuditFilter(states=("done",))
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditFilter(since=datetime(2026, 1, 1))


@dataclass(frozen=True)
class _Row:
    name: str
    at: datetime
    score: float | None
    ok: bool
    detail: dict[str, int] | None


ROWS = [
    _Row("a", datetime(2026, 1, 1, 8, tzinfo=timezone.utc), 0.91234, True, {"n": 1}),
    _Row("bb", datetime(2026, 1, 2, 9, tzinfo=timezone.utc), None, False, None),
]


def test_table_aligns_columns_and_shows_missing_values_as_dash() -> None:
    lines = render_rows(ROWS, "table").splitlines()
    assert lines[0].split() == ["name", "at", "score", "ok", "detail"]
    assert "0.912" in lines[2] and "2026-01-01 08:00:00" in lines[2] and "yes" in lines[2]
    assert lines[3].split()[3] == "-"  # score (the date-time is two words)
    assert render_rows([], "table") == "(no rows)"
    assert render_rows(ROWS, "table", columns=["name", "ok"]).splitlines()[0].split() == ["name", "ok"]


def test_csv_and_json_carry_every_field_with_iso_times() -> None:
    rows = list(csv.DictReader(io.StringIO(render_rows(ROWS, "csv"))))
    assert rows[0] == {
        "name": "a",
        "at": "2026-01-01T08:00:00+00:00",
        "score": "0.91234",
        "ok": "True",
        "detail": '{"n": 1}',
    }
    assert rows[1]["score"] == ""
    data = json.loads(render_rows(ROWS, "json"))
    assert data[1] == {
        "name": "bb",
        "at": "2026-01-02T09:00:00+00:00",
        "score": None,
        "ok": False,
        "detail": None,
    }
