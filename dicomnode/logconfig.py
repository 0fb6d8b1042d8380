"""structlog set-up: events with key-value context, console or JSON, never patient data.

Callers log UIDs and stages only. As a second line of defence, :func:`_scrub` drops any key that
names a patient attribute.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_PATIENT_KEYS = frozenset({"patient_name", "patient_id", "PatientName", "PatientID", "patient_birth_date"})


def _scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PATIENT_KEYS & event_dict.keys():
        event_dict[key] = "<redacted>"
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes to whatever ``sys.stderr`` is at the time of the record."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Route structlog and stdlib logging (pynetdicom, celery) to stderr."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # resolve sys.stderr at each call, so redirected or captured stderr gets the events
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Library records (celery, alembic, pynetdicom, highdicom) in the same format as our events:
    # one JSON object a line with fmt=json, so a log shipper parses every line of a process.
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), handlers=[handler], force=True)
    # pynetdicom logs identifiers of C-STORE requests at INFO/DEBUG: keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Celery's own lines at the chosen level: worker ready, task received, succeeded (with the
    # task's result: study UID, state, score) or failed. They name tasks by ID and study UID only.
    logging.getLogger("celery").setLevel(lvl)
