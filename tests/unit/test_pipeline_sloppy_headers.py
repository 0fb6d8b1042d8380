"""The worker pipeline on a study whose header a real modality filled sloppily (PatientSex 'U', a
year-only birth date, an ISO date, an impossible time): the study is analysed and its results
written, not failed, and SQL holds no header value. Called directly, as tests/unit/test_pipeline.py
does: files in a temp folder, SQLite, the tiny real ONNX model, no network."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import structlog
from sqlalchemy import MetaData, select

from dicomnode.config import Settings
from dicomnode.model import PneumoniaModel
from dicomnode.results import Finding, build_sr, read_sr
from dicomnode.results.part10 import encode
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study
from tests.tiny_model import tiny_card, write_tiny_model
from tests.unit.test_results_sanitise import as_sent
from worker.pipeline import Pipeline, _build_result, failure_reason

#: What the modality sent; none of it may reach SQL (the old failure message quoted it).
SLOPPY = {
    "PatientSex": b"U ",
    "PatientBirthDate": b"1960",
    "StudyDate": b"2024-01-01",
    "StudyTime": b"25:61 ",
    "PatientAge": b"45",
}


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    # decode_memory_bytes=0: decoded in this process, the fast tier starts none (the decoding
    # process is tested in tests/integration/test_pixel_bomb.py)
    settings = Settings(storage_dir=tmp_path / "node", model=tmp_path / "tiny.onnx", decode_memory_bytes=0)
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    store = Store(settings.effective_database_url)
    return Pipeline(settings, store, PneumoniaModel(settings.model_path))


def _sql_text(store: Store) -> str:
    """Every value of every row of every table, as one string."""
    meta = MetaData()
    meta.reflect(store.engine)
    with store.engine.connect() as conn:
        return "\n".join(
            repr(tuple(row)) for table in meta.sorted_tables for row in conn.execute(select(table))
        )


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the sloppy values
def test_study_with_sloppy_header_values_is_analysed_and_sql_holds_no_header_value(
    pipeline: Pipeline,
) -> None:
    ds = make_phantom(np.random.default_rng(21), True, size=128)
    for keyword, raw in SLOPPY.items():
        as_sent(ds, keyword, raw)
    # the SCP stores the bytes as received: write them, then read back what a worker reads
    study_uid = store_complete_study(pipeline, ds)

    with structlog.testing.capture_logs() as logs:
        outcome = pipeline.analyse_study(study_uid)

    assert outcome.state is not StudyState.FAILED
    assert study_state(pipeline.store, study_uid) in (StudyState.ANALYSED, StudyState.DELIVERED)
    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.error is None and analysis.sr_sop_instance_uid
    sr_path, sc_path = outcome.result_paths
    assert read_sr(sr_path).study_uid == study_uid
    sr = pydicom.dcmread(sr_path)
    assert (sr.PatientSex, sr.PatientBirthDate, sr.StudyDate, sr.StudyTime) == ("", "", "", "")
    assert "PatientAge" not in sr
    assert pydicom.dcmread(sc_path).PatientSex == ""

    text = _sql_text(pipeline.store)
    for value in ("'1960'", "2024-01-01", "25:61", "PatientSexValues", "Unable to convert"):
        assert value not in text, value
    # one log line for the study names the keywords it changed, no value
    [line] = [e for e in logs if e["event"] == "results.header_sanitised"]
    assert line["attributes"] == sorted(SLOPPY)
    assert not any("1960" in repr(e) for e in logs)


def test_a_result_the_full_header_cannot_make_goes_out_with_the_minimal_header() -> None:
    source = make_phantom(np.random.default_rng(22), True, size=64)
    card = tiny_card(threshold=0.5)
    finding = Finding(0.8, card.threshold)

    def build(minimal: bool) -> tuple[pydicom.Dataset, bytes]:
        if not minimal:  # what highdicom raised on a header it refused, value quoted
            raise ValueError("'DOE^JOHN' is not a valid value")
        sr = build_sr([source], finding, card, minimal=True)
        return sr, encode(sr)

    with structlog.testing.capture_logs() as logs:
        sr, encoded, minimal = _build_result(build, "sr", structlog.get_logger().bind())

    assert minimal is True and sr.PatientID == source.PatientID and not sr.PatientBirthDate
    assert pydicom.dcmread(io.BytesIO(encoded)).SOPInstanceUID == sr.SOPInstanceUID
    assert logs == [
        {"event": "results.minimal_header", "result": "sr", "error": "ValueError", "log_level": "warning"}
    ]


def test_failure_reason_names_the_exception_type_never_its_text() -> None:
    reason = failure_reason(ValueError("Unable to convert '1960' to 'DA' object"))
    assert reason.startswith("ValueError during analysis") and "1960" not in reason
    assert "re-send the study" in reason
