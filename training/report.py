"""The training report: ``report.md`` and ``report.html`` with PNG plots and the metrics table.

Plots (drawn by :mod:`training.plots`, no matplotlib): ROC and precision-recall curves with the
operating point, the reliability diagram (calibration) with the share of cases per bin, the
score distributions of both classes around the threshold, and per-epoch training curves (loss,
validation loss, validation AUROC and AP). The table gives every metric of the model card with
its bootstrap confidence interval, for validation and, when the run had one, the test split.

``python -m training train ... --report DIR`` writes it after training. Torch-free: it takes the
card and plain arrays, so a report can be rebuilt from saved scores.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.model import ModelCard
from training.evaluate import calibration_bins, expected_calibration_error, precision_recall_curve, roc_curve
from training.plots import GREY, PALETTE, Chart, Series

REPORT_MD = "report.md"
REPORT_HTML = "report.html"

#: rows of the metrics table: (metrics key, label)
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("average_precision", "Average precision"),
    ("sensitivity", "Sensitivity (recall)"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"),
    ("f1", "F1"),
    ("accuracy", "Accuracy"),
    ("ece", "Calibration error (ECE, 10 bins)"),
    ("threshold", "Threshold"),
    ("n", "Cases"),
    ("n_positive", "Positive cases"),
)

LabelsScores = tuple[np.ndarray, np.ndarray]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.3f}"
    return str(value)


def _cell(metrics: Mapping[str, Any] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return "-"
    text = _fmt(metrics[key])
    ci = metrics.get(f"{key}_ci")
    if ci:
        text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def metrics_table(val: Mapping[str, Any], test: Mapping[str, Any] | None = None) -> list[list[str]]:
    """Header row and one row per metric: label, validation value (CI), [test value (CI)]."""
    header = ["Metric", "Validation"] + (["Test"] if test else [])
    rows = [header]
    for key, label in TABLE_ROWS:
        rows.append([label, _cell(val, key)] + ([_cell(test, key)] if test else []))
    return rows


def confusion_table(metrics: Mapping[str, Any]) -> list[list[str]]:
    """2x2 confusion matrix at the threshold: header row, then the truly positive and negative rows."""
    return [
        ["", "Called positive", "Called negative"],
        ["Pneumonia", str(metrics.get("tp", "-")), str(metrics.get("fn", "-"))],
        ["No pneumonia", str(metrics.get("fp", "-")), str(metrics.get("tn", "-"))],
    ]


def _check_pair(name: str, pair: LabelsScores) -> LabelsScores:
    y = np.asarray(pair[0]).astype(bool).ravel()
    s = np.asarray(pair[1], dtype=np.float64).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"{name}: need as many labels as scores (got {y.size} and {s.size}), at least one")
    return y, s


def _ci_label(metrics: Mapping[str, Any] | None, key: str) -> str:
    if not metrics or key not in metrics:
        return ""
    ci = metrics.get(f"{key}_ci")
    return f"{metrics[key]:.3f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def roc_chart(splits: Mapping[str, LabelsScores], metrics: Mapping[str, Mapping[str, Any]]) -> Chart:
    """ROC curves of each split, the chance diagonal and the operating point of each split."""
    chart = Chart("ROC", "1 - specificity", "Sensitivity")
    chart.add(Series([0, 1], [0, 1], color=GREY, width=1, dash=6))
    for name, (y, s) in splits.items():
        fpr, tpr, _ = roc_curve(y, s)
        chart.add(Series(fpr, tpr, label=f"{name} AUROC {_ci_label(metrics.get(name), 'auroc')}"))
    for i, name in enumerate(splits):
        m = metrics.get(name) or {}
        if "sensitivity" in m and "specificity" in m:
            chart.add(
                Series([1 - m["specificity"]], [m["sensitivity"]], style="markers", color=PALETTE[i], width=3)
            )
    return chart


def pr_chart(splits: Mapping[str, LabelsScores], metrics: Mapping[str, Mapping[str, Any]]) -> Chart:
    """Precision-recall curves, the prevalence of each split (dashed) and the operating points."""
    chart = Chart("Precision-recall", "Recall (sensitivity)", "Precision", legend="lower left")
    for i, (name, (y, s)) in enumerate(splits.items()):
        recall, precision, _ = precision_recall_curve(y, s)
        chart.add(
            Series(
                np.r_[0.0, recall],
                np.r_[precision[0], precision],
                label=f"{name} AP {_ci_label(metrics.get(name), 'average_precision')}",
                color=PALETTE[i],
            )
        )
        chart.add(Series([0, 1], [y.mean()] * 2, color=PALETTE[i], width=1, dash=6))
        m = metrics.get(name) or {}
        if "sensitivity" in m and np.isfinite(m.get("precision", np.nan)):
            chart.add(
                Series([m["sensitivity"]], [m["precision"]], style="markers", color=PALETTE[i], width=3)
            )
    return chart


def calibration_chart(splits: Mapping[str, LabelsScores], n_bins: int = 10) -> Chart:
    """Reliability diagram: fraction positive against mean score per bin; bars: share of cases."""
    chart = Chart("Calibration", "Mean predicted probability", "Fraction positive", legend="upper left")
    chart.add(Series([0, 1], [0, 1], color=GREY, width=1, dash=6))
    first = next(iter(splits))
    _, _, count = calibration_bins(*splits[first], n_bins)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    chart.add(
        Series(
            centres,
            count / count.sum(),
            label=f"{first} share of cases",
            color=(200, 215, 235),
            style="bars",
            bar_width=1.0 / n_bins,
        )
    )
    for i, (name, (y, s)) in enumerate(splits.items()):
        mean_score, frac_pos, _ = calibration_bins(y, s, n_bins)
        used = np.isfinite(mean_score)
        ece = expected_calibration_error(y, s, n_bins)
        chart.add(
            Series(
                mean_score[used],
                frac_pos[used],
                label=f"{name} ECE {ece:.3f}",
                style="line+markers",
                color=PALETTE[i],
            )
        )
    return chart


def score_chart(name: str, pair: LabelsScores, threshold: float, n_bins: int = 20) -> Chart:
    """Histograms of the scores of positive and negative cases, and the threshold."""
    y, s = pair
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    pos = np.histogram(np.clip(s[y], 0, 1), edges)[0] / max(1, int(y.sum()))
    neg = np.histogram(np.clip(s[~y], 0, 1), edges)[0] / max(1, int((~y).sum()))
    top = float(max(pos.max(), neg.max(), 0.05)) * 1.1
    chart = Chart(
        f"Scores, {name}", "Predicted probability", "Share of class", ylim=(0.0, top), legend="upper centre"
    )
    w = 1.0 / n_bins / 2
    chart.add(Series(centres - w / 2, neg, label="no pneumonia", style="bars", bar_width=w, color=PALETTE[0]))
    chart.add(Series(centres + w / 2, pos, label="pneumonia", style="bars", bar_width=w, color=PALETTE[3]))
    chart.add(
        Series(
            [threshold] * 2, [0, top], label=f"threshold {threshold:.3f}", color=(0, 0, 0), width=1, dash=5
        )
    )
    return chart


def curves_charts(history: Sequence[Mapping[str, float]]) -> list[tuple[str, Chart]]:
    """Per-epoch loss (train and validation) and validation AUROC/AP charts."""
    if not history:
        return []
    epochs = [float(h["epoch"]) for h in history]
    xlim = (min(epochs) - 0.5, max(epochs) + 0.5) if len(epochs) > 1 else (epochs[0] - 1, epochs[0] + 1)
    losses = [h[k] for h in history for k in ("loss", "val_loss") if k in h and np.isfinite(h[k])]
    top = max(losses) * 1.1 if losses else 1.0
    loss = Chart(
        "Loss", "Epoch", "Weighted BCE", xlim=xlim, ylim=(0.0, top), legend="upper right", x_integer=True
    )
    loss.add(Series(epochs, [h.get("loss", np.nan) for h in history], label="train", style="line+markers"))
    if any("val_loss" in h for h in history):
        loss.add(
            Series(
                epochs, [h.get("val_loss", np.nan) for h in history], label="validation", style="line+markers"
            )
        )
    scores = [h[k] for h in history for k in ("val_auroc", "val_ap") if k in h]
    low = min(scores) if scores else 0.0
    lo = max(0.0, min(0.5, np.floor(low * 10) / 10))
    auc = Chart("Validation AUROC and AP", "Epoch", "Score", xlim=xlim, ylim=(lo, 1.0), x_integer=True)
    auc.add(
        Series(epochs, [h.get("val_auroc", np.nan) for h in history], label="AUROC", style="line+markers")
    )
    auc.add(
        Series(
            epochs,
            [h.get("val_ap", np.nan) for h in history],
            label="average precision",
            style="line+markers",
        )
    )
    return [("loss.png", loss), ("val_auroc.png", auc)]


def md_table(rows: list[list[str]]) -> str:
    """A Markdown table: the first row is the header."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def html_table(rows: list[list[str]]) -> str:
    """An HTML table (cells escaped): the first row is the header."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    out_dir: Path,
    card: ModelCard,
    *,
    val: LabelsScores,
    test: LabelsScores | None = None,
    history: Sequence[Mapping[str, float]] = (),
    command: str | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and their PNGs to ``out_dir``; return the .md path.

    ``val`` and ``test`` are ``(labels, scores)`` of the model the card describes; the table's
    numbers come from ``card.metrics["val"]`` / ``["test"]`` (as exported), the plots from the
    arrays. ``history`` is :attr:`training.train.TrainResult.history`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits: dict[str, LabelsScores] = {"validation": _check_pair("val", val)}
    if test is not None:
        splits["test"] = _check_pair("test", test)
    metrics: dict[str, Mapping[str, Any]] = {"validation": card.metrics.get("val") or {}}
    if test is not None:
        metrics["test"] = card.metrics.get("test") or {}

    figures: list[tuple[str, str, Chart]] = [
        ("roc.png", "ROC curve; dots: the operating point at the threshold", roc_chart(splits, metrics)),
        ("pr.png", "Precision-recall curve; dashed: prevalence", pr_chart(splits, metrics)),
        (
            "calibration.png",
            "Reliability diagram (10 equal-width bins); bars: share of cases per bin",
            calibration_chart(splits),
        ),
        (
            "scores_validation.png",
            "Validation score distributions per class and the threshold",
            score_chart("validation", splits["validation"], card.threshold),
        ),
    ]
    figures += [(f, "Training curves per epoch", c) for f, c in curves_charts(history)]
    for filename, _, chart in figures:
        chart.save(out_dir / filename)

    val_m, test_m = metrics["validation"], metrics.get("test")
    summary = [
        ["Model", f"{card.name} {card.version}"],
        ["Architecture", card.architecture],
        ["Created", card.created or "-"],
        ["Data fingerprint", card.data_fingerprint or "-"],
        [
            "Threshold",
            f"{card.threshold:.4f} (target sensitivity {card.metrics.get('target_sensitivity', '-')})",
        ],
        [
            "Cases train / val / test",
            " / ".join(str(card.metrics.get(k, "-")) for k in ("n_train", "n_val", "n_test")),
        ],
        ["Best epoch", str(card.metrics.get("best_epoch", "-"))],
        ["Preprocessing", json.dumps(card.preprocess, sort_keys=True)],
    ]
    ci = val_m.get("ci") or {}
    ci_note = (
        f"Intervals: {ci.get('method', 'bootstrap')}, {ci.get('n')} resamples, "
        f"{100 * (1 - float(ci.get('alpha', 0.05))):.0f} %; the threshold is held fixed."
        if ci
        else "No confidence intervals (trained with --bootstrap 0)."
    )
    table = metrics_table(val_m, test_m)
    md = [f"# Training report: {card.name} {card.version}", "", md_table([["", ""], *summary]), ""]
    if command:
        md += ["Repeat this run with:", "", "```", command, "```", ""]
    md += [
        "## Metrics",
        "",
        md_table(table),
        "",
        ci_note,
        "",
        "Confusion matrix at the threshold, validation:",
        "",
    ]
    md += [md_table(confusion_table(val_m)), ""]
    if test_m:
        md += ["Confusion matrix at the threshold, test:", "", md_table(confusion_table(test_m)), ""]
    md += ["## Plots", ""]
    for filename, caption, _ in figures:
        md += [f"![{caption}]({filename})", "", f"*{caption}*", ""]
    (out_dir / REPORT_MD).write_text("\n".join(md))

    esc = html.escape
    body = [
        f"<h1>Training report: {esc(card.name)} {esc(card.version)}</h1>",
        html_table([["", ""], *summary]),
    ]
    if command:
        body.append(f"<p>Repeat this run with:</p><pre>{esc(command)}</pre>")
    body += ["<h2>Metrics</h2>", html_table(table), f"<p>{esc(ci_note)}</p>"]
    body += ["<p>Confusion matrix at the threshold, validation:</p>", html_table(confusion_table(val_m))]
    if test_m:
        body += ["<p>Confusion matrix at the threshold, test:</p>", html_table(confusion_table(test_m))]
    body.append("<h2>Plots</h2>")
    for filename, caption, _ in figures:
        body.append(
            f'<figure><img src="{filename}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
        )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "figure{display:inline-block;margin:8px}"
    )
    (out_dir / REPORT_HTML).write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(card.name)} {esc(card.version)}'
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return out_dir / REPORT_MD


__all__ = [
    "REPORT_HTML",
    "REPORT_MD",
    "calibration_chart",
    "confusion_table",
    "curves_charts",
    "html_table",
    "md_table",
    "metrics_table",
    "pr_chart",
    "roc_chart",
    "score_chart",
    "write_report",
]
