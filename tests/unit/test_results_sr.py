"""The triage SR: built from phantoms, read back by read_sr and highdicom, valid per dciodvfy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage

from dicomnode.model.card import ModelCard
from dicomnode.results import Finding, Priority, build_sr, codes, read_sr, result_uids
from dicomnode.results.sr import tracking_uid

Phantom = Callable[..., pydicom.Dataset]


def _group(sr: pydicom.Dataset) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):  # built here rather than read
        report = hd.sr.MeasurementReport.from_sequence(report)
    groups = report.get_image_measurement_groups(finding_type=codes.PNEUMONIA)
    assert len(groups) == 1
    return groups[0]


def test_positive_sr_reads_back_as_present_and_urgent(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(1, True)
    sr = build_sr([source], Finding(0.87, results_card.threshold), results_card)
    summary = read_sr(sr)
    assert summary.study_uid == source.StudyInstanceUID
    assert summary.sop_instance_uid == result_uids(source.StudyInstanceUID, "2024.06.1").sr_instance
    assert summary.probability == pytest.approx(0.87)
    assert summary.present is True
    assert summary.priority is Priority.URGENT
    assert (summary.model_name, summary.model_version) == ("pneumonia-resnet18", "2024.06.1")
    assert isinstance(summary.observed_at, datetime)


def test_negative_sr_written_to_disk_parses_with_highdicom(
    results_phantom: Phantom, results_card: ModelCard, tmp_path: Path
) -> None:
    source = results_phantom(2, False)
    sr = build_sr([source], Finding(0.12, results_card.threshold), results_card)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    parsed = hd.sr.srread(path)
    assert isinstance(parsed, hd.sr.Comprehensive3DSR)
    assert parsed.SOPClassUID == Comprehensive3DSRStorage
    group = _group(parsed)
    [presence] = group.get_qualitative_evaluations(name=codes.PNEUMONIA)
    assert codes.same_code(presence.value, codes.FINDING_ABSENT)
    [priority] = group.get_qualitative_evaluations(name=codes.PRIORITY)
    assert codes.same_code(priority.value, codes.PRIORITY_ROUTINE)
    [probability] = group.get_measurements(name=codes.PROBABILITY)
    assert probability.value == pytest.approx(0.12)
    assert codes.same_code(probability.unit, codes.PROBABILITY_UNIT)
    assert group.tracking_uid == tracking_uid(result_uids(source.StudyInstanceUID, "2024.06.1"))

    # the model is the device observer and a contributing equipment with its Device UID
    [observer] = parsed.content.get_observer_contexts(observer_type=dcm_codes.cid270.Device)
    assert observer.observer_identifying_attributes.uid == results_card.device_uid
    model_items = [item for item in parsed.ContributingEquipmentSequence if item.get("DeviceUID")]
    assert [(i.ManufacturerModelName, i.SoftwareVersions, i.DeviceUID) for i in model_items] == [
        ("pneumonia-resnet18", "2024.06.1", results_card.device_uid)
    ]
    # the source is evidence and in the image library
    assert source.SOPInstanceUID in {e[2] for e in parsed.get_evidence()}
    assert read_sr(path).present is False
    assert read_sr(str(path)).priority is Priority.ROUTINE


def test_sr_sits_in_the_source_study_and_patient_in_its_own_series(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(3, True)
    sr = build_sr([source], Finding(0.6, results_card.threshold), results_card)
    for keyword in (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
    ):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.Modality == "SR"
    assert sr.SeriesNumber == 9901
    assert "not for diagnostic use" in sr.SeriesDescription.lower()
    assert sr.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_rebuilding_the_sr_gives_the_same_uids(results_phantom: Phantom, results_card: ModelCard) -> None:
    source = results_phantom(4, True)
    first = build_sr([source], Finding(0.7, results_card.threshold), results_card)
    again = build_sr([source], Finding(0.3, results_card.threshold), results_card)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert _group(first).tracking_uid == _group(again).tracking_uid


def test_enhanced_sr_fallback_has_the_same_content(
    results_phantom: Phantom, results_card: ModelCard, tmp_path: Path
) -> None:
    source = results_phantom(5, True)
    finding = Finding(0.55, results_card.threshold)
    sr = build_sr([source], finding, results_card, enhanced=True)
    assert sr.SOPClassUID == EnhancedSRStorage
    path = tmp_path / "enhanced.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert isinstance(hd.sr.srread(path), hd.sr.EnhancedSR)
    summary = read_sr(path)
    assert (summary.probability, summary.present, summary.priority) == (
        pytest.approx(0.55),
        True,
        Priority.URGENT,
    )
    comprehensive = read_sr(build_sr([source], finding, results_card))
    assert replace(summary, observed_at=None) == replace(comprehensive, observed_at=None)


@pytest.mark.parametrize("enhanced", [False, True], ids=["comprehensive3d", "enhanced"])
def test_sr_has_no_dciodvfy_errors(
    results_phantom: Phantom,
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
    enhanced: bool,
) -> None:
    sources = [results_phantom(6, True), results_phantom(7, True, view="LL")]
    sources[1].StudyInstanceUID = sources[0].StudyInstanceUID
    sr = build_sr(sources, Finding(0.9, results_card.threshold), results_card, enhanced=enhanced)
    assert dciodvfy_errors(sr) == []


def test_source_with_type2_gaps_builds_and_stays_untouched(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(8, True)
    for keyword in (
        "AccessionNumber",
        "PatientSex",
        "StudyID",
        "ReferringPhysicianName",
        "PatientOrientation",
        "ImagerPixelSpacing",
    ):
        delattr(source, keyword)
    before = copy.deepcopy(source)
    sr = build_sr([source], Finding(0.5, results_card.threshold), results_card)
    assert source == before
    assert "AccessionNumber" not in source and "PatientOrientation" not in source
    assert "AccessionNumber" in sr and not sr.AccessionNumber
    # the image library still describes the image: orientation from the view, spacing from
    # PixelSpacing
    [entry] = _group(sr).source_images
    assert entry.referenced_sop_instance_uid == source.SOPInstanceUID
    library = _library_descriptors(sr)
    assert library["Patient Orientation Row"] == "L"
    assert library["Horizontal Pixel Spacing"] == pytest.approx(float(source.PixelSpacing[1]))


def test_source_without_any_spacing_is_evidence_but_not_in_the_image_library(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    source = results_phantom(9, False)
    del source.ImagerPixelSpacing
    del source.PixelSpacing
    sr = build_sr([source], Finding(0.1, results_card.threshold), results_card)
    assert _library_descriptors(sr) == {}
    assert source.SOPInstanceUID in {e[2] for e in sr.get_evidence()}
    assert read_sr(sr).present is False


def test_two_views_report_a_two_view_chest_procedure(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    pa = results_phantom(10, True)
    lateral = results_phantom(11, True, view="LL", study_uid=pa.StudyInstanceUID)
    sr = build_sr([pa, lateral], Finding(0.8, results_card.threshold), results_card)
    procedures = [
        item.ConceptCodeSequence[0].CodeValue
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == dcm_codes.DCM.ProcedureReported.value
    ]
    assert procedures == [codes.CHEST_XR_TWO_VIEWS.value]
    referenced = {img.referenced_sop_instance_uid for img in _group(sr).source_images}
    assert referenced == {pa.SOPInstanceUID, lateral.SOPInstanceUID}


def test_build_sr_refuses_inconsistent_inputs(results_phantom: Phantom, results_card: ModelCard) -> None:
    a, b = results_phantom(12, True), results_phantom(13, True)
    with pytest.raises(ValueError, match="threshold"):
        build_sr([a], Finding(0.5, 0.9), results_card)
    with pytest.raises(ValueError, match="2 studies"):
        build_sr([a, b], Finding(0.5, results_card.threshold), results_card)
    with pytest.raises(ValueError, match="at least one"):
        build_sr([], Finding(0.5, results_card.threshold), results_card)


def test_read_sr_refuses_what_is_not_a_pneumonia_sr(
    results_phantom: Phantom, results_card: ModelCard, tmp_path: Path
) -> None:
    source = results_phantom(14, True)
    with pytest.raises(ValueError, match="not a pneumonia triage SR"):
        read_sr(source)

    not_dicom = tmp_path / "note.txt"
    not_dicom.write_text("hello")
    with pytest.raises(ValueError, match="not a DICOM file"):
        read_sr(not_dicom)

    # an otherwise valid report whose finding is pneumothorax, not pneumonia
    sr = build_sr([source], Finding(0.5, results_card.threshold), results_card)
    for item in _walk(sr):
        if "ConceptCodeSequence" in item and item.ConceptCodeSequence[0].CodeValue == "233604007":
            item.ConceptCodeSequence[0].CodeValue = "36118008"
            item.ConceptCodeSequence[0].CodeMeaning = "Pneumothorax"
    with pytest.raises(ValueError, match="no measurement group for pneumonia"):
        read_sr(sr)
    # editing one report leaves the next one alone (no code object is shared between reports)
    assert read_sr(build_sr([source], Finding(0.5, results_card.threshold), results_card)).present


def _walk(ds: pydicom.Dataset):  # type: ignore[no-untyped-def]
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def _library_descriptors(sr: pydicom.Dataset) -> dict[str, object]:
    """Name -> value of the TID 1602 descriptors of the first image library entry, if any."""
    out: dict[str, object] = {}
    for item in _walk(sr):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT" and name.startswith("Patient Orientation"):
            out.setdefault(name, item.TextValue)
        elif item.ValueType == "NUM" and name.endswith("Pixel Spacing"):
            out.setdefault(name, float(item.MeasuredValueSequence[0].NumericValue))
    return out


def test_observed_at_is_timezone_aware_when_the_sr_carries_an_offset(
    results_phantom: Phantom, results_card: ModelCard
) -> None:
    sr = build_sr([results_phantom(15, True)], Finding(0.5, results_card.threshold), results_card)
    assert read_sr(sr).observed_at.tzinfo is None  # type: ignore[union-attr]
    sr.TimezoneOffsetFromUTC = "-0130"
    observed = read_sr(sr).observed_at
    assert observed is not None and observed.utcoffset() == -timedelta(hours=1, minutes=30)
