"""No feedback loops (issue 18.1): what re-opens an analysed study and what does not.

The node's own results, objects the model does not read and images sent again unchanged are
stored and recorded, with an ``instance.not_reopening`` event, but leave an analysed study alone;
a new image, or an image sent again with another data set, re-opens it. The whole loop with a real
Orthanc forwarding rule is tests/integration/test_forwarding_loop.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import (
    ComprehensiveSRStorage,
    KeyObjectSelectionDocumentStorage,
    SecondaryCaptureImageStorage,
)
from sqlalchemy import select

from dicomnode.model.selection import PROJECTION_SOP_CLASSES, SECONDARY_CAPTURE_SOP_CLASS
from dicomnode.receive import provenance
from dicomnode.receive.header import InstanceHeader
from dicomnode.storage.filemeta import encode_file_meta
from dicomnode.store.db import Store
from dicomnode.store.models import Event, StudyState
from dicomnode.store.queries import study_state
from dicomnode.store.records import (
    InstanceRecord,
    record_instance,
    record_instances,
    set_study_state,
    start_analysis,
    update_analysis,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
STUDY = "1.2.826.0.1.3680043.10.999.1"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'node.sqlite3'}")
    yield s
    s.dispose()


def _rec(sop: str, *, sop_class: str = CR, passive: str | None = None) -> InstanceRecord:
    return InstanceRecord(
        study_uid=STUDY,
        series_uid=STUDY + ".1",
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        transfer_syntax_uid=EXPLICIT_LE,
        modality="CR",
        path=f"/data/{sop}.dcm",
        size_bytes=1000,
        sha256=None,
        calling_ae="ORTHANC",
        passive=passive,
    )


def _analysed(store: Store, *, sr: str, sc: str) -> None:
    record_instance(store, _rec(STUDY + ".1.1"))
    set_study_state(store, STUDY, StudyState.COMPLETE)
    analysis = start_analysis(
        store, STUDY, model_name="m", model_version="1.0.0+abcd1234", queued_at=None, execution="inprocess"
    )
    update_analysis(store, analysis, sr_sop_instance_uid=sr, sc_sop_instance_uid=sc)
    set_study_state(store, STUDY, StudyState.DELIVERED)


def _part10(path: Path, dataset: bytes, calling_ae: str) -> Path:
    path.write_bytes(encode_file_meta(CR, "1.2.3.4", EXPLICIT_LE, calling_ae) + dataset)
    return path


def _header(sop: str, sop_class: str) -> InstanceHeader:
    return InstanceHeader(
        study_uid=STUDY,
        series_uid=STUDY + ".9",
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        modality=None,
        accession_number=None,
        transfer_syntax_uid=EXPLICIT_LE,
    )


def test_the_sop_classes_the_model_reads_are_the_selections() -> None:
    assert provenance.READ_SOP_CLASSES == PROJECTION_SOP_CLASSES
    assert provenance.SECONDARY_CAPTURE == SECONDARY_CAPTURE_SOP_CLASS


def test_same_dataset_ignores_the_file_meta_but_not_a_changed_byte(tmp_path: Path) -> None:
    body = bytes(range(256)) * 50
    first = _part10(tmp_path / "a.dcm", body, "CR_ER1")
    forwarded = _part10(tmp_path / "b.dcm", body, "ORTHANC")  # the file meta names another sender
    changed = _part10(tmp_path / "c.dcm", body[:-1] + b"\x00", "ORTHANC")
    assert first.read_bytes() != forwarded.read_bytes()
    assert provenance.same_dataset(forwarded, first)
    assert not provenance.same_dataset(changed, first)
    assert not provenance.same_dataset(_part10(tmp_path / "d.dcm", body + b"\0\0", "X"), first)
    assert not provenance.same_dataset(tmp_path / "missing.dcm", first)
    (tmp_path / "raw.dcm").write_bytes(body)  # no Part 10 header: never "the same"
    assert not provenance.same_dataset(tmp_path / "raw.dcm", tmp_path / "raw.dcm")


def test_reasons_own_results_other_objects_unchanged_images_and_new_images(
    store: Store, tmp_path: Path
) -> None:
    sr, sc = "1.2.826.0.1.3680043.10.999.7.1", "1.2.826.0.1.3680043.10.999.7.2"
    _analysed(store, sr=sr, sc=sc)

    def reason(sop: str, sop_class: str, **kw: bool) -> str | None:
        return provenance.not_reopening_reason(
            store, study_uid=STUDY, sop_instance_uid=sop, sop_class_uid=sop_class, **kw
        )

    assert (reason(sr, str(ComprehensiveSRStorage)) or "").startswith(provenance.PRODUCED_HERE)
    assert (reason(sc, str(SecondaryCaptureImageStorage)) or "").startswith(provenance.PRODUCED_HERE)
    other_sr = reason("1.2.3.99", str(ComprehensiveSRStorage)) or ""
    assert other_sr.startswith(provenance.NOT_READ) and str(ComprehensiveSRStorage) in other_sr
    assert (reason("1.2.3.98", str(KeyObjectSelectionDocumentStorage)) or "").startswith(provenance.NOT_READ)
    # another Secondary Capture may be read (DICOMNODE_SELECT_SECONDARY_CAPTURE): it may re-open
    assert reason("1.2.3.95", str(SecondaryCaptureImageStorage)) is None
    assert (reason(STUDY + ".1.1", CR, unchanged=True) or "").startswith(provenance.UNCHANGED)
    assert reason("1.2.3.97", CR) is None  # a new image re-opens

    # passive_reason looks at the stored file before it is replaced
    body = b"\x08\x00\x16\x00UI\x1a\x00" + b"1.2.840.10008.5.1.4.1.1.1\x00" + b"pixels" * 100
    stored = _part10(tmp_path / "stored.dcm", body, "CR_ER1")
    same = _part10(tmp_path / "in1.dcm", body, "ORTHANC")
    other = _part10(tmp_path / "in2.dcm", body.replace(b"pixels", b"PIXELS", 1), "ORTHANC")
    hdr = _header(STUDY + ".1.1", CR)
    assert (provenance.passive_reason(store, hdr, same, stored) or "").startswith(provenance.UNCHANGED)
    assert provenance.passive_reason(store, hdr, other, stored) is None
    assert provenance.passive_reason(store, hdr, same, tmp_path / "not-yet-stored.dcm") is None


def test_passive_instances_are_recorded_without_reopening_the_study(store: Store) -> None:
    sr, sc = "1.2.826.0.1.3680043.10.999.7.1", "1.2.826.0.1.3680043.10.999.7.2"
    _analysed(store, sr=sr, sc=sc)
    outcomes = record_instances(
        store,
        [
            _rec(sr, sop_class=str(ComprehensiveSRStorage), passive="produced by this node (test)"),
            _rec(sc, sop_class=str(SecondaryCaptureImageStorage), passive="produced by this node (test)"),
            _rec(STUDY + ".1.1", passive="re-sent unchanged (test)"),
        ],
    )
    assert [o.reopened for o in outcomes] == [False, False, False]
    assert outcomes[2].duplicate
    assert study_state(store, STUDY) is StudyState.DELIVERED
    with store.session() as s:
        held = s.scalars(select(Event.detail).where(Event.kind == "instance.not_reopening")).all()
        reopened = s.scalars(select(Event).where(Event.kind == "study.reopened")).all()
    assert [d["sop_instance_uid"] for d in held] == [sr, sc, STUDY + ".1.1"]
    assert {d["state"] for d in held} == {"delivered"}
    assert reopened == []

    # a real new image still re-opens it
    assert record_instance(store, _rec("1.2.826.0.1.3680043.10.999.1.1.2")).reopened
    assert study_state(store, STUDY) is StudyState.RECEIVING


def test_a_passive_instance_of_a_receiving_study_is_simply_recorded(store: Store) -> None:
    record_instance(store, _rec(STUDY + ".1.1"))
    outcome = record_instance(store, _rec("1.2.3.96", sop_class=str(ComprehensiveSRStorage), passive="x"))
    assert not outcome.reopened and not outcome.duplicate
    assert study_state(store, STUDY) is StudyState.RECEIVING
    with store.session() as s:
        assert s.scalars(select(Event).where(Event.kind == "instance.not_reopening")).all() == []
