"""Versions you can trace (issue 18.2), against a real Orthanc as the PACS.

One study lives through an upgrade and a rollback: model A analyses it, B (the upgrade) analyses it
again when a new image arrives, A (the rollback) once more. Then:

- both versions' series stand in Orthanc side by side, each Series Description naming its version;
- ``audit --model-version`` finds the study under either version, though A made the latest
  analysis (it used to look only at the latest, so B's analyses vanished from the audit);
- ``retract --model-version B`` sends Orthanc an IOCM rejection note (KOS, "Rejected for Patient
  Safety Reasons", (113037, DCM)) referencing exactly B's SR and SC; Orthanc, which does not
  implement IOCM, stores the note in the study and keeps the rejected objects; ``audit events``
  shows the retraction.
"""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.ops.audit import AuditFilter, events, studies
from dicomnode.store.db import Store
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.integration.orthanc import Orthanc, default_orthanc, delivering_to
from tests.support import analyses_of, run_cli, wait_until, write_settings_toml
from tests.tiny_model import tiny_card, write_tiny_model
from tests.unit.test_model_versions import check_audit_by_version

A = "1.0.0+aaaa1111"
B = "1.1.0+bbbb2222"


def _model(path: Path, version: str, weight: float) -> Path:
    card = replace(tiny_card(), version=version, device_uid=generate_uid(entropy_srcs=["tiny", version]))
    return write_tiny_model(path, card, weight=weight)


def _new_image(template: Path, out: Path, n: int) -> Path:
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = n
    ds.save_as(out, enforce_file_format=True)
    return out


def test_upgrade_rollback_audit_and_retraction_at_orthanc(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    orthanc = default_orthanc(tmp_path / "orthanc")
    base = delivering_to(orthanc, tmp_path / "node")
    model_a = _model(tmp_path / "a.onnx", A, 4.0)
    model_b = _model(tmp_path / "b.onnx", B, 6.0)
    study = write_phantom_studies(tmp_path / "in", 1, seed=31, positive_fraction=1.0, size=256)[0]
    orthanc.start()
    store = Store(base.effective_database_url)
    try:
        images = [study.paths[0]] + [_new_image(study.paths[0], tmp_path / f"img{n}.dcm", n) for n in (2, 3)]
        versions_run = []
        for image, model, version in zip(images, (model_a, model_b, model_a), (A, B, A), strict=True):
            node = node_factory(base.with_overrides(model=model))  # install, upgrade, roll back
            assert [r.status for r in push_files([image], "127.0.0.1", node.port)] == [0]

            def delivered_by(v: str = version) -> bool:
                a = latest_analysis(store, study.study_uid)
                return (
                    a is not None
                    and a.model_version == v
                    and study_state(store, study.study_uid) is StudyState.DELIVERED
                )

            wait_until(delivered_by, 60, f"analysis by {version} delivered")
            versions_run.append(version)
            node.stop()
        sr_b = {a.model_version: a for a in analyses_of(store, study.study_uid)}[B]

        # Orthanc holds both versions' series, each naming its version
        orthanc_study = orthanc.study_id(study.study_uid)
        tags = orthanc.study_instances(orthanc_study)
        described = {t["SeriesInstanceUID"]: t.get("SeriesDescription", "") for t in tags}
        assert sum(B in d for d in described.values()) == 2, described  # its SR and its SC
        assert sum(A in d for d in described.values()) >= 2, described  # (two revisions: four)

        # audit finds the study under both versions, the row showing that version's analysis
        for version in (A, B):
            rows = studies(store, AuditFilter(model_version=version))
            assert [r.study_uid for r in rows] == [study.study_uid], version
            assert rows[0].model_version == version
        config = write_settings_toml(tmp_path / "node.toml", base)
        code, out = run_cli("--config", str(config), "audit", "--model-version", B, "--format", "json")
        assert code == 0 and study.study_uid in out and B in out, out

        # retract B: an IOCM rejection note for B's SR and SC, stored by Orthanc
        code, out = run_cli("--config", str(config), "retract", "--model-version", B)
        assert code == 0, out
        assert "rejected 2 objects" in out, out
        kos = [
            i
            for i in orthanc.get(f"/studies/{orthanc_study}/instances")
            if orthanc.get(f"/instances/{i['ID']}/simplified-tags")["SOPClassUID"]
            == str(KeyObjectSelectionDocumentStorage)
        ]
        assert len(kos) == 1, kos
        note = pydicom.dcmread(io.BytesIO(_file(orthanc, f"/instances/{kos[0]['ID']}/file")))
        retracted = events(store, AuditFilter(study_uid=study.study_uid), kind="results.retracted")
        code_x, out_x = run_cli("--config", str(config), "retract", "--model-version", "9.9.9+nope0000")
        code_events, out_events = run_cli(
            "--config", str(config), "audit", "events", "--kind", "results.retracted", "--format", "json"
        )
        instances_after = len(orthanc.get(f"/studies/{orthanc_study}/instances"))
        made = {
            u
            for a in analyses_of(store, study.study_uid)
            for u in (a.sr_sop_instance_uid, a.sc_sop_instance_uid)
        }
    finally:
        orthanc.stop()
        store.dispose()

    assert versions_run == [A, B, A]
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113037", "DCM")
    assert title.CodeMeaning == "Rejected for Patient Safety Reasons"
    referenced = {
        item.ReferencedSOPInstanceUID
        for study_item in note.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {sr_b.sr_sop_instance_uid, sr_b.sc_sop_instance_uid}
    assert note.StudyInstanceUID == study.study_uid and B in note.SeriesDescription
    # Orthanc does not implement IOCM: the rejected SR and SC stay, the note is stored beside them
    # (the images went to the node only: every SR and SC the node made, and the note)
    assert instances_after == len(made) + 1
    assert len(retracted) == 1 and retracted[0].detail is not None
    detail = retracted[0].detail
    assert detail["model_version"] == B and detail["destination"] == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    assert set(detail["rejected"]) == referenced and detail["status"] == 0
    assert code_events == 0 and json.loads(out_events) and "results.retracted" in out_events
    assert code_x == 2


def _file(orthanc: Orthanc, path: str) -> bytes:
    """A DICOM file from Orthanc's REST API (its helper speaks JSON)."""
    with urllib.request.urlopen(orthanc.base_url + path, timeout=60) as rsp:
        return bytes(rsp.read())


def test_audit_by_model_version_on_each_database(db_url: str) -> None:
    store = Store(db_url)
    try:
        check_audit_by_version(store)
    finally:
        store.dispose()
