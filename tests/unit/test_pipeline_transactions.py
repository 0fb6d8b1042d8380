"""How many SQL transactions and analysis-row writes one study costs the pipeline (SQLite, no
network): each is a commit, and on PostgreSQL a round trip, for every study a worker analyses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import event, select

from dicomnode.results.part10 import encode
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState, utcnow
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.store.records import end_analysis, end_round, start_analysis
from dicomnode.testing.phantoms import make_phantom
from tests.support import store_complete_study, store_received
from tests.unit.test_pipeline import pipeline  # noqa: F401  (the fixture)
from worker.pipeline import Pipeline


@contextmanager
def _counting(store: Store) -> Iterator[dict[str, int]]:
    """Commits, and UPDATE statements on the analyses table, while the block runs."""
    seen = {"commits": 0, "analysis_updates": 0}

    def commit(_conn: Any) -> None:
        seen["commits"] += 1

    def execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ANALYSES"):
            seen["analysis_updates"] += 1

    event.listen(store.engine, "commit", commit)
    event.listen(store.engine, "before_cursor_execute", execute)
    try:
        yield seen
    finally:
        event.remove(store.engine, "commit", commit)
        event.remove(store.engine, "before_cursor_execute", execute)


def test_a_not_applicable_study_records_its_analysis_and_state_in_one_transaction(pipeline: Pipeline) -> None:  # noqa: F811
    ds = make_phantom(np.random.default_rng(9), True, size=64)
    ds.BodyPartExamined = "KNEE"
    study_uid = store_complete_study(pipeline, ds)

    with _counting(pipeline.store) as seen:
        outcome = pipeline.analyse_study(study_uid)

    assert outcome.state is StudyState.NOT_APPLICABLE
    assert study_state(pipeline.store, study_uid) is StudyState.NOT_APPLICABLE
    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.error == outcome.reason
    assert analysis.preprocessed_at is not None and analysis.finished_at is not None
    assert analysis.selection is not None and [s["selected"] for s in analysis.selection] == [False]
    # the re-delivery check, the attempt, the instance list; then the row and the state together
    assert seen == {"commits": 4, "analysis_updates": 1}


def test_a_delivered_study_writes_its_finding_and_results_to_the_analysis_row_at_once(
    pipeline: Pipeline,  # noqa: F811
) -> None:
    study_uid = store_complete_study(pipeline, make_phantom(np.random.default_rng(7), True, size=64))

    with _counting(pipeline.store) as seen:
        outcome = pipeline.analyse_study(study_uid)

    analysis = latest_analysis(pipeline.store, study_uid)
    assert analysis is not None and analysis.score == outcome.score
    preprocessed, inferred, built = analysis.preprocessed_at, analysis.inferred_at, analysis.results_built_at
    assert preprocessed is not None and inferred is not None and built is not None
    assert preprocessed <= inferred <= built
    assert analysis.sr_sop_instance_uid and analysis.sc_sop_instance_uid
    # after selection, after the model with its results, and delivery's finished stamp
    assert seen["analysis_updates"] <= 3


def test_end_analysis_changes_the_row_and_the_study_together(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'node.db'}")
    ds = make_phantom(np.random.default_rng(1), True, size=64)
    store_received(store, tmp_path / "instances", ds, encode(ds))
    study_uid = str(ds.StudyInstanceUID)
    analysis_id = start_analysis(
        store, study_uid, model_name="m", model_version="1", queued_at=None, execution="inprocess"
    )
    with _counting(store) as seen:
        end_analysis(
            store, analysis_id, study_uid, StudyState.FAILED, "why", error="why", finished_at=utcnow()
        )
    assert seen["commits"] == 1
    assert study_state(store, study_uid) is StudyState.FAILED
    analysis = latest_analysis(store, study_uid)
    assert analysis is not None and analysis.error == "why"


def test_a_delivery_round_ends_with_stamps_state_and_due_time_in_one_transaction(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'node.db'}")
    ds = make_phantom(np.random.default_rng(2), True, size=64)
    study_uid = str(ds.StudyInstanceUID)
    store_received(store, tmp_path / "instances", ds, encode(ds))
    analysis_id = start_analysis(
        store, study_uid, model_name="m", model_version="1", queued_at=None, execution="inprocess"
    )
    due = utcnow()
    with _counting(store) as seen:
        end_round(
            store,
            analysis_id,
            study_uid,
            StudyState.ANALYSED,
            "retrying",
            stamps={"finished_at": due},
            only_from=(StudyState.ANALYSING,),
            due_at=due,
        )
    assert seen["commits"] == 1
    assert study_state(store, study_uid) is StudyState.ANALYSED
    with store.session() as s:
        study = s.execute(select(Study).where(Study.study_uid == study_uid)).scalar_one()
        assert study.state_reason == "retrying" and study.delivery_due_at is not None
    analysis = latest_analysis(store, study_uid)
    assert analysis is not None and analysis.finished_at is not None
    # a study no longer in one of ``only_from`` keeps its state; its due time still follows
    end_round(
        store,
        analysis_id,
        study_uid,
        StudyState.DELIVERED,
        None,
        stamps={},
        only_from=(StudyState.FAILED,),
        due_at=None,
    )
    assert study_state(store, study_uid) is StudyState.ANALYSED
    with store.session() as s:
        assert (
            s.execute(select(Study.delivery_due_at).where(Study.study_uid == study_uid)).scalar_one() is None
        )
