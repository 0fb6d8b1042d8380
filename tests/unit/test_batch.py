"""Several studies analysed together (worker/batch.py) give what each gives alone, and the embedded
runner drains the studies waiting into one batch (worker/runners.py InProcessRunner).

Two pipelines on the tiny model, each with its own storage and SQLite, receive the same studies;
one analyses them one by one, the other in one batch, and their results are compared element by
element.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.config import ConfigError, Settings, load_settings
from dicomnode.model import PneumoniaModel
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study
from tests.tiny_model import tiny_card, write_tiny_model
from worker.batch import analyse_studies
from worker.pipeline import Pipeline
from worker.runners import InProcessRunner


def _settings(root: Path, **overrides: object) -> Settings:
    # decode_memory_bytes=0: decoded in this process, the fast tier starts none
    settings = Settings(storage_dir=root / "node", model=root / "tiny.onnx", decode_memory_bytes=0)
    write_tiny_model(settings.model_path, tiny_card(threshold=0.5))
    return settings.with_overrides(**overrides) if overrides else settings


def _pipeline(root: Path) -> Pipeline:
    settings = _settings(root)
    return Pipeline(settings, Store(settings.effective_database_url), PneumoniaModel(settings.model_path))


def _studies() -> list[list[pydicom.Dataset]]:
    """Four studies: one image, two images (the best one scored), a knee (not applicable), one image."""
    rng = np.random.default_rng(21)
    one = [make_phantom(rng, True, size=128)]
    two = [make_phantom(rng, False, size=128)]
    two.append(make_phantom(rng, True, size=128, study_uid=str(two[0].StudyInstanceUID), view="AP"))
    knee = [make_phantom(rng, True, size=128)]
    knee[0].BodyPartExamined = "KNEE"
    return [one, two, knee, [make_phantom(rng, False, size=128)]]


def _content(path: Path) -> dict[str, object]:
    """The object as JSON, its dates and times blanked: they say when it was written, not what."""
    ds = pydicom.dcmread(path)

    def blank(d: pydicom.Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR in ("DA", "TM", "DT"):
            elem.value = ""

    ds.walk(blank)
    return ds.to_json_dict()


def test_a_batch_gives_each_study_the_results_it_gets_alone(tmp_path: Path) -> None:
    alone, together = _pipeline(tmp_path / "alone"), _pipeline(tmp_path / "together")
    studies = _studies()
    uids = [store_complete_study(alone, *s) for s in studies]
    assert [store_complete_study(together, *s) for s in studies] == uids

    single = [alone.analyse_study(uid) for uid in uids]
    batched = analyse_studies(together, [(uid, None) for uid in uids])

    assert [o.study_uid for o in batched] == uids
    assert [o.state for o in batched] == [o.state for o in single]
    assert batched[2].state == StudyState.NOT_APPLICABLE and batched[2].reason == single[2].reason
    for a, b in zip(single, batched, strict=True):
        assert (a.score is None) == (b.score is None) and a.priority == b.priority
        if a.score is not None:
            assert b.score == pytest.approx(a.score, abs=1e-6)
        # the same SR and SC: same UIDs, same content, same heatmap pixels
        assert [p.name for p in a.result_paths] == [p.name for p in b.result_paths]
        for pa, pb in zip(a.result_paths, b.result_paths, strict=True):
            assert _content(pa) == _content(pb), pa.name
    for uid in uids:
        ra, rb = latest_analysis(alone.store, uid), latest_analysis(together.store, uid)
        assert ra is not None and rb is not None
        assert (rb.model_version, rb.instances_analysed, rb.priority) == (
            ra.model_version,
            ra.instances_analysed,
            ra.priority,
        )
        assert study_state(together.store, uid) == study_state(alone.store, uid)


def test_a_study_that_fails_in_a_batch_fails_alone(tmp_path: Path) -> None:
    p = _pipeline(tmp_path)
    uids = [store_complete_study(p, *s) for s in _studies()]
    # a file where the second study's results folder goes: writing its results fails
    p.settings.results_dir.mkdir(parents=True, exist_ok=True)
    (p.settings.results_dir / uids[1]).write_bytes(b"")

    outcomes = analyse_studies(p, [(uid, None) for uid in uids])

    # no destination configured: analysed is as far as a study goes
    assert [o.state for o in outcomes] == [
        StudyState.ANALYSED,
        StudyState.FAILED,
        StudyState.NOT_APPLICABLE,
        StudyState.ANALYSED,
    ]
    assert outcomes[1].reason is not None and "re-send the study" in outcomes[1].reason
    assert study_state(p.store, uids[1]) == StudyState.FAILED
    analysis = latest_analysis(p.store, uids[1])
    assert analysis is not None and analysis.error == outcomes[1].reason
    assert outcomes[0].score is not None and outcomes[3].score is not None
    assert analyse_studies(p, [(uids[0], None)])[0].skipped  # done with this model: not again


def test_the_embedded_runner_analyses_the_studies_waiting_in_one_batch(tmp_path: Path) -> None:
    settings = _settings(tmp_path, batch_max_studies=3, batch_wait_ms=5000)
    store = Store(settings.effective_database_url)
    runner = InProcessRunner(settings, store)
    receiver = Pipeline(settings, store, PneumoniaModel(settings.model_path))  # to store the studies
    uids = [store_complete_study(receiver, *s) for s in _studies() if s[0].BodyPartExamined != "KNEE"]
    try:
        now = datetime.now(UTC)
        for uid in uids:
            runner.submit(uid, now)
        results = [f.result(timeout=60) for f in list(runner.futures)]
    finally:
        runner.shutdown(wait=True)
        receiver.close()

    # the first call waited for the third study and took all three; the others found none left
    assert isinstance(results[0], list) and [o.study_uid for o in results[0]] == uids
    assert results[1:] == [None, None]
    for uid in uids:
        analysis = latest_analysis(store, uid)
        assert analysis is not None and analysis.score is not None and analysis.execution == "inprocess"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DICOMNODE_BATCH_MAX_STUDIES": "0"}, "DICOMNODE_BATCH_MAX_STUDIES=0"),
        ({"DICOMNODE_BATCH_WAIT_MS": "-5"}, "DICOMNODE_BATCH_WAIT_MS=-5"),
        ({"DICOMNODE_INT8_MAX_AUROC_DROP": "nan"}, "DICOMNODE_INT8_MAX_AUROC_DROP=nan"),
    ],
)
def test_a_bad_batch_or_int8_setting_is_refused_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings(env=env)
