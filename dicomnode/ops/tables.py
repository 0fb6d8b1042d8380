"""Typed rows (dataclasses) printed as an aligned table, CSV or JSON: the output of
``dicomnode audit`` and ``dicomnode monitor``; :func:`render_csv` is the one CSV writer of
``dicomnode`` (the worklist uses it too).

CSV files get opened in spreadsheets, and a cell such as ``=HYPERLINK(...)`` would run there as a
formula. Its text comes from senders (calling AE titles, accession numbers), so every text cell
that a spreadsheet would read as a formula is written with a leading ``'`` (OWASP, "CSV
Injection"); a reader that wants the raw value drops a leading ``'`` before one of
:data:`FORMULA_START`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

FORMATS = ("table", "csv", "json")
#: first characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: text starting with one of :data:`FORMULA_START` gets a
    leading ``'``; numbers and everything else are left alone."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def render_csv(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> str:
    """A header and one line per row; lists and dicts as JSON, text cells escaped (:func:`csv_cell`)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: csv_cell(json.dumps(v) if isinstance(v, dict | list) else v) for k, v in row.items()})
    return buf.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def row_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Dataclass rows as dicts of JSON-ready values (datetimes as ISO 8601, NaN as None)."""
    return [{k: _plain(v) for k, v in dataclasses.asdict(r).items()} for r in rows]


def table_cells(
    rows: Sequence[Any], columns: Sequence[str] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Column names and display strings (``-`` for none, 3 decimals, times to the second)."""
    if not rows:
        return list(columns or []), []
    names = list(columns) if columns else [f.name for f in dataclasses.fields(rows[0])]
    return names, [[_cell(getattr(r, n)) for n in names] for r in rows]


def render_rows(
    rows: Sequence[Any], fmt: str, *, columns: Sequence[str] | None = None, row_type: type | None = None
) -> str:
    """``rows`` (dataclass instances of one type) as ``table``, ``csv`` or ``json``.

    ``columns`` picks and orders the table's columns; CSV and JSON always carry every field.
    ``row_type`` (the rows' dataclass) gives the CSV header when there are no rows: a script or
    spreadsheet reading the file finds its columns either way.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps(row_dicts(rows), indent=1)
    if fmt == "csv":
        kind = type(rows[0]) if rows else row_type
        if kind is None:
            raise ValueError("render_rows: no rows, so give row_type for the CSV header")
        return render_csv(row_dicts(rows), [f.name for f in dataclasses.fields(kind)]).rstrip("\n")
    if not rows:
        return "(no rows)"
    names, cells = table_cells(rows, columns)
    widths = [max(len(n), *(len(c[i]) for c in cells)) for i, n in enumerate(names)]
    numeric = [all(_is_number(getattr(r, n)) for r in rows) for n in names]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


__all__ = ["FORMATS", "FORMULA_START", "csv_cell", "render_csv", "render_rows", "row_dicts", "table_cells"]
