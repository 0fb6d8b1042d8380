"""Storage Commitment Push Model to a real Orthanc (issue 14.8).

A C-STORE Success says a PACS received a result, not that it took responsibility for it. With
``storage_commitment`` on, the node asks the destination to commit (N-ACTION), Orthanc answers
with an N-EVENT-REPORT on a new association to the node's listener (it must know our AE title in
``DicomModalities``), and the node records per object ``delivered`` (delivery_attempts) and
``committed`` (commitments). A failed commitment (object not in Orthanc) or none in time (Orthanc
cannot reach us) is recorded and the delivery is retried.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, build_role
from sqlalchemy import select

from dicomnode.cli import main as dicomnode_main
from dicomnode.config import Destination, Settings
from dicomnode.delivery.commitment import request_and_record
from dicomnode.delivery.push import push_files
from dicomnode.net import Listener, ListenerConfig, status
from dicomnode.net.commitment_report import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReport,
)
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Commitment, DeliveryAttempt, Event, StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import need_tool
from tests.integration.orthanc import Orthanc, free_port
from tests.support import wait_until, write_settings_toml
from tests.tiny_model import write_tiny_model


def _settings(tmp_path: Path, node_port: int, orthanc_port: int, **over: object) -> Settings:
    base: dict[str, object] = dict(
        ae_title="DICOMNODE",
        host="127.0.0.1",
        port=node_port,
        storage_dir=tmp_path / "node",
        destinations=(Destination("ORTHANC", "127.0.0.1", orthanc_port),),
        quiet_seconds=0.5,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
        delivery_backoff_seconds=0.2,
        delivery_backoff_max_seconds=1.0,
        storage_commitment=True,
        reconcile_interval_seconds=0.5,
        reconcile_after_seconds=0.5,
    )
    base.update(over)
    return Settings(**base)  # type: ignore[arg-type]


def _rows(store: Store) -> list[Commitment]:
    with store.session() as s:
        rows = list(s.scalars(select(Commitment).order_by(Commitment.id)))
        s.expunge_all()
    return rows


def _events(store: Store, study_uid: str, kind: str) -> int:
    with store.session() as s:
        return len(s.scalars(select(Event.id).where(Event.study_uid == study_uid, Event.kind == kind)).all())


def _audit(config: Path, study_uid: str) -> list[dict[str, object]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = dicomnode_main(
            ["--config", str(config), "audit", "commitments", "--study", study_uid, "--format", "json"]
        )
    assert code == 0, out.getvalue()
    rows: list[dict[str, object]] = json.loads(out.getvalue())
    return rows


def test_orthanc_commits_the_results_and_a_missing_object_fails_and_is_retried(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    binary = need_tool("Orthanc")
    node_port, orthanc_port = free_port(), free_port()
    settings = _settings(tmp_path, node_port, orthanc_port)
    study = write_phantom_studies(tmp_path / "in", 1, seed=3, positive_fraction=0.0, size=256)[0]
    orthanc = Orthanc(
        binary,
        tmp_path / "orthanc",
        dicom_port=orthanc_port,
        modalities={"node": ("DICOMNODE", "127.0.0.1", node_port)},
    )
    orthanc.start()
    store = Store(settings.effective_database_url)
    try:
        node_factory(settings)
        assert [r.status for r in push_files(study.paths, "127.0.0.1", node_port)] == [0] * len(study.paths)

        def committed() -> bool:
            rows = _rows(store)
            return len(rows) == 2 and all(r.committed_at is not None for r in rows)

        # Orthanc's report can arrive before the delivery round that asked for it has stamped the
        # study DELIVERED, so wait for both
        wait_until(committed, 60, "both results committed by Orthanc")
        wait_until(
            lambda: study_state(store, study.study_uid) is StudyState.DELIVERED, 30, "study DELIVERED"
        )
        a = latest_analysis(store, study.study_uid)
        assert a is not None
        assert {r.sop_instance_uid for r in _rows(store)} == {a.sr_sop_instance_uid, a.sc_sop_instance_uid}
        config = write_settings_toml(tmp_path / "node.toml", settings)
        audit = _audit(config, study.study_uid)
        assert {(r["sop_instance_uid"], r["delivered"], r["committed"]) for r in audit} == {
            (a.sr_sop_instance_uid, True, True),
            (a.sc_sop_instance_uid, True, True),
        }

        # negative: an object Orthanc does not have -> its report lists it failed (0x0112) and
        # the study's delivery is due again; the round finds the results committed and ends DELIVERED
        ghost = Dataset()
        ghost.SOPClassUID = SecondaryCaptureImageStorage
        ghost.SOPInstanceUID = generate_uid()
        req = request_and_record(store, a.id, [ghost], settings.destinations[0], calling_ae="DICOMNODE")
        assert req.transaction_uid is not None, req.error

        def ghost_failed() -> bool:
            rows = [r for r in _rows(store) if r.sop_instance_uid == str(ghost.SOPInstanceUID)]
            return bool(rows) and rows[0].failed_reason is not None

        wait_until(ghost_failed, 30, "Orthanc's report of the missing object")
        (row,) = [r for r in _rows(store) if r.sop_instance_uid == str(ghost.SOPInstanceUID)]
        assert row.committed_at is None
        assert "0x0112" in str(row.failed_reason)
        audit = _audit(config, study.study_uid)
        assert any(
            r["sop_instance_uid"] == str(ghost.SOPInstanceUID)
            and r["delivered"] is False
            and r["committed"] is False
            for r in audit
        )
        # the failure made the study's delivery due again; the reconciler's round finds every
        # result committed and the study is DELIVERED again, with the failure in its timeline
        wait_until(
            lambda: _events(store, study.study_uid, "commitment.failed") == 1, 10, "commitment.failed event"
        )
        wait_until(
            lambda: study_state(store, study.study_uid) is StudyState.DELIVERED,
            30,
            "the retried round to finish",
        )
    finally:
        orthanc.stop()
        store.dispose()


def test_no_report_in_time_fails_the_commitment_and_the_delivery_is_retried(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    binary = need_tool("Orthanc")
    node_port, orthanc_port = free_port(), free_port()
    # Orthanc sends its reports to a port nobody listens on: they never reach the node
    settings = _settings(tmp_path, node_port, orthanc_port, storage_commitment_timeout_seconds=2.0)
    study = write_phantom_studies(tmp_path / "in", 1, seed=4, positive_fraction=0.0, size=256)[0]
    orthanc = Orthanc(
        binary,
        tmp_path / "orthanc",
        dicom_port=orthanc_port,
        modalities={"node": ("DICOMNODE", "127.0.0.1", free_port())},
    )
    orthanc.start()
    store = Store(settings.effective_database_url)
    try:
        node_factory(settings)
        assert [r.status for r in push_files(study.paths, "127.0.0.1", node_port)] == [0] * len(study.paths)

        def retried() -> bool:
            rows = _rows(store)
            timed_out = [r for r in rows if r.failed_reason == "no storage commitment report in time"]
            return len(timed_out) >= 2 and len({r.transaction_uid for r in rows}) >= 2

        wait_until(retried, 90, "a timed-out commitment, then the delivery and commitment retried")
        assert not any(r.committed_at for r in _rows(store))
        a = latest_analysis(store, study.study_uid)
        assert a is not None
        with store.session() as s:  # the results were C-STOREd again, not only re-requested
            stored = s.scalars(
                select(DeliveryAttempt.sop_instance_uid).where(
                    DeliveryAttempt.analysis_id == a.id, DeliveryAttempt.success.is_(True)
                )
            ).all()
        assert stored.count(a.sr_sop_instance_uid) >= 2 and stored.count(a.sc_sop_instance_uid) >= 2
        assert _events(store, study.study_uid, "commitment.failed") >= 1
    finally:
        orthanc.stop()
        store.dispose()


def _report_from_pacs(port: int, *, committed: list[str], failed: list[str], role_selection: bool) -> int:
    """What a commitment SCP sends: N-EVENT-REPORT on an association it requests, optionally as
    SCP by role selection (Orthanc does); the status the listener answered."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    ext = [build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)] if role_selection else []
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", ext_neg=ext)
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = generate_uid()
    info.ReferencedSOPSequence = []
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = SecondaryCaptureImageStorage
        item.ReferencedSOPInstanceUID = uid
        info.ReferencedSOPSequence.append(item)
    if failed:
        info.FailedSOPSequence = []
        for uid in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = SecondaryCaptureImageStorage
            item.ReferencedSOPInstanceUID = uid
            item.FailureReason = 0x0112
            info.FailedSOPSequence.append(item)
    try:
        st, _ = assoc.send_n_event_report(
            info, 2 if failed else 1, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_INSTANCE
        )
        return int(st.Status)
    finally:
        assoc.release()


