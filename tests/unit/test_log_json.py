"""JSON logs (the Docker default): a failure carries its traceback, so an operator can see why
something failed (frames and the exception message, never local variables); a value pydicom or
highdicom quotes in a warning (a birth date, a name) is redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement

from dicomnode.logconfig import REDACTED, configure_logging


@pytest.fixture
def json_logs() -> Iterator[None]:
    configure_logging("info", "json")
    yield
    configure_logging("info", "console")  # as tests/conftest.py sets it for every other test


def _fail_deep_inside() -> None:
    patient_name = "DOE^JANE"  # a local a traceback renderer with locals would print
    raise RuntimeError(f"model output has {len(patient_name)} NaN values")


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_logged_exception_has_its_traceback_in_the_json_line(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        _fail_deep_inside()
    except RuntimeError:
        structlog.get_logger("worker.pipeline").exception("dispatch.inprocess_failed", study_uid="1.2.3")
    [line] = _lines(capsys.readouterr().err)
    assert line["event"] == "dispatch.inprocess_failed" and line["study_uid"] == "1.2.3"
    exception = str(line["exception"])
    assert exception.startswith("Traceback (most recent call last):")
    assert "in _fail_deep_inside" in exception
    assert "RuntimeError: model output has 8 NaN values" in exception
    assert "DOE^JANE" not in exception  # no dump of local variables
    assert "exc_info" not in line


def test_a_library_record_with_exc_info_has_its_traceback_in_the_json_line(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        _fail_deep_inside()
    except RuntimeError:
        logging.getLogger("celery.app.trace").error("Task failed", exc_info=True)
    [line] = _lines(capsys.readouterr().err)
    assert line["event"] == "Task failed"
    assert "RuntimeError: model output has 8 NaN values" in str(line["exception"])


def test_a_header_value_in_a_pydicom_warning_is_redacted(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # what pydicom does reading a sloppy PatientBirthDate: logs (and warns) the value it refuses
    with pytest.warns(UserWarning):
        DataElement(0x00100030, "DA", "19800231X", validation_mode=pydicom_config.WARN)
    [line] = [x for x in _lines(capsys.readouterr().err) if x.get("logger") == "pydicom"]
    assert line["event"] == f"Invalid value for VR DA: {REDACTED}."


def test_a_name_quoted_in_a_python_warning_is_redacted(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # the record logging.captureWarnings makes of highdicom's check_person_name warning
    logging.getLogger("py.warnings").warning(
        'sop.py:220: UserWarning: The string "SMITH" is unlikely to represent the intended person name\n'
    )
    [line] = _lines(capsys.readouterr().err)
    assert "SMITH" not in str(line["event"])
    assert f"The string {REDACTED} is unlikely" in str(line["event"])
