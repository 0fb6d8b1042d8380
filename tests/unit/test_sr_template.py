"""An SR filled in from a template is byte for byte the SR highdicom builds for the same study.

Each case sends two or more studies of one header shape through :class:`SRTemplates`: the first is
built by highdicom (and proves the template), the others are filled in; every one is compared with
:func:`build_sr` + :func:`encode` of the same inputs, the creation time copied over (highdicom
takes it from the clock).
"""

from __future__ import annotations

import copy
import datetime
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

import dicomnode.results.sr_template as sr_template
from dicomnode.model.card import ModelCard
from dicomnode.results import Finding, build_sr, result_uids
from dicomnode.results.part10 import encode
from dicomnode.results.sr_template import SRTemplates
from dicomnode.testing.phantoms import make_phantom
from tests.unit.test_results_sanitise import SLOPPY, as_sent
from training.image_sets import shared_data_dir

NOW = datetime.datetime(2026, 12, 5, 9, 30, 15, 250000)
_CLOCK_KEYWORDS = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def next_study(ds: Dataset, n: int) -> Dataset:
    """``ds`` as the same modality's next study: new patient, study, series, instance, date."""
    out = copy.deepcopy(ds)
    out.PatientName = f"NEXT^PATIENT{n}"
    out.PatientID = f"ID{n:05d}"
    out.AccessionNumber = f"ACC{n}"
    out.StudyInstanceUID = generate_uid()
    out.SeriesInstanceUID = generate_uid()
    out.SOPInstanceUID = generate_uid()
    out.StudyDate = f"2025{n % 12 + 1:02d}{n % 28 + 1:02d}"
    return out


def reference(
    sources: Sequence[Dataset], finding: Finding, card: ModelCard, got: Dataset, **kw: Any
) -> bytes:
    """highdicom's SR of the same inputs, with ``got``'s creation time."""
    ref = build_sr(sources, finding, card, **kw)
    for keyword in _CLOCK_KEYWORDS:
        setattr(ref, keyword, got[keyword].value)
    ref.ContributingEquipmentSequence[-1].ContributionDateTime = got.ContributingEquipmentSequence[
        -1
    ].ContributionDateTime
    return encode(ref)


def check_studies(
    templates: SRTemplates,
    studies: Sequence[Sequence[Dataset]],
    card: ModelCard,
    probabilities: Sequence[float],
    **kw: Any,
) -> None:
    for sources, p in zip(studies, probabilities, strict=True):
        finding = Finding(p, card.threshold)
        uids = result_uids(
            str(sources[0].StudyInstanceUID), card.version, [str(s.SOPInstanceUID) for s in sources]
        )
        got, data = templates.build(sources, finding, card, uids=uids, **kw)
        assert data == reference(sources, finding, card, pydicom.dcmread(io.BytesIO(data)), uids=uids, **kw)
        assert got.SOPInstanceUID == uids.sr_instance


@pytest.fixture
def templates() -> SRTemplates:
    return SRTemplates(clock=lambda: NOW)


def phantoms(n: int) -> list[list[Dataset]]:
    """``n`` single-image studies of one shape (PatientSex is part of the shape: highdicom checks it)."""
    out = [make_phantom(np.random.default_rng(seed), seed % 2 == 0, size=64) for seed in range(n)]
    for ds in out:
        ds.PatientSex = "F"
    return [[ds] for ds in out]


def test_the_next_studies_of_a_shape_are_filled_in_as_highdicom_builds_them(
    templates: SRTemplates, results_card: ModelCard
) -> None:
    # phantoms differ in every copied value, pixel spacing and size included
    check_studies(templates, phantoms(5), results_card, [0.9, 0.43, 0.97, 0.5, 0.61])
    check_studies(templates, phantoms(4), results_card, [0.1, 0.0, 0.41, 0.3])  # absent: another shape
    assert (templates.built, templates.filled) == (2, 7)


def test_a_filled_in_sr_carries_the_clock_at_its_making(results_card: ModelCard) -> None:
    times = iter([datetime.datetime(2026, 1, 2, 3, 4, 5, 6), datetime.datetime(2026, 7, 8, 9, 10, 11, 0)])
    templates = SRTemplates(clock=lambda: next(times))
    sources = phantoms(3)
    for s in sources[:2]:
        templates.build(s, Finding(0.9, 0.42), results_card, uids=result_uids(s[0].StudyInstanceUID, "v"))
    sr, _ = templates.build(
        sources[2], Finding(0.9, 0.42), results_card, uids=result_uids(sources[2][0].StudyInstanceUID, "v")
    )
    assert (sr.ContentDate, sr.ContentTime, sr.InstanceCreationTime) == ("20260708", "091011", "091011")
    assert sr.ContributingEquipmentSequence[-1].ContributionDateTime == "20260708091011"
    assert templates.filled == 2


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the sloppy values themselves
def test_sloppy_headers_are_filled_in_as_highdicom_builds_them(
    templates: SRTemplates, results_card: ModelCard
) -> None:
    sloppy = {keyword: raw for keyword, raw, _ in SLOPPY}  # the last of each keyword's values
    studies = []
    for [ds] in phantoms(3):
        for keyword, raw in sloppy.items():
            as_sent(ds, keyword, raw)
        studies.append([ds])
    check_studies(templates, studies, results_card, [0.9, 0.8, 0.7])
    assert templates.filled == 2


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 192", "Müller^Jürgen"), ("ISO_IR 100", "Ångström^Åsa"), ("ISO_IR 192", "山田^太郎")],
)
def test_names_in_other_character_sets_are_encoded_as_highdicom_encodes_them(
    templates: SRTemplates, results_card: ModelCard, charset: str, name: str
) -> None:
    studies = phantoms(3)
    for i, [ds] in enumerate(studies):
        ds.SpecificCharacterSet = charset
        ds.PatientName = name if i else "Plain^Name"
        ds.StudyDescription = f"Thorax {name.split('^')[0]}"
    check_studies(templates, studies, results_card, [0.9, 0.8, 0.7])
    assert templates.filled == 2


