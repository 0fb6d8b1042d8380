"""structlog set-up: events with key-value context, console or JSON, never patient data.

Callers log UIDs and stages only. As a second line of defence, :func:`_scrub` drops any key that
names a patient attribute.

A failure logged with its exception (``log.exception(...)``, or a library record with
``exc_info``) carries the traceback: under ``exception`` as text in JSON lines, below the line on
the console. Tracebacks are frames, source lines and exception messages, never local variables
(structlog's ``dict_tracebacks`` and a ``rich`` console would add those, and a local may hold a
patient's name); our own exceptions name tags and UIDs, never header values.

pydicom and highdicom quote element values in their warnings ("Invalid value for VR DA:
'19800231'", 'The string "DOE" is unlikely to represent the intended person name'), and a
patient's name or birth date can be such a value: their records, and Python warnings (routed
through logging), have quoted text replaced by :data:`REDACTED` (:class:`_RedactLibraryValues`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_PATIENT_KEYS = frozenset({"patient_name", "patient_id", "PatientName", "PatientID", "patient_birth_date"})


REDACTED = "<redacted>"
#: loggers whose messages may quote a DICOM element's value (py.warnings: Python warnings)
_VALUE_QUOTING_LOGGERS = ("pydicom", "highdicom", "py.warnings")
#: a quoted value as repr() and f-strings write it: '...' or "..." (with backslash escapes)
_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")


def _scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _PATIENT_KEYS & event_dict.keys():
        event_dict[key] = REDACTED
    return event_dict


class _RedactLibraryValues(logging.Filter):
    """Replace quoted text in records of :data:`_VALUE_QUOTING_LOGGERS` by :data:`REDACTED`: what
    is wrong stays readable ("Invalid value for VR DA: <redacted>."), the value does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        if any(record.name == n or record.name.startswith(n + ".") for n in _VALUE_QUOTING_LOGGERS):
            record.msg, record.args = _QUOTED.sub(REDACTED, record.getMessage()), None
        return True


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
    render: list[Any] = (
        # without format_exc_info a JSON line says only "exc_info": true, not what failed
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            *render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # resolve sys.stderr at each call, so redirected or captured stderr gets the events
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Library records (celery, alembic, pynetdicom, highdicom) in the same format as our events:
    # one JSON object a line with fmt=json, so a log shipper parses every line of a process.
    handler = _StderrHandler()
    handler.addFilter(_RedactLibraryValues())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), handlers=[handler], force=True)
    logging.captureWarnings(True)  # warnings as log lines (JSON with fmt=json), redacted as above
    # pynetdicom logs identifiers of C-STORE requests at INFO/DEBUG: keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Celery's own lines at the chosen level: worker ready, task received, succeeded (with the
    # task's result: study UID, state, score) or failed. They name tasks by ID and study UID only.
    logging.getLogger("celery").setLevel(lvl)
