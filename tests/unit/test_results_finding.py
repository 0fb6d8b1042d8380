"""Finding: validation, presence at the threshold, priority; result UIDs: deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import UID

from dicomnode.results import Finding, Priority, ResultUIDs, result_uids


def test_finding_at_threshold_is_present_and_urgent() -> None:
    finding = Finding(probability=0.42, threshold=0.42)
    assert finding.present
    assert finding.priority is Priority.URGENT


def test_finding_below_threshold_is_absent_and_routine() -> None:
    finding = Finding(probability=0.4199, threshold=0.42)
    assert not finding.present
    assert finding.priority is Priority.ROUTINE


def test_finding_accepts_numpy_scalars_as_floats() -> None:
    finding = Finding(probability=np.float32(0.75), threshold=np.float64(0.5))
    assert type(finding.probability) is float
    assert finding.present


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), 42.0])
def test_finding_rejects_probability_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        Finding(probability=bad, threshold=0.5)


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_finding_rejects_non_numbers(bad: object) -> None:
    with pytest.raises(TypeError, match="threshold"):
        Finding(probability=0.5, threshold=bad)  # type: ignore[arg-type]


STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_result_uids_are_deterministic() -> None:
    assert result_uids(STUDY, "1.0") == result_uids(STUDY, "1.0")


def test_result_uids_are_valid_and_distinct() -> None:
    uids = result_uids(STUDY, "1.0")
    values = [uids.sr_series, uids.sr_instance, uids.sc_series, uids.sc_instance]
    assert all(UID(v).is_valid for v in values)
    assert len(set(values)) == 4
    assert STUDY not in values


def test_result_uids_change_with_model_version_and_study() -> None:
    base = result_uids(STUDY, "1.0")
    other_version = result_uids(STUDY, "1.1")
    other_study = result_uids(STUDY + ".2", "1.0")
    for other in (other_version, other_study):
        assert not {base.sr_instance, base.sc_instance} & {other.sr_instance, other.sc_instance}


def test_result_uids_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="study_uid"):
        result_uids("not a uid", "1.0")
    with pytest.raises(ValueError, match="model_version"):
        result_uids(STUDY, "")
    with pytest.raises(ValueError, match="different"):
        ResultUIDs(STUDY, STUDY, STUDY + ".1", STUDY + ".2")
