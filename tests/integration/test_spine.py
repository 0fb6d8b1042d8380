"""The spine, end to end over real DICOM: modality -> node -> (in-process | Celery) -> PACS -> SQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage
from sqlalchemy import select

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.results import read_sr
from dicomnode.store.db import Store
from dicomnode.store.models import DeliveryAttempt, StudyState
from dicomnode.store.queries import as_utc, latest_analysis, study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import CeleryWorker


def _wait_state(store: Store, uid: str, states: set[StudyState], timeout: float) -> StudyState | None:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = study_state(store, uid)
        if st in states:
            return st
        time.sleep(0.1)
    return st


@pytest.mark.parametrize("mode", ["inprocess", "celery"])
def test_study_round_trip_delivers_sr_and_sc_and_records_analysis(
    mode: str,
    pg_url: str,  # first: its database is dropped only after the node and workers stop
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
    celery_worker_factory: Callable[[Settings], CeleryWorker],
    celery_queue: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    worker = None
    if mode == "celery":
        from tests.conftest import REDIS_URL

        settings = make_settings(broker_url=REDIS_URL, queue=celery_queue, database_url=pg_url)
        # the worker process shares storage and database with the node, as on a real deployment
        from dicomnode.store.db import migrate

        migrate(settings.effective_database_url)
        worker = celery_worker_factory(settings)
    else:
        settings = make_settings()
    node = node_factory(settings)
    study = write_phantom_studies(tmp_path / "in", 1, seed=7, positive_fraction=1.0)[0]
    source = pydicom.dcmread(study.paths[0])

    results = push_files(study.paths, "127.0.0.1", node.port, called_ae="DICOMNODE", calling_ae="MODALITY")
    assert [r.status for r in results] == [0x0000] * len(study.paths)

    got = pacs.wait_for(2, timeout=90)
    assert len(got) == 2, f"PACS received {len(got)} objects"
    classes = sorted(r.sop_class_uid for r in got)
    assert classes == sorted([str(Comprehensive3DSRStorage), str(SecondaryCaptureImageStorage)])
    for r in got:
        assert r.study_uid == study.study_uid == source.StudyInstanceUID
        assert r.calling_ae == "DICOMNODE"
    sr_rec = next(r for r in got if r.sop_class_uid == str(Comprehensive3DSRStorage))
    sc_rec = next(r for r in got if r.sop_class_uid == str(SecondaryCaptureImageStorage))

    # the SR parses back with highdicom and holds the finding and the probability
    sr_ds = pydicom.dcmread(sr_rec.path)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.SeriesInstanceUID != source.SeriesInstanceUID
    summary = read_sr(sr_ds)
    assert 0.0 <= summary.probability <= 1.0
    sc = pydicom.dcmread(sc_rec.path)
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, sr_ds.SeriesInstanceUID)
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[-1] == 3

    # SQL holds score, model version and per-stage timestamps in order
    store = Store(settings.effective_database_url, run_migrations=False)
    try:
        assert _wait_state(store, study.study_uid, {StudyState.DELIVERED}, 30) is StudyState.DELIVERED
        a = latest_analysis(store, study.study_uid)
        assert a is not None
        assert a.score == pytest.approx(summary.probability, abs=1e-6)
        assert a.model_version == summary.model_version and a.model_version
        assert a.priority == summary.priority.value
        assert a.sr_sop_instance_uid == sr_ds.SOPInstanceUID
        stamps = [
            as_utc(x)
            for x in (
                a.queued_at,
                a.started_at,
                a.preprocessed_at,
                a.inferred_at,
                a.results_built_at,
                a.finished_at,  # the analysis; delivery is its own step after it
                a.delivered_at,
            )
        ]
        assert all(s is not None for s in stamps), stamps
        assert stamps == sorted(stamps)  # type: ignore[type-var]
        assert a.execution.startswith("celery:" if mode == "celery" else "inprocess")
        with store.session() as sess:
            attempts = sess.scalars(select(DeliveryAttempt).where(DeliveryAttempt.analysis_id == a.id)).all()
        assert {(x.sop_instance_uid, x.success, x.status) for x in attempts} == {
            (sr_rec.sop_instance_uid, True, 0),
            (sc_rec.sop_instance_uid, True, 0),
        }
    finally:
        store.dispose()

    # patient name and ID never reach the logs (node, pipeline, worker process)
    out, err = capfd.readouterr()
    logs = out + err + (worker.log_path.read_text() if worker else "")
    assert "study.analysed" in logs  # the logs were captured at all
    for secret in (study.patient_name, study.patient_id, str(source.PatientName), str(source.PatientID)):
        assert secret and secret not in logs, f"patient data {secret!r} found in logs"


def test_positive_phantoms_score_above_negative_ones(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    node = node_factory(make_settings())
    studies = write_phantom_studies(tmp_path / "in", 6, seed=99, positive_fraction=0.5)
    for st in studies:
        assert all(r.status == 0 for r in push_files(st.paths, "127.0.0.1", node.port))
    got = pacs.wait_for(12, timeout=120)
    scores = {}
    for r in got:
        if r.sop_class_uid == str(Comprehensive3DSRStorage):
            scores[r.study_uid] = read_sr(r.path).probability
    assert len(scores) == 6
    pos = [scores[s.study_uid] for s in studies if s.positive]
    neg = [scores[s.study_uid] for s in studies if not s.positive]
    assert pos and neg
    assert np.mean(pos) > np.mean(neg)
    assert min(pos) > max(neg), (pos, neg)
