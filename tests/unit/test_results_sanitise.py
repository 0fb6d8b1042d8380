"""Sloppy header values as real modalities send them: the SR and SC still build, from valid copies.

Each value below made highdicom refuse the SR (and the SC) after inference, or was copied into the
SR invalid, before dicomnode.results.sanitise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomnode.model.card import ModelCard
from dicomnode.results import Finding, build_heatmap_sc, build_sr, read_sr, sanitised_copy
from dicomnode.results.sanitise import MINIMAL_KEYWORDS, RESULT_KEYWORDS, changed_keywords

Phantom = Callable[..., pydicom.Dataset]

#: SR attributes after sanitising: None = absent, "" = present and empty (Type 2)
SLOPPY = [
    # enumerated values: mapped when unambiguous, else dropped (PatientSex is M, F or O)
    ("PatientSex", b"U ", ""),
    ("PatientSex", b"m ", "M"),
    ("PatientSex", b"male", "M"),
    # dates and times that are not DICOM DA/TM: dropped, year-only dates too
    ("PatientBirthDate", b"1960", ""),
    ("PatientBirthDate", b"19600231", ""),
    ("StudyDate", b"2024-01-01", ""),
    ("StudyTime", b"25:61 ", ""),
    ("StudyTime", b"12:30:00", ""),
    # an age without a unit is dropped, one with a unit padded
    ("PatientAge", b"45", None),
    ("PatientAge", b"45Y ", "045Y"),
    # over-long strings: truncated to the VR's maximum length
    ("PatientName", b"DOE" * 30 + b"^JOHN", "DOE" * 21 + "D"),
    ("AccessionNumber", b"A" * 20, "A" * 16),
    ("StudyDescription", b"CHEST " * 15, ("CHEST " * 15)[:64]),
    # a number that is not one: dropped
    ("PatientWeight", b"70kg", None),
    # character sets highdicom cannot write: dropped for ASCII text
    ("SpecificCharacterSet", b"ISO_IR 6", None),
    ("SpecificCharacterSet", b"ISO 2022 IR 100 ", None),
    ("SpecificCharacterSet", b"ISO-8859-1", None),
]


def as_sent(ds: pydicom.Dataset, keyword: str, raw: bytes) -> pydicom.Dataset:
    """``ds`` with ``keyword`` holding ``raw`` undecoded, as a file from the modality reads."""
    tag = Tag(tag_for_keyword(keyword))
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    return ds


@pytest.mark.parametrize(("keyword", "raw", "expected"), SLOPPY, ids=lambda v: repr(v)[:24])
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the sloppy value itself
def test_sloppy_header_value_still_gives_a_readable_sr_and_sc(
    keyword: str,
    raw: bytes,
    expected: str | None,
    results_phantom: Phantom,
    results_card: ModelCard,
    tmp_path: Path,
) -> None:
    source = as_sent(results_phantom(11, True), keyword, raw)
    sr = build_sr([source], Finding(0.91, results_card.threshold), results_card)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    summary = read_sr(path)
    assert summary.present is True and summary.probability == pytest.approx(0.91)
    parsed = hd.sr.srread(path)
    assert parsed.StudyInstanceUID == source.StudyInstanceUID
    assert parsed.PatientID == source.PatientID
    if expected is None:
        assert keyword not in parsed
    else:
        assert str(parsed[keyword].value) == expected

    sc = build_heatmap_sc(source, np.eye(8), Finding(0.91, results_card.threshold), results_card)
    if keyword in sc or expected == "":
        assert str(sc[keyword].value or "") == (expected or "")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sr_from_all_sloppy_values_at_once_has_no_dciodvfy_errors(
    results_phantom: Phantom,
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
) -> None:
    source = results_phantom(12, True)
    for keyword, raw, _ in SLOPPY:
        as_sent(source, keyword, raw)
    sr = build_sr([source], Finding(0.2, results_card.threshold), results_card)
    assert dciodvfy_errors(sr) == []
    sc = build_heatmap_sc(source, np.eye(8), Finding(0.2, results_card.threshold), results_card)
    assert dciodvfy_errors(sc) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sanitised_copy_names_each_changed_keyword_never_a_value(results_phantom: Phantom) -> None:
    source = results_phantom(13, True)
    for keyword, raw in (("PatientSex", b"U "), ("PatientBirthDate", b"1960"), ("StudyTime", b"25:61")):
        as_sent(source, keyword, raw)
    before = copy.deepcopy(source)

    header, changed = sanitised_copy(source)

    assert changed == ["PatientBirthDate", "PatientSex", "StudyTime"]
    assert changed_keywords([source, source]) == ["PatientBirthDate", "PatientSex", "StudyTime"]
    assert not {"PatientSex", "PatientBirthDate", "StudyTime"} & set(header.dir())
    assert source == before
    # only what the results need: never pixel data, nor acquisition details they do not copy
    assert "PixelData" not in header and "KVP" not in header and "WindowCenter" not in header
    assert set(header.dir()) <= set(RESULT_KEYWORDS)


def test_a_clean_header_is_copied_unchanged(results_phantom: Phantom) -> None:
    source = results_phantom(14, True)
    header, changed = sanitised_copy(source)
    assert changed == []
    for keyword in header.dir():
        assert header[keyword] == source[keyword], keyword


def test_non_ascii_text_under_a_charset_highdicom_refuses_is_kept_as_utf8(
    results_phantom: Phantom, results_card: ModelCard, tmp_path: Path
) -> None:
    """['', 'ISO 2022 IR 87'] (PS3.5 H.3.1) is valid DICOM that highdicom does not accept."""
    source = results_phantom(15, True)
    source.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    source.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    sr = build_sr([source], Finding(0.3, results_card.threshold), results_card)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert read_sr(path).present is False


def test_result_keywords_cover_what_highdicom_copies_from_the_evidence() -> None:
    """highdicom copies every root attribute of the Patient and Study modules of the evidence's
    IOD into the SR: the sanitised copy must hold them all, or the SR would lose some."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map

    modules = get_module_attribute_map()
    copied = {
        str(item["keyword"])
        for iod in get_iod_module_map().values()
        for module in iod
        if module["ie"] in ("Patient", "Study")
        for item in modules[module["key"]]
        if not item["path"]
    }
    assert copied <= set(RESULT_KEYWORDS)


