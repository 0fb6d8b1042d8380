"""Metrics in numpy agree with their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import (
    average_precision,
    evaluate_scores,
    metrics_at_threshold,
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
