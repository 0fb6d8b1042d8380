"""A study sent over one association is complete when the sender releases it (issue 16).

The node runs with a quiet period of 30 s, so a study DELIVERED within 20 s of its push got there
only through completion on release. Instances go over real associations (pynetdicom SCU) to the
node's real SCP; results go to a real Storage SCP (the ``pacs`` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association as ScuAssociation

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.node import Node
from dicomnode.store.models import StudyState
from dicomnode.store.queries import latest_analysis, study_state
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import PhantomStudy, write_phantom_studies
from tests.support import free_port, wait_until
from tests.tiny_model import write_tiny_model

QUIET = 30.0  # far longer than any wait below: only a release completes a study in time
WAIT = 20.0


def _settings(tmp_path: Path, pacs: Receiver) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        storage_dir=tmp_path / "node",
        destinations=(Destination("TESTPACS", "127.0.0.1", pacs.port),),
        quiet_seconds=QUIET,
        model=write_tiny_model(tmp_path / "tiny.onnx"),
    )


def _studies(tmp_path: Path, n: int) -> list[PhantomStudy]:
    return write_phantom_studies(tmp_path / "in", n, seed=16, size=256)


def _open(node: Node, files: list[Path]) -> ScuAssociation:
    """An association to the node with a context for each file's SOP class and transfer syntax."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for cls, ts in sorted(
        {
            (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
            for m in map(pydicom.filereader.read_file_meta_info, files)
        }
    ):
        ae.add_requested_context(cls, [ts])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    return assoc


def _store(assoc: ScuAssociation, path: Path) -> None:
    rsp = assoc.send_c_store(path)
    assert rsp is not None and int(rsp.Status) == 0


def _delivered(node: Node, study_uid: str) -> Callable[[], bool]:
    assert node.store is not None
    store = node.store
    return lambda: study_state(store, study_uid) is StudyState.DELIVERED


def _another_image(template: Path, out: Path) -> Path:
    """A second image of the same study (new SOP Instance UID), as a late instance."""
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 2
    ds.save_as(out, enforce_file_format=True)
    return out


def test_released_study_is_delivered_without_waiting_out_the_quiet_period(
    tmp_path: Path, pacs: Receiver, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path, pacs))
    (study,) = _studies(tmp_path, 1)
    assert [r.status for r in push_files(study.paths, "127.0.0.1", node.port)] == [0]
    wait_until(
        _delivered(node, study.study_uid), WAIT, "the released study delivered before its quiet period"
    )


def test_aborted_or_shared_study_keeps_the_quiet_period(
    tmp_path: Path, pacs: Receiver, node_factory: Callable[[Settings], Node]
) -> None:
    node = node_factory(_settings(tmp_path, pacs))
    aborted, shared, control = _studies(tmp_path, 3)
    second = _another_image(shared.paths[0], tmp_path / "second.dcm")
    assert node.store is not None

    a = _open(node, aborted.paths)
    _store(a, aborted.paths[0])
    assert node.flush_records()  # its row committed: only the abort keeps it from completing early
    a.abort()
    # two associations send one study at once; both are released, neither alone sent it
    b, c = _open(node, shared.paths), _open(node, [second])
    _store(b, shared.paths[0])
    _store(c, second)
    c.release()
    b.release()
    # sent after both, released: it completes and is delivered while the other two still wait
    assert [r.status for r in push_files(control.paths, "127.0.0.1", node.port)] == [0]
    wait_until(_delivered(node, control.study_uid), WAIT, "the control study delivered")
    assert node.flush_records()
    assert study_state(node.store, aborted.study_uid) is StudyState.RECEIVING
    assert study_state(node.store, shared.study_uid) is StudyState.RECEIVING
    assert set(node.tracker.pending()) == {aborted.study_uid, shared.study_uid}


def test_late_instance_after_completion_on_release_is_a_revised_result(
    tmp_path: Path,
    node_factory: Callable[[Settings], Node],
    pacs: Receiver,
) -> None:
    node = node_factory(_settings(tmp_path, pacs))
    (study,) = _studies(tmp_path, 1)
    late = _another_image(study.paths[0], tmp_path / "late.dcm")
    assert node.store is not None
    store = node.store
    analyses = []
    for image in (study.paths[0], late):  # each on an association of its own, released
        assert [r.status for r in push_files([image], "127.0.0.1", node.port)] == [0]
        n = len(analyses) + 1

        def analysed(n: int = n) -> bool:
            a = latest_analysis(store, study.study_uid)
            return (
                a is not None
                and len({x.id for x in analyses} | {a.id}) == n
                and study_state(store, study.study_uid) is StudyState.DELIVERED
            )

        wait_until(analysed, WAIT, f"analysis {n} delivered")
        analyses.append(latest_analysis(store, study.study_uid))
    first, second = analyses
    assert first is not None and second is not None
    assert first.sr_sop_instance_uid and second.sr_sop_instance_uid
    srs = {
        r.sop_instance_uid: pydicom.dcmread(r.path)
        for r in pacs.received
        if r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.")
    }
    assert set(srs) == {first.sr_sop_instance_uid, second.sr_sop_instance_uid}
    new = srs[second.sr_sop_instance_uid]
    (pred_study,) = new.PredecessorDocumentsSequence
    (pred_series,) = pred_study.ReferencedSeriesSequence
    (pred,) = pred_series.ReferencedSOPSequence
    assert pred.ReferencedSOPInstanceUID == first.sr_sop_instance_uid


def test_study_posted_over_stow_rs_completes_when_its_request_ends(
    tmp_path: Path, pacs: Receiver, node_factory: Callable[[Settings], Node]
) -> None:
    """A STOW-RS request is one sender, as an association is: the study it alone sent completes
    after the release grace, not the quiet period."""
    settings = _settings(tmp_path, pacs).with_overrides(dicomweb_port=free_port())
    node = node_factory(settings)
    (study,) = _studies(tmp_path, 1)
    boundary = "dicomnode-test-boundary"
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + p.read_bytes()
            + b"\r\n"
            for p in study.paths
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    rsp = requests.post(
        f"http://127.0.0.1:{settings.dicomweb_port}/studies",
        data=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    wait_until(_delivered(node, study.study_uid), WAIT, "the STOW-RS study delivered before its quiet period")


def test_node_with_group_commit_stores_through_shared_flushes(
    tmp_path: Path, pacs: Receiver, node_factory: Callable[[Settings], Node]
) -> None:
    """DICOMNODE_GROUP_COMMIT=true: the node's handler flushes through a group commit (the sharing
    itself is tests/integration/test_receive_group_commit.py's), and the study goes on as usual."""
    node = node_factory(_settings(tmp_path, pacs).with_overrides(group_commit=True))
    (study,) = _studies(tmp_path, 1)
    assert [r.status for r in push_files(study.paths, "127.0.0.1", node.port)] == [0]
    wait_until(_delivered(node, study.study_uid), WAIT, "the study delivered")
    handler = node._handler
    assert handler is not None and handler.group_commit is not None
    assert handler.group_commit.writes >= len(study.paths)  # a wait for the data, one for the folder
    assert handler.group_commit.flushes >= 1
