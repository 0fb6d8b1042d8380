"""Binary classification metrics in numpy (no sklearn): AUROC, AP, operating point.

Convention everywhere: a case is called positive when ``score >= threshold`` (as the model card's
``threshold`` is read by the worker).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} labels but scores has {s.size} values")
    if y.size == 0:
        raise ValueError("no samples to evaluate: check the split sizes")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf: the model diverged; lower the learning rate")
    return y, s


def _need_both_classes(y: np.ndarray, what: str) -> None:
    if y.all() or not y.any():
        raise ValueError(
            f"{what} needs both positive and negative cases, got {int(y.sum())} positive of "
            f"{y.size}: enlarge the split or stratify it"
        )


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half)."""
    y, s = _check(y_true, scores)
    _need_both_classes(y, "AUROC")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average rank within groups of tied scores
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative TP and FP counts at each distinct score, highest first, and the scores."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s.size - 1]  # last index of each tie group
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), s_sorted[last]


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds decreasing, starting from (0, 0) at +inf."""
    y, s = _check(y_true, scores)
    _need_both_classes(y, "an ROC curve")
    tps, fps, thr = _curve(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (as sklearn)."""
    y, s = _check(y_true, scores)
    if not y.any():
        raise ValueError("average precision needs at least one positive case")
    tps, fps, _ = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_for_sensitivity(y_true: np.ndarray, scores: np.ndarray, target: float = 0.9) -> float:
    """Highest threshold whose sensitivity (``score >= threshold``) reaches ``target``."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity {target} must lie in (0, 1]")
    y, s = _check(y_true, scores)
    if not y.any():
        raise ValueError("picking a threshold for a sensitivity needs positive cases")
    tps, _, thr = _curve(y, s)
    k = int(np.argmax(tps / tps[-1] >= target - 1e-12))
    return float(thr[k])


def metrics_at_threshold(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion counts and sensitivity, specificity, precision, F1, accuracy at ``threshold``."""
    y, s = _check(y_true, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))

    def ratio(a: int, b: int) -> float:
        return float(a / b) if b else float("nan")

    sens, prec = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = 2 * prec * sens / (prec + sens) if (tp and prec + sens > 0) else 0.0
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": ratio(tn, tn + fp),
        "precision": prec,
        "f1": float(f1),
        "accuracy": ratio(tp + tn, y.size),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def evaluate_scores(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float | None = None,
    target_sensitivity: float = 0.9,
) -> dict[str, Any]:
    """All metrics for one set of scores.

    With ``threshold=None`` the threshold is picked here for ``target_sensitivity`` (do that on
    validation only, and pass the result in for test data).
    """
    y, s = _check(y_true, scores)
    if threshold is None:
        threshold = threshold_for_sensitivity(y, s, target_sensitivity)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "auroc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
    }
    out.update(metrics_at_threshold(y, s, threshold))
    return out


__all__ = [
    "average_precision",
    "evaluate_scores",
    "metrics_at_threshold",
    "roc_auc",
    "roc_curve",
    "threshold_for_sensitivity",
]
