"""The delivery retry policy: the backoff, how the budget splits into inline and scheduled rounds,
and the state a study ends in. The rounds run against the real store (SQLite in tmp_path) and a
destination on a closed loopback port, so every attempt is a real refused connection."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select

from dicomnode.config import Destination, Settings
from dicomnode.delivery import (
    INLINE_ATTEMPTS,
    RetryPolicy,
    backoff_after,
    deliver_results,
    end_state,
    resend,
    result_file,
    retry_delivery,
)
from dicomnode.store.db import Store
from dicomnode.store.models import DELIVERY_RETRY_REASON, DeliveryAttempt, Study, StudyState
from dicomnode.store.queries import study_state
from dicomnode.store.records import InstanceRecord, record_instance, start_analysis, update_analysis

#: Small enough to keep the test fast (a refused association takes pynetdicom about 0.1 s), large
#: enough for the inline attempts and two scheduled rounds.
BUDGET = 4


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_after(n, 2.0, 60.0) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    policy = RetryPolicy(budget=8, backoff_seconds=2.0, backoff_max_seconds=60.0)
    assert [policy.wait_after(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]


def test_the_worker_makes_the_inline_attempts_and_each_scheduled_round_one_more() -> None:
    policy = RetryPolicy(budget=8, backoff_seconds=2.0, backoff_max_seconds=60.0)
    rounds: list[tuple[int, float | None]] = []
    first, continuing = 1, False
    while (n := policy.attempts_now(first, scheduled=True, continuing=continuing)) > 0:
        last = first + n - 1
        rounds.append((n, policy.next_round_in(last)))
        first, continuing = last + 1, True
    assert INLINE_ATTEMPTS == 2
    # attempts 1-2 in the worker, then one per round after the backoff of the attempt before it
    assert rounds == [(2, 4.0), (1, 8.0), (1, 16.0), (1, 32.0), (1, 60.0), (1, 60.0), (1, None)]


def test_without_a_scheduler_every_attempt_left_is_made_at_once() -> None:
    policy = RetryPolicy(budget=8, backoff_seconds=2.0, backoff_max_seconds=60.0)
    assert policy.attempts_now(1, scheduled=False, continuing=False) == 8
    assert policy.attempts_now(4, scheduled=False, continuing=True) == 5
    assert policy.attempts_now(9, scheduled=False, continuing=True) == 0
    assert policy.attempts_now(8, scheduled=True, continuing=False) == 1  # never past the budget


def test_end_state_after_a_round() -> None:
    assert end_state(has_destinations=True, all_delivered=True, round_scheduled=False) is StudyState.DELIVERED
    assert (
        end_state(has_destinations=True, all_delivered=False, round_scheduled=False)
        is StudyState.DELIVERY_FAILED
    )
    assert end_state(has_destinations=True, all_delivered=False, round_scheduled=True) is StudyState.ANALYSED
    assert end_state(has_destinations=False, all_delivered=True, round_scheduled=False) is StudyState.ANALYSED


# --- rounds against the real store and a refused connection ---


def _closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _result(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.Modality = "OT"
    return ds


class AnalysedStudy:
    """One received study with an analysis whose two result objects are on disk."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings, self.store = settings, store
        self.uid = generate_uid()
        record_instance(
            store,
            InstanceRecord(
                study_uid=self.uid,
                series_uid=generate_uid(),
                sop_instance_uid=generate_uid(),
                sop_class_uid=str(SecondaryCaptureImageStorage),
                transfer_syntax_uid=str(ExplicitVRLittleEndian),
                modality="CR",
                path=str(settings.storage_dir / "instance.dcm"),
                size_bytes=0,
                sha256=None,
                calling_ae="MODALITY",
            ),
        )
        self.analysis_id = start_analysis(
            store, self.uid, model_name="m", model_version="1", queued_at=None, execution="inprocess"
        )
        self.results = [_result(self.uid), _result(self.uid)]
        for ds in self.results:
            path = result_file(settings, self.uid, str(ds.SOPInstanceUID))
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        update_analysis(
            store,
            self.analysis_id,
            sr_sop_instance_uid=str(self.results[0].SOPInstanceUID),
            sc_sop_instance_uid=str(self.results[1].SOPInstanceUID),
        )

    def attempts(self) -> list[tuple[str, int]]:
        """(SOP Instance UID, attempt number) of every recorded attempt, all failed."""
        with self.store.session() as s:
            rows = list(s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)))
        assert not any(r.success for r in rows)
        return [(r.sop_instance_uid, r.attempt) for r in rows]

    def reason(self) -> str | None:
        with self.store.session() as s:
            return s.scalar(select(Study.state_reason).where(Study.study_uid == self.uid))


