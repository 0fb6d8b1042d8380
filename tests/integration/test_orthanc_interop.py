"""Interoperability with a real PACS: Orthanc pushes a study to the node, the results land in Orthanc.

Orthanc is the DICOM peer on both sides of the node here: it is the SCU that sends the chest X-ray
(``/modalities/node/store``) and the SCP the node delivers its SR and heatmap SC to. Orthanc files
instances by patient and study, so the results only join the source study when the node copied the
patient and study identity correctly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage

from dicomnode.config import Destination, Settings
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Study, StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import need_tool
from tests.integration.orthanc import Orthanc, free_port
from tests.support import wait_until


def test_orthanc_pushes_a_study_and_receives_sr_and_sc_into_the_same_study(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    node_factory: Callable[[Settings], Node],
) -> None:
    binary = need_tool("Orthanc")
    orthanc_dicom_port = free_port()  # chosen up front: the node delivers there
    node = node_factory(
        make_settings(destinations=(Destination("ORTHANC", "127.0.0.1", orthanc_dicom_port),))
    )
    study = write_phantom_studies(tmp_path / "in", 1, seed=11, positive_fraction=1.0)[0]
    source = pydicom.dcmread(study.paths[0])

    orthanc = Orthanc(
        binary,
        tmp_path / "orthanc",
        dicom_port=orthanc_dicom_port,
        modalities={"node": ("DICOMNODE", "127.0.0.1", node.port)},
    )
    try:
        orthanc.start()
        uploaded = orthanc.upload(study.paths[0])
        assert uploaded["Status"] == "Success", uploaded
        study_id = orthanc.study_id(study.study_uid)
        assert study_id == uploaded["ParentStudy"]

        # Orthanc, as the modality/PACS, pushes the study to the node over DICOM
        job = orthanc.post("/modalities/node/store", {"Resources": [study_id], "Synchronous": True})
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == 1, job

        def three_instances() -> bool:
            return len(orthanc.get(f"/studies/{study_id}/instances")) >= 3

        wait_until(three_instances, 90, f"SR + SC in Orthanc's study (log: {orthanc.log_tail(800)})")
        time.sleep(1.0)  # a duplicate or a stray study would show up now
        tags = orthanc.study_instances(study_id)
        # the results joined the source study: no second study or patient was created
        assert orthanc.get("/studies") == [study_id]
        assert len(orthanc.get("/patients")) == 1
        stats = orthanc.get("/statistics")
        assert stats["CountInstances"] == 3, stats
    finally:
        orthanc.stop()

    assert len(tags) == 3, [t.get("SOPClassUID") for t in tags]
    by_class = {t["SOPClassUID"]: t for t in tags}
    assert str(source.SOPClassUID) in by_class
    sr_classes = {str(Comprehensive3DSRStorage), str(EnhancedSRStorage)}  # Enhanced: the fallback
    srs = [t for t in tags if t["SOPClassUID"] in sr_classes]
    scs = [t for t in tags if t["SOPClassUID"] == str(SecondaryCaptureImageStorage)]
    assert len(srs) == 1 and len(scs) == 1, [t["SOPClassUID"] for t in tags]
    sr, sc = srs[0], scs[0]

    for t in (sr, sc):
        assert t["StudyInstanceUID"] == source.StudyInstanceUID
        assert t["PatientID"] == source.PatientID
        assert t["AccessionNumber"] == source.get("AccessionNumber", "")
    series = {source.SeriesInstanceUID, sr["SeriesInstanceUID"], sc["SeriesInstanceUID"]}
    assert len(series) == 3, "SR and SC must each be a new series"
    assert sr["Modality"] == "SR"
    # the node's own result file says what the SC's Modality is; Orthanc must hold the same
    result_sc = pydicom.dcmread(node.settings.results_dir / study.study_uid / f"{sc['SOPInstanceUID']}.dcm")
    assert sc["Modality"] == result_sc.Modality == "OT"

    # the node's record: the study came from Orthanc's AE and its results were delivered there
    store = Store(node.settings.effective_database_url, run_migrations=False)
    try:
        wait_until(lambda: study_state(store, study.study_uid) is StudyState.DELIVERED, 30, "DELIVERED state")
        with store.session() as s:
            row = s.query(Study).filter_by(study_uid=study.study_uid).one()
            assert row.calling_ae == "ORTHANC"
        a = latest_analysis(store, study.study_uid)
        assert a is not None
        assert {a.sr_sop_instance_uid, a.sc_sop_instance_uid} == {sr["SOPInstanceUID"], sc["SOPInstanceUID"]}
    finally:
        store.dispose()
