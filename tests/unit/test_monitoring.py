"""PSI, Wilson intervals, score histograms and baselines of dicomnode.ops.drift and
dicomnode.ops.performance (no database)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dicomnode.model.card import ModelCard
from dicomnode.model.histogram import SCORE_BIN_EDGES, score_histogram
from dicomnode.ops.drift import (
    BASELINE_CARD_KEY,
    PSI_EPSILON,
    Baseline,
    baseline_from_card,
    load_baseline,
    psi,
    psi_band,
)
from dicomnode.ops.performance import performance_from_counts, wilson_interval


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([10, 20, 30, 40], [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)


def test_psi_matches_the_formula_on_a_two_bin_shift() -> None:
    # shares 0.5/0.5 -> 0.25/0.75: (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-12)
    assert psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)


def test_psi_replaces_empty_bins_with_epsilon_and_stays_finite() -> None:
    # baseline bin 3 empty, window puts a quarter there: that term is (0.25 - eps) ln(0.25 / eps)
    value = psi([50, 50, 0], [50, 25, 25])
    expected = (0.25 - 0.5) * math.log(0.5) + (0.25 - PSI_EPSILON) * math.log(0.25 / PSI_EPSILON)
    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(2.128516, abs=1e-6)
    assert math.isfinite(psi([1, 0], [0, 1]))


def test_psi_is_larger_for_a_larger_shift_over_ten_bins() -> None:
    base = np.full(10, 100)
    small = base.copy()
    small[0], small[9] = 80, 120
    big = base.copy()
    big[:5], big[5:] = 40, 160
    assert 0 < psi(base, small) < 0.1 < psi(base, big)
    assert psi_band(psi(base, small)) == "stable"
    assert psi_band(0.17) == "moderate"
    assert psi_band(psi(base, big)) == "major"


def test_psi_refuses_mismatched_or_empty_bins() -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least one score"):
        psi([0, 0], [1, 1])


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # classic textbook values
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (45, 50, 0.7864, 0.9565),
    ],
)
def test_wilson_interval_matches_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)
    assert lo <= k / n <= hi


def test_wilson_interval_of_nothing_is_nan_and_bad_counts_are_refused() -> None:
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_performance_from_counts_computes_the_four_measures() -> None:
    p = performance_from_counts("v1", 0.3, tp=45, fp=6, tn=44, fn=5)
    assert (p.studies, p.sensitivity, p.specificity) == (100, 0.9, 0.88)
    assert p.ppv == pytest.approx(45 / 51, abs=1e-4)
    assert p.npv == pytest.approx(44 / 49, abs=1e-4)
    assert p.sensitivity_low == pytest.approx(0.7864, abs=1e-4)


def test_baseline_from_the_training_histogram_of_the_card() -> None:
    # what training.evaluate.score_histogram writes into card.metrics at export
    hist = score_histogram(np.array([0.0, 0.05, 0.1, 0.55, 0.99, 1.0]))
    base = baseline_from_card(_card({BASELINE_CARD_KEY: hist}))
    assert base is not None and list(base.counts) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]


def _card(metrics: dict[str, object]) -> ModelCard:
    return ModelCard(
        name="m", version="1.0", threshold=0.3, device_uid="1.2.3", preprocess={}, metrics=metrics
    )


def test_baseline_comes_from_the_model_card_when_it_has_a_histogram() -> None:
    counts = [5, 10, 20, 10, 5, 5, 10, 20, 10, 5]
    card = _card({BASELINE_CARD_KEY: {"edges": list(SCORE_BIN_EDGES), "counts": counts}})
    base = baseline_from_card(card)
    assert base is not None and list(base.counts) == counts and "1.0" in base.source
    assert baseline_from_card(_card({"val": {"auroc": 0.9}})) is None


def test_baseline_from_a_file_of_scores_or_json(tmp_path: Path) -> None:
    scores = tmp_path / "val.txt"
    scores.write_text("score\n0.05\n0.15\n0.95\n")
    assert list(load_baseline(scores).counts) == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    js = tmp_path / "val.json"
    js.write_text(json.dumps({"scores": [0.5, 0.51]}))
    assert load_baseline(js).counts[5] == 2
    out_of_range = tmp_path / "range.txt"
    out_of_range.write_text("0.5\n1.5\n")
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        load_baseline(out_of_range)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edges": [0, 0.5, 1], "counts": [1, 1]}))
    with pytest.raises(ValueError, match="edges must be"):
        load_baseline(bad)
    with pytest.raises(ValueError, match="non-negative counts"):
        Baseline((1, 2), "test")
