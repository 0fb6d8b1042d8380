from __future__ import annotations

import numpy as np
import pytest

from dicomnode.config import load_settings
from dicomnode.model.selection import SelectionRules, select
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