def test_listener_decodes_commitment_reports_and_answers_success(tmp_path: Path) -> None:
    reports: list[CommitmentReport] = []

    def on_commitment(report: CommitmentReport) -> int:
        reports.append(report)
        return status.SUCCESS

    listener = Listener(
        ListenerConfig(ae_title="DICOMNODE"),
        lambda req: 0,
        incoming_dir=tmp_path,
        on_commitment=on_commitment,
    )
    listener.start("127.0.0.1", 0)
    bare = Listener(ListenerConfig(ae_title="DICOMNODE"), lambda req: 0, incoming_dir=tmp_path)
    bare.start("127.0.0.1", 0)
    try:
        port = listener.server_address[1]
        assert _report_from_pacs(port, committed=["1.2.3.1", "1.2.3.2"], failed=[], role_selection=True) == 0
        assert _report_from_pacs(port, committed=["1.2.3.3"], failed=["1.2.3.4"], role_selection=False) == 0
        # a listener without a commitment callback (no requests of ours) refuses the operation
        assert _report_from_pacs(
            bare.server_address[1], committed=["1.2.3.5"], failed=[], role_selection=True
        ) == (status.UNRECOGNISED_OPERATION)
    finally:
        listener.shutdown()
        bare.shutdown()
    assert [(r.calling_ae, r.event_type, r.committed, r.failed) for r in reports] == [
        ("PACS", 1, ("1.2.3.1", "1.2.3.2"), ()),
        ("PACS", 2, ("1.2.3.3",), (("1.2.3.4", 0x0112),)),
    ]
