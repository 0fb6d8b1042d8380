"""Result revisions against a PACS with default settings (issue 14.5).

Orthanc, like most PACS, keeps the first copy of a SOP Instance UID (OverwriteInstances false): a
result re-sent with changed content under the same UIDs is dropped and the worklist keeps the old
score. Here a late instance re-opens a study already delivered to Orthanc; the new analysis must
arrive as a new SR (new series and instance UIDs) that names the earlier SR in its Predecessor
Documents Sequence, and ``dicomnode worklist`` must show the new score.
"""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage, generate_uid

from dicomnode.config import Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.phantoms import write_phantom_studies
from tests.integration.orthanc import Orthanc, default_orthanc, delivering_to
from tests.support import run_cli, wait_until, write_settings_toml
from tests.tiny_model import write_tiny_model

SR_CLASSES = {str(Comprehensive3DSRStorage), str(EnhancedSRStorage)}


def _late_image(template: Path, out: Path) -> Path:
    """Another image of the same study, brighter (inverted), so the tiny model scores it higher."""
    ds = pydicom.dcmread(template)
    pixels = ds.pixel_array
    ds.PixelData = (pixels.max() - pixels).astype(pixels.dtype).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    ds.save_as(out, enforce_file_format=True)
    return out


def _orthanc_srs(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    study = orthanc.study_id(study_uid)
    srs: list[pydicom.Dataset] = []
    for item in orthanc.get(f"/studies/{study}/instances"):
        with urllib.request.urlopen(f"{orthanc.base_url}/instances/{item['ID']}/file", timeout=60) as rsp:
            ds = pydicom.dcmread(io.BytesIO(rsp.read()))
        if str(ds.SOPClassUID) in SR_CLASSES:
            srs.append(ds)
    return srs


def test_late_instance_revises_the_result_at_an_orthanc_with_default_settings(
    tmp_path: Path, node_factory: Callable[[Settings], Node]
) -> None:
    orthanc = default_orthanc(tmp_path / "orthanc")
    assert "OverwriteInstances" not in orthanc.config()
    settings = delivering_to(orthanc, tmp_path / "node", model=write_tiny_model(tmp_path / "tiny.onnx"))
    study = write_phantom_studies(tmp_path / "in", 1, seed=5, positive_fraction=0.0, size=256)[0]
    late = _late_image(study.paths[0], tmp_path / "late.dcm")
    orthanc.start()
    store = Store(settings.effective_database_url)
    try:
        node = node_factory(settings)
        analyses: list[Analysis] = []
        for image in (study.paths[0], late):
            assert [r.status for r in push_files([image], "127.0.0.1", node.port)] == [0]

            def delivered(n: int = len(analyses) + 1) -> bool:
                a = latest_analysis(store, study.study_uid)
                return (
                    a is not None
                    and len({x.id for x in analyses} | {a.id}) == n
                    and study_state(store, study.study_uid) is StudyState.DELIVERED
                )

            wait_until(delivered, 60, f"analysis {len(analyses) + 1} delivered")
            done = latest_analysis(store, study.study_uid)
            assert done is not None
            analyses.append(done)
        first, second = analyses
        srs = _orthanc_srs(orthanc, study.study_uid)
        config = write_settings_toml(tmp_path / "node.toml", settings)
        code, out = run_cli("--config", str(config), "worklist", "--format", "json")
    finally:
        orthanc.stop()
        store.dispose()

    assert first.sr_sop_instance_uid is not None and second.sr_sop_instance_uid is not None
    assert first.score is not None and second.score is not None
    assert round(second.score, 3) != round(first.score, 3), "the late image must change the score"
    assert second.sr_sop_instance_uid != first.sr_sop_instance_uid
    assert second.sc_sop_instance_uid != first.sc_sop_instance_uid
    # Orthanc kept both SRs: the new content came with new UIDs, so nothing was dropped
    by_uid = {str(ds.SOPInstanceUID): ds for ds in srs}
    assert set(by_uid) == {first.sr_sop_instance_uid, second.sr_sop_instance_uid}
    old, new = by_uid[first.sr_sop_instance_uid], by_uid[second.sr_sop_instance_uid]
    assert new.SeriesInstanceUID != old.SeriesInstanceUID
    assert "PredecessorDocumentsSequence" not in old
    (pred_study,) = new.PredecessorDocumentsSequence
    assert pred_study.StudyInstanceUID == study.study_uid
    (pred_series,) = pred_study.ReferencedSeriesSequence
    assert pred_series.SeriesInstanceUID == old.SeriesInstanceUID
    (pred,) = pred_series.ReferencedSOPSequence
    assert (pred.ReferencedSOPClassUID, pred.ReferencedSOPInstanceUID) == (
        old.SOPClassUID,
        old.SOPInstanceUID,
    )
    # the worklist reads the newest analysis
    assert code == 0, out
    rows = [r for r in json.loads(out) if r["study_uid"] == study.study_uid]
    assert len(rows) == 1, out
    assert round(rows[0]["probability"], 4) == round(second.score, 4), (rows, first.score, second.score)
