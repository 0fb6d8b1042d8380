"""The recorder's batch write (``record_instances``) gives the rows the one-at-a-time path gives:
new studies, studies already receiving, duplicates and re-opened studies, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from dicomnode.store.db import Store
from dicomnode.store.models import Event, Instance, Study, StudyState
from dicomnode.store.queries import study_instances, study_state
from dicomnode.store.records import (
    InstanceOutcome,
    InstanceRecord,
    record_instance,
    record_instances,
    set_study_state,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.dispose()


def _rec(study: str, sop: str, path: str = "") -> InstanceRecord:
    return InstanceRecord(
        study_uid=study,
        series_uid=study + ".1",
        sop_instance_uid=sop,
        sop_class_uid=CR,
        transfer_syntax_uid=EXPLICIT_LE,
        modality="CR",
        path=path or f"/data/{sop}.dcm",
        size_bytes=1000,
        sha256=None,
        calling_ae="CR_ER1",
        accession_number="ACC" + study[-1],
    )


def _count(store: Store, study_uid: str) -> int:
    with store.session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        return study.instance_count


def test_batch_creates_new_studies_and_counts_their_instances(store: Store) -> None:
    batch = [_rec("1.2.9.1", f"1.2.9.1.{i}") for i in range(5)] + [_rec("1.2.9.2", "1.2.9.2.1")]
    outcomes = record_instances(store, batch)

    assert outcomes == [InstanceOutcome(duplicate=False, reopened=False)] * 6
    assert _count(store, "1.2.9.1") == 5 and _count(store, "1.2.9.2") == 1
    assert {i.sop_instance_uid for i in study_instances(store, "1.2.9.1")} == {f"1.2.9.1.{i}" for i in range(5)}
    assert study_state(store, "1.2.9.1") is StudyState.RECEIVING
    with store.session() as s:
        study = s.scalars(select(Study).where(Study.study_uid == "1.2.9.2")).one()
        assert (study.calling_ae, study.accession_number) == ("CR_ER1", "ACC2")


def test_batch_adds_to_a_receiving_study_and_handles_duplicates_and_reopens_one_by_one(
    store: Store,
) -> None:
    record_instance(store, _rec("1.2.9.1", "1.2.9.1.0"))
    record_instance(store, _rec("1.2.9.3", "1.2.9.3.0"))
    assert set_study_state(store, "1.2.9.3", StudyState.ANALYSED)  # handed on: a late instance re-opens it

    batch = [
        _rec("1.2.9.1", "1.2.9.1.1"),
        _rec("1.2.9.1", "1.2.9.1.0", path="/data/again.dcm"),  # sent again
        _rec("1.2.9.3", "1.2.9.3.1"),  # late instance of a study already analysed
        _rec("1.2.9.4", "1.2.9.4.0"),  # a new study in the same batch
    ]
    outcomes = record_instances(store, batch)

    assert outcomes[0] == InstanceOutcome(duplicate=False, reopened=False)
    assert outcomes[1] == InstanceOutcome(duplicate=True, reopened=False, previous_path="/data/1.2.9.1.0.dcm")
    assert outcomes[2] == InstanceOutcome(duplicate=False, reopened=True)
    assert outcomes[3] == InstanceOutcome(duplicate=False, reopened=False)
    assert _count(store, "1.2.9.1") == 2 and _count(store, "1.2.9.3") == 2 and _count(store, "1.2.9.4") == 1
    assert study_state(store, "1.2.9.3") is StudyState.RECEIVING
    with store.session() as s:
        again = s.scalars(select(Instance).where(Instance.sop_instance_uid == "1.2.9.1.0")).one()
        assert again.path == "/data/again.dcm"
        kinds = s.scalars(select(Event.kind).order_by(Event.id)).all()
        assert kinds.count("instance.duplicate") == 1 and kinds.count("study.reopened") == 1
        assert s.scalar(select(func.count()).select_from(Instance)) == 5