def _settings(tmp_path: Path, backoff: float) -> Settings:
    return Settings(
        storage_dir=tmp_path,
        destinations=(Destination("PACS", "127.0.0.1", _closed_port()),),
        delivery_attempts=BUDGET,
        delivery_backoff_seconds=backoff,
        delivery_backoff_max_seconds=4 * backoff,
    )


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the head revision, migrated once for the module."""
    path = tmp_path_factory.mktemp("db") / "migrated.sqlite3"
    Store(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_db: Path) -> Iterator[Store]:
    path = tmp_path / "db.sqlite3"
    shutil.copyfile(migrated_db, path)
    s = Store(f"sqlite:///{path}", run_migrations=False)
    yield s
    s.dispose()


def _per_object(study: AnalysedStudy, numbers: list[int]) -> list[tuple[str, int]]:
    return sorted((str(ds.SOPInstanceUID), n) for ds in study.results for n in numbers)


def test_without_a_scheduler_the_whole_budget_is_spent_at_once_and_the_study_fails(
    tmp_path: Path, store: Store
) -> None:
    settings = _settings(tmp_path, backoff=0.0)
    study = AnalysedStudy(settings, store)

    state = deliver_results(settings, store, study.uid, study.analysis_id, study.results)

    assert state is StudyState.DELIVERY_FAILED
    assert study_state(store, study.uid) is StudyState.DELIVERY_FAILED
    assert sorted(study.attempts()) == _per_object(study, list(range(1, BUDGET + 1)))
    assert study.reason() == (
        "retry budget exhausted (DICOMNODE_DELIVERY_WINDOW_SECONDS / DICOMNODE_DELIVERY_ATTEMPTS); "
        f"re-send with `dicomnode resend {study.uid}`"
    )


def test_with_a_scheduler_the_study_stays_analysed_until_its_last_round_fails(
    tmp_path: Path, store: Store
) -> None:
    settings = _settings(tmp_path, backoff=0.001)
    policy = RetryPolicy.from_settings(settings)
    study = AnalysedStudy(settings, store)
    scheduled: list[tuple[str, int, float]] = []

    def defer(study_uid: str, analysis_id: int, delay: float) -> None:
        scheduled.append((study_uid, analysis_id, delay))

    state = deliver_results(settings, store, study.uid, study.analysis_id, study.results, defer=defer)
    assert state is StudyState.ANALYSED
    assert sorted(study.attempts()) == _per_object(study, list(range(1, INLINE_ATTEMPTS + 1)))
    assert scheduled == [(study.uid, study.analysis_id, policy.wait_after(INLINE_ATTEMPTS))]
    reason = study.reason()
    assert reason is not None and reason.startswith(DELIVERY_RETRY_REASON)

    states = []
    for _ in range(BUDGET):  # what the scheduler does with each deferred round
        states.append(retry_delivery(settings, store, study.uid, study.analysis_id, defer))
        if states[-1] is not StudyState.ANALYSED:
            break
    # one attempt per scheduled round; the last one leaves the study failed and schedules nothing
    assert states == [StudyState.ANALYSED] * (BUDGET - INLINE_ATTEMPTS - 1) + [StudyState.DELIVERY_FAILED]
    assert sorted(study.attempts()) == _per_object(study, list(range(1, BUDGET + 1)))
    assert [d for _, _, d in scheduled] == [policy.wait_after(n) for n in range(INLINE_ATTEMPTS, BUDGET)]

    # a round that fires after the study failed makes no attempt
    assert retry_delivery(settings, store, study.uid, study.analysis_id, defer) is StudyState.DELIVERY_FAILED
    assert len(study.attempts()) == 2 * BUDGET


def test_resend_spends_a_fresh_budget(tmp_path: Path, store: Store) -> None:
    settings = _settings(tmp_path, backoff=0.0)
    study = AnalysedStudy(settings, store)
    deliver_results(settings, store, study.uid, study.analysis_id, study.results)

    assert resend(settings, store, study.uid) is StudyState.DELIVERY_FAILED
    numbers = list(range(1, BUDGET + 1))
    assert sorted(study.attempts()) == sorted(_per_object(study, numbers) * 2)


def test_a_round_for_a_replaced_analysis_does_nothing(tmp_path: Path, store: Store) -> None:
    settings = _settings(tmp_path, backoff=0.0)
    study = AnalysedStudy(settings, store)
    start_analysis(store, study.uid, model_name="m", model_version="2", queued_at=None, execution="inprocess")

    assert retry_delivery(settings, store, study.uid, study.analysis_id, None) is None
    assert study.attempts() == []
