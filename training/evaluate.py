"""Binary classification metrics in numpy (no sklearn): AUROC, AP, operating point, calibration,
bootstrap confidence intervals. The validation score histogram the node's drift monitor uses is
:func:`dicomnode.model.histogram.score_histogram`.

Convention everywhere: a case is called positive when ``score >= threshold`` (as the model card's
``threshold`` is read by the worker). Score bins are ten equal-width bins on [0, 1] with
``numpy.histogram``'s rule (each bin right-open, the last closed, so 1.0 falls in the last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

#: metrics that get a bootstrap confidence interval in :func:`evaluate_scores`
CI_METRICS = ("auroc", "average_precision", "sensitivity", "specificity")


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


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(recall, precision, thresholds)`` at each distinct score, thresholds decreasing."""
    y, s = _check(y_true, scores)
    if not y.any():
        raise ValueError("a precision-recall curve needs at least one positive case")
    tps, fps, thr = _curve(y, s)
    return tps / tps[-1], tps / (tps + fps), thr


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
        "recall": sens,
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
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics for one set of scores.

    With ``threshold=None`` the threshold is picked here for ``target_sensitivity`` (do that on
    validation only, and pass the result in for test data). ``bootstrap > 0`` adds
    ``<metric>_ci = [lo, hi]`` for each of :data:`CI_METRICS` (``bootstrap`` resamples, seeded;
    the threshold stays fixed, so the sensitivity interval leaves out the threshold's own
    uncertainty). ``groups`` (one patient ID per case) resamples patients instead of cases, all
    images of a drawn patient together: the interval then reflects how many patients were seen.
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
    if s.min() >= 0.0 and s.max() <= 1.0:  # probabilities; ECE means nothing for other scores
        out["ece"] = expected_calibration_error(y, s)
    if bootstrap > 0:
        thr = float(threshold)
        fns: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
            "auroc": roc_auc,
            "average_precision": average_precision,
            "sensitivity": lambda yy, ss: metrics_at_threshold(yy, ss, thr)["sensitivity"],
            "specificity": lambda yy, ss: metrics_at_threshold(yy, ss, thr)["specificity"],
        }
        for name in CI_METRICS:
            lo, hi = bootstrap_ci(y, s, fns[name], n=bootstrap, seed=seed, alpha=alpha, groups=groups)
            out[f"{name}_ci"] = [lo, hi]
        method = "percentile bootstrap" + (" over patients" if groups is not None else "")
        out["ci"] = {"method": method, "n": int(bootstrap), "alpha": float(alpha)}
        if groups is not None:
            out["n_patients"] = int(len(np.unique(np.asarray(groups))))
    return out


def round_metrics(value: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits`` decimals, inside dicts and lists too (short model-card JSON)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: round_metrics(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [round_metrics(v, digits) for v in value]
    return value


def _bin_index(s: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, s, side="right") - 1, 0, len(edges) - 2)


def _edges(n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins} must be at least 1")
    return np.linspace(0.0, 1.0, n_bins + 1)


def calibration_bins(
    y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width score bin: ``(mean score, fraction positive, count)``; NaN where empty."""
    y, s = _check(y_true, scores)
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("calibration needs probabilities in [0, 1]: pass sigmoid outputs, not logits")
    idx = _bin_index(s, _edges(n_bins))
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(idx, weights=s, minlength=n_bins) / count
        frac_pos = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins) / count
    return mean_score, frac_pos, count.astype(np.int64)


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin share) x |fraction positive - mean score|."""
    mean_score, frac_pos, count = calibration_bins(y_true, scores, n_bins)
    used = count > 0
    weights = count[used] / count.sum()
    return float(np.sum(weights * np.abs(frac_pos[used] - mean_score[used])))


def bootstrap_ci(
    y_true: np.ndarray,
    scores: np.ndarray,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of ``metric_fn(y, scores)``.

    Cases are resampled with replacement ``n`` times; resamples on which the metric is undefined
    (one class only: ValueError, or NaN) are drawn again, up to ``n`` extra times. With
    ``groups`` (a label per case, e.g. the patient), whole groups are resampled (cluster bootstrap).
    """
    if n < 1:
        raise ValueError(f"bootstrap n={n} must be at least 1 (e.g. 1000)")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha} must lie in (0, 1), e.g. 0.05 for a 95 % interval")
    y, s = _check(y_true, scores)
    draw = _resampler(y.size, groups)
    rng = np.random.default_rng([seed, 0xB007])
    values: list[float] = []
    tries = 0
    while len(values) < n and tries < 2 * n:
        tries += 1
        idx = draw(rng)
        try:
            v = float(metric_fn(y[idx], s[idx]))
        except ValueError:
            continue
        if np.isfinite(v):
            values.append(v)
    if len(values) < n:
        raise ValueError(
            f"the metric was undefined on {tries - len(values)} of {tries} bootstrap resamples: "
            "too few cases of one class to bootstrap; enlarge the split"
        )
    lo, hi = np.quantile(np.asarray(values), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def _resampler(n_cases: int, groups: np.ndarray | None) -> Callable[[np.random.Generator], np.ndarray]:
    """A function drawing one bootstrap resample's case indices: cases, or whole groups."""
    if groups is None:
        return lambda rng: rng.integers(0, n_cases, n_cases)
    g = np.asarray(groups).ravel()
    if g.size != n_cases:
        raise ValueError(f"groups has {g.size} entries but there are {n_cases} cases")
    _, codes = np.unique(g, return_inverse=True)
    order = np.argsort(codes, kind="mergesort")
    starts = np.r_[0, np.cumsum(np.bincount(codes))]
    sizes = np.diff(starts)

    def draw(rng: np.random.Generator) -> np.ndarray:
        picked = rng.integers(0, sizes.size, sizes.size)
        # the case indices of each picked group, concatenated
        lengths = sizes[picked]
        offsets = np.repeat(starts[picked] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return order[np.arange(lengths.sum()) + offsets]

    return draw


__all__ = [
    "CI_METRICS",
    "average_precision",
    "bootstrap_ci",
    "calibration_bins",
    "evaluate_scores",
    "expected_calibration_error",
    "metrics_at_threshold",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
    "round_metrics",
    "threshold_for_sensitivity",
]