def test_studies_of_several_images_and_series(templates: SRTemplates, results_card: ModelCard) -> None:
    def study(seed: int, same_series: bool) -> list[Dataset]:
        a, b = (make_phantom(np.random.default_rng(seed * 2 + k), True, size=64) for k in range(2))
        b.StudyInstanceUID, b.PatientID, b.PatientName = a.StudyInstanceUID, a.PatientID, a.PatientName
        a.PatientSex = b.PatientSex = "M"
        if same_series:
            b.SeriesInstanceUID = a.SeriesInstanceUID
        return [a, b]

    check_studies(templates, [study(i, True) for i in range(3)], results_card, [0.9, 0.8, 0.7])
    check_studies(templates, [study(i, False) for i in range(3, 6)], results_card, [0.9, 0.8, 0.7])
    assert (templates.built, templates.filled) == (2, 4)  # one series or two: two shapes


def test_revisions_and_minimal_headers(templates: SRTemplates, results_card: ModelCard) -> None:
    studies = phantoms(3)
    earlier = []
    for [ds] in studies:
        ref = Dataset()
        ref.StudyInstanceUID = ds.StudyInstanceUID
        ref.SeriesInstanceUID = generate_uid()
        ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
        ref.SOPInstanceUID = generate_uid()
        earlier.append(ref)
    for [ds], ref in zip(studies, earlier, strict=True):
        check_studies(templates, [[ds]], results_card, [0.8], predecessors=[ref])
    check_studies(templates, studies, results_card, [0.8, 0.7, 0.9], minimal=True)
    assert (templates.built, templates.filled) == (2, 4)


def test_real_modality_headers_are_filled_in_as_highdicom_builds_them(results_card: ModelCard) -> None:
    folder = shared_data_dir() / "dicom"
    paths = sorted(folder.glob("*.dcm"))
    if not paths:
        pytest.skip(
            f"real DICOM files not here: {folder} (the shared data folder; set DICOMNODE_DATA_DIR to it)"
        )
    for path in paths:
        templates = SRTemplates(clock=lambda: NOW)
        first = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" not in first or "StudyInstanceUID" not in first:
            continue
        # the file itself, then the same modality's next studies (a StudyDate the file may lack
        # makes them another shape)
        studies: list[list[Dataset]] = [[first], *([next_study(first, n)] for n in range(1, 5))]
        check_studies(templates, studies, results_card, [0.9, 0.8, 0.7, 0.95, 0.6])
        assert templates.filled >= 3, path.name


def test_a_value_highdicom_copies_into_a_longer_text_is_never_filled_in(
    monkeypatch: pytest.MonkeyPatch, results_card: ModelCard
) -> None:
    build = sr_template.sr_from_headers

    def quoting(headers: Sequence[Dataset], *args: Any, **kw: Any) -> Dataset:
        sr = build(headers, *args, **kw)
        sr.StudyComments = f"for patient {headers[0].PatientID}"  # the ID inside a longer value
        return sr

    def transforming(headers: Sequence[Dataset], *args: Any, **kw: Any) -> Dataset:
        sr = build(headers, *args, **kw)
        sr.StudyComments = str(headers[0].PatientID).lower()  # the ID, changed
        return sr

    for fake in (quoting, transforming):
        monkeypatch.setattr(sr_template, "sr_from_headers", fake)
        templates = SRTemplates(clock=lambda: NOW)
        for [ds] in phantoms(3):
            finding = Finding(0.9, results_card.threshold)
            uids = result_uids(ds.StudyInstanceUID, results_card.version)
            got, data = templates.build([ds], finding, results_card, uids=uids)
            assert got.StudyComments.lower() in (
                f"for patient {ds.PatientID}".lower(),
                str(ds.PatientID).lower(),
            )
        assert (templates.built, templates.filled) == (3, 0), fake.__name__


def test_the_shapes_remembered_are_bounded(results_card: ModelCard) -> None:
    templates = SRTemplates(max_shapes=2, clock=lambda: NOW)
    for modality in ("DX", "CR", "DX", "MG"):
        [ds] = phantoms(1)[0]
        ds.Modality = modality
        templates.build([ds], Finding(0.9, 0.42), results_card, uids=result_uids(ds.StudyInstanceUID, "v"))
    assert len(templates._shapes) == 2 and (templates.built, templates.filled) == (3, 1)
