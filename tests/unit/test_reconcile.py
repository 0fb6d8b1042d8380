"""The reconciler's store side: leases taken exactly once, the analysis attempt counter, overdue
delivery rounds, and a pass of :class:`dicomnode.receive.reconcile.Reconciler` against a real
SQLite store (no servers)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.receive.reconcile import Reconciler
from dicomnode.receive.tracker import StudyTracker
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState, utcnow
from dicomnode.store.queries import stranded_studies, study_state
from dicomnode.store.records import (
    AnalysisAttemptsExhausted,
    InstanceRecord,
    claim_study,
    record_instance,
    set_delivery_due,
    set_study_state,
    stamp_claimed,
    start_analysis,
    update_analysis,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    yield s
    s.dispose()


def _study(store: Store, tmp_path: Path) -> str:
    uid = generate_uid()
    record_instance(
        store,
        InstanceRecord(
            study_uid=uid, series_uid=generate_uid(), sop_instance_uid=generate_uid(),
            sop_class_uid=str(SecondaryCaptureImageStorage), transfer_syntax_uid=str(ExplicitVRLittleEndian),
            modality="CR", path=str(tmp_path / "x.dcm"), size_bytes=0, sha256=None, calling_ae="MOD",
        ),
    )  # fmt: skip
    return uid


def _start(store: Store, uid: str, max_attempts: int = 3) -> int:
    return start_analysis(
        store, uid, model_name="m", model_version="1", queued_at=None, execution="inprocess",
        max_attempts=max_attempts,
    )  # fmt: skip


def _attempts(store: Store, uid: str) -> int:
    with store.session() as s:
        return int(s.scalar(select(Study.analysis_attempts).where(Study.study_uid == uid)) or 0)


def test_a_study_started_n_times_without_finishing_is_failed_with_the_reason(
    store: Store, tmp_path: Path
) -> None:
    uid = _study(store, tmp_path)
    for n in (1, 2, 3):  # three workers killed inside the analysis
        _start(store, uid)
        assert _attempts(store, uid) == n and study_state(store, uid) is StudyState.ANALYSING
    with pytest.raises(AnalysisAttemptsExhausted, match="started 3 times without finishing"):
        _start(store, uid)
    assert study_state(store, uid) is StudyState.FAILED
    with store.session() as s:
        reason = s.scalar(select(Study.state_reason).where(Study.study_uid == uid))
    assert reason and reason.startswith("analysis started 3 times without finishing (worker killed?)")


def test_a_finished_analysis_resets_the_attempt_counter(store: Store, tmp_path: Path) -> None:
    uid = _study(store, tmp_path)
    _start(store, uid)
    aid = _start(store, uid)
    update_analysis(store, aid, finished_at=utcnow())
    assert _attempts(store, uid) == 0
    for _ in range(3):  # a new model version later: three more starts allowed
        _start(store, uid)


def test_an_operators_reanalysis_gives_a_study_that_used_up_its_attempts_a_fresh_start(
    store: Store, tmp_path: Path
) -> None:
    from dicomnode.store.records import request_reanalysis

    uid = _study(store, tmp_path)
    for _ in range(3):
        _start(store, uid)
    with pytest.raises(AnalysisAttemptsExhausted):
        _start(store, uid)
    assert request_reanalysis(store, uid) == (True, StudyState.FAILED)
    assert _attempts(store, uid) == 0 and study_state(store, uid) is StudyState.COMPLETE
    _start(store, uid)  # not failed again at once
    assert study_state(store, uid) is StudyState.ANALYSING


def test_the_lease_goes_to_exactly_one_of_many_racing_claimers(store: Store, tmp_path: Path) -> None:
    uid = _study(store, tmp_path)
    set_study_state(store, uid, StudyState.COMPLETE)
    stamp_claimed(store, uid)
    later = utcnow() + timedelta(seconds=1)
    [st] = stranded_studies(store, (StudyState.COMPLETE,), stale_before=later)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        wins.append(
            claim_study(store, uid, (StudyState.COMPLETE,), stale_before=later, seen_claimed_at=st.claimed_at)
        )

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


def test_a_reconciler_pass_hands_on_what_was_stranded_once(store: Store, tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path, reconcile_after_seconds=60.0, task_time_limit=60.0)
    lost_receiving, stuck_complete, stuck_analysing, lost_round = (_study(store, tmp_path) for _ in range(4))
    set_study_state(store, stuck_complete, StudyState.COMPLETE)
    stamp_claimed(store, stuck_complete)
    _start(store, stuck_analysing)
    aid = _start(store, lost_round, max_attempts=0)
    update_analysis(store, aid, finished_at=utcnow())
    set_study_state(store, lost_round, StudyState.ANALYSED, "delivery retry scheduled in 4 s")
    set_delivery_due(store, lost_round, utcnow())
    dispatched: list[str] = []
    delivered: list[tuple[str, int]] = []
    tracker = StudyTracker(3600, lambda uid: None)
    now = [utcnow() + timedelta(seconds=120)]  # two periods on: everything above is stranded
    r = Reconciler(
        settings, store, pending=tracker.pending, rearm=tracker.touch, dispatch=dispatched.append,
        deliver_now=lambda u, a: delivered.append((u, a)), clock=lambda: now[0],
    )  # fmt: skip
    report = r.run_once()
    assert report.rearmed == [lost_receiving] and tracker.pending() == [lost_receiving]
    assert sorted(dispatched) == sorted([stuck_complete, stuck_analysing])
    assert study_state(store, stuck_analysing) is StudyState.COMPLETE
    assert delivered == [(lost_round, aid)]
    # a second pass at the same moment finds every lease taken
    again = r.run_once()
    assert (again.redispatched, again.requeued, again.deliveries) == ([], [], [])
