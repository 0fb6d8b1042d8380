"""The forwarding-loop drill (issue 18.1): a PACS rule that forwards every stable study to the node.

The most common routing rule on a PACS is "forward CR/DX studies to the AI node". Orthanc runs it
here as a Lua ``OnStableStudy`` callback that sends the *whole* study to the node: the images, and,
once the node has delivered them, the node's own SR and heatmap SC. The node must not analyse a
study again for what it produced itself, for objects the model does not read, or for images it has
already analysed and that come back unchanged, or it analyses and delivers for ever (with
``OverwriteInstances`` true every delivery is a change to Orthanc, so it forwards again). A real new
image still gets the study analysed again: exactly one analysis per real change.

Counts are printed (``-s``) for the report: analyses from the node's SQL, forwards from Orthanc's
log (the Lua callback prints one line per forward).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicomnode.config import Destination, Settings
from dicomnode.node import Node
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Study
from dicomnode.testing.phantoms import write_phantom_studies
from tests.conftest import need_tool
from tests.integration.orthanc import Orthanc, free_port
from tests.support import wait_until
from tests.tiny_model import write_tiny_model

STABLE_AGE = 2  # seconds (Orthanc's default is 60; small so the drill is short)
#: How long nothing may happen before the drill calls a phase settled. One turn of a loop takes
#: StableAge + the node's quiet period + an analysis + a delivery, about 3-4 s here.
SETTLE_SECONDS = 12.0

#: The common rule: every stable study, whole, to the node (what loops on the base node).
FORWARD_RULE = """
function OnStableStudy(studyId, tags, metadata)
  print('dicomnode-drill forward ' .. studyId)
  RestApiPost('/modalities/node/store', '{"Resources": ["' .. studyId .. '"], "Synchronous": true}')
end
"""
#: The safe rule of docs/pacs-integration.md: each CR/DX image once, as it arrives, never what
#: the node itself sent (its AE title) and no other objects.
SAFE_RULE = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'CR' or modality == 'DX') and origin['RemoteAet'] ~= 'DICOMNODE' then
    print('dicomnode-drill forward ' .. instanceId)
    SendToModality(instanceId, 'node')
  end
end
"""


