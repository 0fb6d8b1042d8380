from __future__ import annotations

import numpy as np
import pytest

from dicomnode.config import load_settings
from dicomnode.model.selection import SECONDARY_CAPTURE_SOP_CLASS, SelectionRules, select
from dicomnode.testing.phantoms import make_phantom


@pytest.fixture
def dx():  # type: ignore[no-untyped-def]
    return make_phantom(np.random.default_rng(5), False, size=64)


def test_frontal_chest_dx_is_selected(dx) -> None:  # type: ignore[no-untyped-def]
    d = select(dx, SelectionRules())
    assert d.selected and d.sop_instance_uid == dx.SOPInstanceUID


def test_lateral_view_is_skipped_with_reason(dx) -> None:  # type: ignore[no-untyped-def]
    dx.ViewPosition = "LL"
    d = select(dx, SelectionRules())
    assert not d.selected and "view LL" in d.reason


def test_other_body_part_and_sop_class_are_skipped(dx) -> None:  # type: ignore[no-untyped-def]
    dx.BodyPartExamined = "KNEE"
    assert "body part KNEE" in select(dx, SelectionRules()).reason
    dx.BodyPartExamined = "CHEST"
    dx.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    assert "not CR/DX" in select(dx, SelectionRules()).reason


def test_missing_view_is_accepted_unless_rules_require_one(dx) -> None:  # type: ignore[no-untyped-def]
    del dx.ViewPosition
    assert select(dx, SelectionRules()).selected
    strict = load_settings(env={"DICOMNODE_SELECT_VIEWS": "PA"}).selection_rules
    assert strict.views == ("PA",)
    assert not select(dx, strict).selected


def test_missing_pixel_data_is_skipped(dx) -> None:  # type: ignore[no-untyped-def]
    del dx.PixelData
    assert select(dx, SelectionRules()).reason == "no pixel data"


def _as_secondary_capture(ds):  # type: ignore[no-untyped-def]
    """``ds`` relabelled as a Secondary Capture, as the NIH and RSNA conversions are."""
    ds.SOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
    return ds


def test_secondary_capture_is_not_read_by_default_and_the_reason_names_the_setting(dx) -> None:  # type: ignore[no-untyped-def]
    d = select(_as_secondary_capture(dx), SelectionRules())
    assert not d.selected
    assert d.reason == "Secondary Capture is not read (DICOMNODE_SELECT_SECONDARY_CAPTURE is off)"


def test_grey_chest_secondary_capture_is_read_when_the_setting_is_on(dx) -> None:  # type: ignore[no-untyped-def]
    rules = load_settings(env={"DICOMNODE_SELECT_SECONDARY_CAPTURE": "true"}).selection_rules
    assert rules.secondary_capture
    assert select(_as_secondary_capture(dx), rules).selected


def test_secondary_capture_still_needs_grey_pixels_and_the_other_rules(dx) -> None:  # type: ignore[no-untyped-def]
    rules = SelectionRules(secondary_capture=True)
    sc = _as_secondary_capture(dx)
    sc.Modality = "OT"  # a screen capture or scanned document
    assert "modality OT" in select(sc, rules).reason
    sc.Modality = "CR"
    sc.PhotometricInterpretation, sc.SamplesPerPixel = "RGB", 3  # the node's own heatmaps are RGB
    assert select(sc, rules).reason == "Secondary Capture in RGB, not grey"
    sc.PhotometricInterpretation, sc.SamplesPerPixel = "MONOCHROME2", 1
    sc.BodyPartExamined = "SKULL"
    assert "body part SKULL" in select(sc, rules).reason