def test_minimal_sr_files_the_finding_with_the_patient_and_study_only(
    results_phantom: Phantom,
    results_card: ModelCard,
    dciodvfy_errors: Callable[[pydicom.Dataset], list[str]],
    tmp_path: Path,
) -> None:
    source = results_phantom(16, True)
    source.PatientComments = "free text a site should not see twice"
    sr = build_sr([source], Finding(0.77, results_card.threshold), results_card, minimal=True)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    summary = read_sr(path)
    assert summary.present is True and summary.probability == pytest.approx(0.77)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "StudyID"):
        assert sr[keyword].value == source[keyword].value, keyword
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
        assert keyword in sr and not sr[keyword].value, keyword  # Type 2: present, empty
    assert "PatientAge" not in sr and "PatientComments" not in sr and "StudyDescription" not in sr
    assert set(MINIMAL_KEYWORDS) < set(RESULT_KEYWORDS)
    assert dciodvfy_errors(sr) == []
    sc = build_heatmap_sc(
        source, np.eye(8), Finding(0.77, results_card.threshold), results_card, minimal=True
    )
    assert sc.PatientID == source.PatientID and not sc.PatientBirthDate
    assert dciodvfy_errors(sc) == []


def test_a_character_set_is_kept_exactly_when_highdicom_can_write_it() -> None:
    from highdicom.valuerep import _check_specific_character_set

    from dicomnode.results.sanitise import _writable_charset

    terms = [v.value for v in hd.SpecificCharacterSetValues] + ["", "ISO_IR 6", "ISO 2022 IR 149"]
    for value in [*terms, *([a, b] for a in terms for b in terms)]:
        try:
            _check_specific_character_set(value)
            accepted = True
        except ValueError:
            accepted = False
        assert _writable_charset(value) is accepted, value