class ForwardingOrthanc(Orthanc):
    """Orthanc with the forward-everything rule, a short StableAge and a chosen OverwriteInstances."""

    def __init__(self, *args: Any, overwrite: bool, rule: str = FORWARD_RULE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.overwrite = overwrite
        self.rule = rule

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        lua = self.workdir / "forward.lua"
        lua.write_text(self.rule)
        cfg.update(StableAge=STABLE_AGE, OverwriteInstances=self.overwrite, LuaScripts=[str(lua)])
        return cfg

    def forwards(self) -> int:
        return self.log_path.read_text(errors="replace").count("dicomnode-drill forward")


def _analyses(store: Store, study_uid: str) -> int:
    with store.session() as s:
        return int(
            s.scalar(select(func.count(Analysis.id)).join(Study).where(Study.study_uid == study_uid)) or 0
        )


def _settle(orthanc: ForwardingOrthanc, store: Store, study_uid: str, *, cap: float) -> tuple[int, int]:
    """Wait until neither the forwards nor the analyses have changed for SETTLE_SECONDS (or ``cap``
    seconds have passed: a loop never settles); the counts then."""
    deadline = time.monotonic() + cap
    last = (orthanc.forwards(), _analyses(store, study_uid))
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = (orthanc.forwards(), _analyses(store, study_uid))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            break
    return last


@pytest.mark.parametrize(
    ("overwrite", "rule"),
    [(False, FORWARD_RULE), (True, FORWARD_RULE), (True, SAFE_RULE)],
    ids=["orthanc-defaults", "overwrite-instances", "safe-rule"],
)
def test_a_pacs_forwarding_whole_studies_gets_one_analysis_per_real_change(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    overwrite: bool,
    rule: str,
) -> None:
    binary = need_tool("Orthanc")
    orthanc_port = free_port()
    node = node_factory(
        Settings(
            ae_title="DICOMNODE",
            host="127.0.0.1",
            port=0,
            storage_dir=tmp_path / "node",
            destinations=(Destination("ORTHANC", "127.0.0.1", orthanc_port),),
            quiet_seconds=0.5,
            model=write_tiny_model(tmp_path / "tiny.onnx"),  # the tiny model: no training
            delivery_attempts=3,
            delivery_backoff_seconds=0.2,
        )
    )
    study = write_phantom_studies(tmp_path / "in", 1, seed=23, positive_fraction=1.0, size=256)[0]
    orthanc = ForwardingOrthanc(
        binary,
        tmp_path / "orthanc",
        dicom_port=orthanc_port,
        modalities={"node": ("DICOMNODE", "127.0.0.1", node.port)},
        overwrite=overwrite,
        rule=rule,
    )
    store = Store(node.settings.effective_database_url, run_migrations=False)
    try:
        orthanc.start()
        # 1. the modality sends the study to the PACS; the rule forwards it to the node
        assert orthanc.upload(study.paths[0])["Status"] == "Success"
        wait_until(lambda: _analyses(store, study.study_uid) >= 1, 60, "the first analysis")
        orthanc_study = orthanc.study_id(study.study_uid)
        wait_until(
            lambda: len(orthanc.get(f"/studies/{orthanc_study}/instances")) >= 3,
            60,
            f"SR + SC in Orthanc (log: {orthanc.log_tail(800)})",
        )
        forwards_1, analyses_1 = _settle(orthanc, store, study.study_uid, cap=60)

        # 2. a real new image of the same study: exactly one more analysis
        extra = pydicom.dcmread(study.paths[0])
        extra.SOPInstanceUID = generate_uid()
        extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
        extra.SeriesInstanceUID = generate_uid()
        extra.InstanceNumber = 2
        extra_path = tmp_path / "extra.dcm"
        extra.save_as(extra_path, enforce_file_format=True)
        assert orthanc.upload(extra_path)["Status"] == "Success"
        wait_until(lambda: _analyses(store, study.study_uid) >= analyses_1 + 1, 60, "the second analysis")
        forwards_2, analyses_2 = _settle(orthanc, store, study.study_uid, cap=60)

        with store.session() as s:
            ignored = s.scalars(
                select(Event.detail).where(
                    Event.study_uid == study.study_uid, Event.kind == "instance.not_reopening"
                )
            ).all()
            results = {
                uid
                for row in s.execute(
                    select(Analysis.sr_sop_instance_uid, Analysis.sc_sop_instance_uid)
                    .join(Study)
                    .where(Study.study_uid == study.study_uid)
                )
                for uid in row
            }
        instances_at_orthanc = len(orthanc.get(f"/studies/{orthanc_study}/instances"))
    finally:
        orthanc.stop()
        store.dispose()

    which = "safe rule (OnStoredInstance, CR/DX not from us)" if rule is SAFE_RULE else "whole stable studies"
    print(
        f"\nforwarding drill ({which}, OverwriteInstances={overwrite}, StableAge={STABLE_AGE} s): "
        f"after the first push: {analyses_1} analyses, {forwards_1} forwards; "
        f"after a new image: {analyses_2} analyses, {forwards_2} forwards; "
        f"{len(ignored)} forwarded instances stored without re-opening the study; "
        f"{instances_at_orthanc} instances in Orthanc's study"
    )
    assert analyses_1 == 1, f"{analyses_1} analyses of one study pushed once ({forwards_1} forwards)"
    assert analyses_2 == 2, f"{analyses_2} analyses after one new image ({forwards_2} forwards)"
    # the two images and each result object the node made once: nothing stray, nothing doubled
    assert instances_at_orthanc == 2 + len(results), (instances_at_orthanc, results)
    if rule is SAFE_RULE:  # each image forwarded once, nothing else: nothing for the node to ignore
        assert (forwards_1, forwards_2, len(ignored)) == (1, 2, 0)
        return
    reasons = {d["reason"] for d in ignored if d}
    assert any("produced by this node" in r for r in reasons), reasons
    assert any("unchanged" in r for r in reasons), reasons
