"""Metrics in numpy agree with their definitions: AUROC, AP, operating point, calibration error,
bootstrap intervals, and the score histogram the drift monitor takes as its baseline."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.model.histogram import SCORE_BIN_EDGES, score_histogram
from training.evaluate import (
    average_precision,
    bootstrap_ci,
    calibration_bins,
    evaluate_scores,
    expected_calibration_error,
    metrics_at_threshold,
    precision_recall_curve,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
)


def _pairwise_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_auroc_equals_the_pairwise_probability_with_ties_counted_half() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auroc_extremes() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.full(4, 0.5)) == 0.5


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.ones(5), np.arange(5.0))


def test_average_precision_by_hand() -> None:
    # ranking: 1 (pos), 0.8 (neg), 0.6 (pos), 0.4 (neg): AP = 0.5*1 + 0.5*(2/3)
    y = np.array([1, 0, 1, 0])
    s = np.array([1.0, 0.8, 0.6, 0.4])
    assert average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == 1.0


def test_roc_curve_runs_from_zero_to_one() -> None:
    fpr, tpr, thr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(thr) < 0)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100)
    s = rng.random(100) + 0.4 * y
    fpr, tpr, _ = roc_curve(y, s)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s))


def test_threshold_is_the_highest_that_reaches_the_target_sensitivity() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.05, 0.5, 0.4])
    t = threshold_for_sensitivity(y, s, 0.8)  # 4 of 5 positives: 0.9, 0.8, 0.7, 0.5
    assert t == 0.5
    assert metrics_at_threshold(y, s, t)["sensitivity"] == 0.8
    assert threshold_for_sensitivity(y, s, 1.0) == 0.3


def test_metrics_at_threshold_counts() -> None:
    y = np.array([1, 1, 0, 0, 1])
    s = np.array([0.9, 0.2, 0.6, 0.1, 0.5])
    m = metrics_at_threshold(y, s, 0.5)  # called positive: 0.9 (tp), 0.6 (fp), 0.5 (tp)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)


def test_evaluate_scores_uses_a_given_threshold_and_reports_everything() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.random(200) + 0.5 * y
    picked = evaluate_scores(y, s, target_sensitivity=0.9)
    assert picked["sensitivity"] >= 0.9
    fixed = evaluate_scores(y, s, threshold=0.7)
    assert fixed["threshold"] == 0.7
    for key in ("auroc", "average_precision", "specificity", "precision", "f1", "accuracy"):
        assert 0.0 <= fixed[key] <= 1.0


def test_nan_scores_are_reported_as_divergence() -> None:
    with pytest.raises(ValueError, match="diverged"):
        roc_auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_ece_weighs_each_bins_gap_by_its_share_of_cases() -> None:
    y = np.array([0, 1, 1, 1])
    s = np.array([0.1, 0.1, 0.9, 0.9])
    # bin [0.1, 0.2): mean score 0.1, half positive -> gap 0.4; bin [0.9, 1.0]: 0.9 vs 1.0 -> 0.1
    assert expected_calibration_error(y, s) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    # one positive in four cases scored 0.25: perfectly calibrated
    assert expected_calibration_error(np.array([1, 0, 0, 0]), np.full(4, 0.25)) == pytest.approx(0.0)
    # always certain and always wrong
    assert expected_calibration_error(np.array([0, 1]), np.array([1.0, 0.0])) == pytest.approx(1.0)


def test_calibration_bins_are_equal_width_with_one_in_the_last_bin() -> None:
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.0, 0.05, 0.55, 0.999, 1.0])
    mean_score, frac_pos, count = calibration_bins(y, s)
    assert count.tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert mean_score[0] == pytest.approx(0.025) and frac_pos[0] == pytest.approx(0.5)
    assert np.isnan(mean_score[1]) and np.isnan(frac_pos[1])
    assert frac_pos[9] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="probabilities"):
        calibration_bins(y, s + 1.0)


def test_score_histogram_is_the_drift_monitors_ten_bins() -> None:
    s = np.random.default_rng(3).random(500) ** 2
    hist = score_histogram(np.r_[s, 1.0, 0.0])
    assert hist["edges"] == list(SCORE_BIN_EDGES) == [i / 10 for i in range(11)]
    assert hist["counts"] == np.histogram(np.r_[s, 1.0, 0.0], bins=np.linspace(0, 1, 11))[0].tolist()
    assert sum(hist["counts"]) == 502
    assert len(hist["fractions"]) == 10 and sum(hist["fractions"]) == pytest.approx(1.0)


def test_bootstrap_ci_of_a_mean_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 400)
    s = rng.random(400)
    lo, hi = bootstrap_ci(y, s, lambda yy, ss: float(ss.mean()), n=2000, seed=1)
    half = 1.96 * s.std() / np.sqrt(s.size)
    assert lo < s.mean() < hi
    assert hi - lo == pytest.approx(2 * half, rel=0.1)
    assert bootstrap_ci(y, s, lambda yy, ss: float(ss.mean()), n=2000, seed=1) == (lo, hi)  # seeded


def test_bootstrap_ci_of_a_perfect_ranking_is_one_and_a_wider_alpha_narrows_it() -> None:
    y = np.array([0] * 20 + [1] * 20)
    s = np.r_[np.linspace(0.0, 0.4, 20), np.linspace(0.6, 1.0, 20)]
    assert bootstrap_ci(y, s, roc_auc, n=200) == (1.0, 1.0)
    noisy = s + np.random.default_rng(0).normal(0, 0.3, 40)
    lo95, hi95 = bootstrap_ci(y, noisy, roc_auc, n=500, alpha=0.05)
    lo50, hi50 = bootstrap_ci(y, noisy, roc_auc, n=500, alpha=0.5)
    assert lo95 < lo50 <= roc_auc(y, noisy) <= hi50 < hi95 <= 1.0


def test_bootstrap_refuses_data_without_both_classes() -> None:
    with pytest.raises(ValueError, match="one class"):
        bootstrap_ci(np.ones(10), np.linspace(0, 1, 10), roc_auc, n=50)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(np.array([0, 1]), np.array([0.1, 0.9]), roc_auc, alpha=1.5)


def test_evaluate_scores_with_bootstrap_adds_intervals_around_each_value() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    s = np.clip(rng.random(300) * 0.7 + 0.3 * y, 0, 1)
    m = evaluate_scores(y, s, target_sensitivity=0.9, bootstrap=300, seed=4)
    for key in ("auroc", "average_precision", "sensitivity", "specificity"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi, key
    assert m["ci"] == {"method": "percentile bootstrap", "n": 300, "alpha": 0.05}
    assert m["recall"] == m["sensitivity"]
    assert m["ece"] == pytest.approx(expected_calibration_error(y, s))
    assert "auroc_ci" not in evaluate_scores(y, s)  # per-epoch evaluation stays cheap


def test_precision_recall_curve_ends_at_full_recall_and_the_prevalence() -> None:
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    recall, precision, thr = precision_recall_curve(y, s)
    assert recall.tolist() == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5, 0.4])
    assert thr.tolist() == [0.9, 0.8, 0.7, 0.2, 0.1]
