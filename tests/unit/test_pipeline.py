"""The worker pipeline called directly: files in a temp folder, SQLite, a tiny real ONNX model, no
network. One study from its stored instances to an SR and a heatmap SC on disk and the analysis in
SQL; the queue, the node and delivery are tested elsewhere (tests/integration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.config import Settings
from dicomnode.model import PneumoniaModel, PreprocessConfig, preprocess
from dicomnode.results import read_sr
from dicomnode.storage import instance_path
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study
from tests.tiny_model import tiny_card, write_tiny_model
from worker.pipeline import Pipeline


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    # decode_memory_bytes=0: decoded in this process, the fast tier starts none (the decoding
    # process is tested in tests/integration/test_pixel_bomb.py)
    settings = Settings(storage_dir=tmp_path / "node", model=tmp_path / "tiny.onnx", decode_memory_bytes=0)
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    store = Store(settings.effective_database_url)
    return Pipeline(settings, store, PneumoniaModel(settings.model_path))


def test_analyse_study_scores_with_the_model_and_writes_sr_and_sc(pipeline: Pipeline) -> None:
    ds = make_phantom(np.random.default_rng(7), True, size=128)
    study_uid = store_complete_study(pipeline, ds)

    outcome = pipeline.analyse_study(study_uid)

    # the score is the model's own output on the same preprocessed pixels
    image = preprocess(ds, PreprocessConfig.from_dict(pipeline.model.card.preprocess))
    expected, _ = pipeline.model.predict(image[None])
    assert outcome.score == pytest.approx(float(expected[0]), abs=1e-6)
    # no destination configured: nothing to deliver, the study is delivered (to nobody)
    assert outcome.state == study_state(pipeline.store, study_uid)
    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.score == pytest.approx(outcome.score)
    assert analysis.model_version == "0.0.1-test" and analysis.instances_analysed == 1
    assert [s["selected"] for s in analysis.selection] == [True]
    sr_path, sc_path = outcome.result_paths
    summary = read_sr(sr_path)
    assert summary.study_uid == study_uid and summary.probability == pytest.approx(outcome.score, abs=1e-6)
    sc = pydicom.dcmread(sc_path)
    assert sc.StudyInstanceUID == study_uid and sc.Modality == "OT"


def test_a_second_run_with_the_same_model_is_skipped(pipeline: Pipeline) -> None:
    study_uid = store_complete_study(pipeline, make_phantom(np.random.default_rng(8), False, size=128))
    first = pipeline.analyse_study(study_uid)
    again = pipeline.analyse_study(study_uid)
    assert not first.skipped and again.skipped and again.state == first.state


def test_a_study_without_a_chest_radiograph_is_not_applicable(pipeline: Pipeline) -> None:
    ds = make_phantom(np.random.default_rng(9), True, size=128)
    ds.BodyPartExamined = "KNEE"
    study_uid = store_complete_study(pipeline, ds)
    outcome = pipeline.analyse_study(study_uid)
    assert outcome.state == StudyState.NOT_APPLICABLE
    assert study_state(pipeline.store, study_uid) == StudyState.NOT_APPLICABLE
    assert outcome.reason is not None and "KNEE" in outcome.reason.upper()


def test_a_study_reopened_after_retention_purged_its_files_analyses_what_is_still_on_disk(
    pipeline: Pipeline,
) -> None:
    from sqlalchemy import update

    from dicomnode.store.models import Instance, utcnow

    first = make_phantom(np.random.default_rng(10), True, size=128)
    study_uid = store_complete_study(pipeline, first)
    with pipeline.store.session() as s:  # as dicomnode purge leaves it: row kept and marked, file gone
        s.execute(update(Instance).values(purged_at=utcnow()))
    instance_path(
        pipeline.settings.instances_dir, first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    ).unlink()
    late = make_phantom(np.random.default_rng(11), True, size=128)
    late.StudyInstanceUID = first.StudyInstanceUID
    store_complete_study(pipeline, late)

    pipeline.analyse_study(study_uid)

    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.instances_analysed == 1
    assert len(analysis.selection) == 1 and analysis.selection[0]["selected"], analysis.selection
