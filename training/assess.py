"""Score an exported model on a labelled set the way the node would: ``dicomnode train evaluate``.

The model is opened as the worker opens it (:class:`dicomnode.model.PneumoniaModel`: the card's
preprocessing, the same onnxruntime session and providers), every case goes through the card's
preprocessing (:func:`dicomnode.model.preprocess` for DICOM, the same steps from the VOI step on
for PNG/JPEG, see :mod:`training.image_files`), and the probabilities are read at the card's
threshold. So the figures are those of the node on this data, not of the training code's own
forward pass. Metrics carry bootstrap confidence intervals over patients; the report puts them
beside the card's own validation (and test) figures.

Before go-live a hospital runs it on a labelled sample of its own studies (a folder of DICOM files
and a ``path,label,patient_id`` CSV): docs/models.md, "Checking a model on your own data".
Torch-free.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.model import ModelCard, PneumoniaModel
from training.datasets import Sample, load_one
from training.evaluate import evaluate_scores, round_metrics
from training.report import (
    calibration_chart,
    confusion_table,
    html_table,
    md_table,
    metrics_table,
    pr_chart,
    roc_chart,
    score_chart,
)

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
EVALUATION_HTML = "evaluation.html"


@dataclass
class Evaluation:
    """The outcome of scoring one model on one labelled set."""

    card: ModelCard
    metrics: dict[str, Any]
    labels: np.ndarray
    scores: np.ndarray
    #: cases that could not be preprocessed: (file name, reason); left out of the metrics
    failed: list[tuple[str, str]]
    seconds: float
    providers: list[str]


def score_samples(
    model: PneumoniaModel, samples: Sequence[Sample], *, chunk: int = 64
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Probabilities of ``model`` for ``samples`` (preprocessed with its card's config), the
    indices of the samples scored, and the cases that failed preprocessing with the reason."""
    scores: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    config = model.preprocess_config
    for start in range(0, len(samples), chunk):
        images, idx = [], []
        for i in range(start, min(start + chunk, len(samples))):
            try:
                images.append(load_one(samples[i], config, None))
                idx.append(i)
            except (ValueError, OSError) as exc:  # the node records such an instance and goes on
                failed.append((samples[i].key, f"{type(exc).__name__}: {exc}"[:300]))
        if images:
            scores.append(model.predict(np.stack(images))[0])
            kept += idx
    return (np.concatenate(scores) if scores else np.zeros(0, np.float32)), kept, failed


def evaluate_model(
    model_path: Path,
    samples: Sequence[Sample],
    *,
    threshold: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    log: Callable[..., None] | None = None,
) -> Evaluation:
    """Score the model at ``model_path`` on ``samples`` and compute its metrics at the card's
    threshold (or ``threshold``), with confidence intervals over patients."""
    t0 = time.perf_counter()
    model = PneumoniaModel(Path(model_path))
    scores, kept, failed = score_samples(model, samples)
    if not kept:
        raise ValueError(f"none of the {len(samples)} cases could be preprocessed: {failed[:3]}")
    used = [samples[i] for i in kept]
    labels = np.array([s.label for s in used], dtype=np.int64)
    patients = np.array([s.patient_id for s in used])
    thr = float(model.card.threshold if threshold is None else threshold)
    metrics = evaluate_scores(labels, scores, threshold=thr, bootstrap=bootstrap, seed=seed, groups=patients)
    metrics["n_failed"] = len(failed)
    elapsed = time.perf_counter() - t0
    if log is not None:
        log(
            "evaluate.done",
            n=len(used),
            failed=len(failed),
            auroc=round(metrics["auroc"], 4),
            sensitivity=round(metrics["sensitivity"], 3),
            specificity=round(metrics["specificity"], 3),
            seconds=round(elapsed, 1),
        )
    return Evaluation(model.card, metrics, labels, scores, failed, elapsed, list(model.providers))


def write_evaluation(out_dir: Path, ev: Evaluation, *, data: str, command: str | None = None) -> Path:
    """Write ``evaluation.json``, ``evaluation.md`` / ``.html`` and the plots; return the .md path.

    The table gives this data set's figures beside the card's validation and test figures.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card, m = ev.card, ev.metrics
    payload = {
        "model": {"name": card.name, "version": card.version, "threshold": card.threshold},
        "data": data,
        "metrics": round_metrics(m),
        "card_metrics": {k: round_metrics(card.metrics[k]) for k in ("val", "test") if k in card.metrics},
        "failed": [{"case": k, "reason": r} for k, r in ev.failed],
        "seconds": round(ev.seconds, 1),
        "providers": ev.providers,
        "command": command,
    }
    (out_dir / EVALUATION_JSON).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

    pair = (ev.labels.astype(bool), ev.scores.astype(np.float64))
    figures = [
        (
            "roc.png",
            "ROC curve; dot: the card's operating point",
            roc_chart({"this data": pair}, {"this data": m}),
        ),
        (
            "pr.png",
            "Precision-recall curve; dashed: prevalence",
            pr_chart({"this data": pair}, {"this data": m}),
        ),
        (
            "calibration.png",
            "Reliability diagram (10 bins); bars: share of cases",
            calibration_chart({"this data": pair}),
        ),
        (
            "scores.png",
            "Score distributions per class and the threshold",
            score_chart("this data", pair, m["threshold"]),
        ),
    ]
    for filename, _, chart in figures:
        chart.save(out_dir / filename)

    card_val, card_test = card.metrics.get("val"), card.metrics.get("test")
    table = metrics_table(m, card_val)
    table[0] = ["Metric", "This data", "Card: validation"] if card_val else ["Metric", "This data"]
    if card_test:
        test_rows = metrics_table(card_test)
        table[0].append("Card: held-out test")
        for row, extra in zip(table[1:], test_rows[1:], strict=True):
            row.append(extra[1])
    ci = m.get("ci") or {}
    summary = [
        ["", ""],
        ["Model", f"{card.name} {card.version} ({card.architecture})"],
        ["Data", data],
        ["Threshold", f"{m['threshold']:.4f}"],
        ["Cases scored / failed", f"{m['n']} / {m['n_failed']}"],
        ["Patients", str(m.get("n_patients", "-"))],
        ["Providers", ", ".join(ev.providers)],
        ["Seconds", f"{ev.seconds:.1f}"],
    ]
    note = (
        f"Intervals: {ci.get('method')}, {ci.get('n')} resamples, 95 %; the threshold is the card's, held fixed."
        if ci
        else "No confidence intervals (--bootstrap 0)."
    )
    md = [f"# Evaluation: {card.name} {card.version}", "", md_table(summary), ""]
    if command:
        md += ["Repeat with:", "", "```", command, "```", ""]
    md += ["## Metrics", "", md_table(table), "", note, "", "Confusion matrix at the threshold:", ""]
    md += [md_table(confusion_table(m)), ""]
    if ev.failed:
        md += [f"{len(ev.failed)} cases could not be preprocessed (left out): see {EVALUATION_JSON}.", ""]
    md += ["## Plots", ""]
    for filename, caption, _ in figures:
        md += [f"![{caption}]({filename})", "", f"*{caption}*", ""]
    (out_dir / EVALUATION_MD).write_text("\n".join(md))

    esc = html.escape
    body = [f"<h1>Evaluation: {esc(card.name)} {esc(card.version)}</h1>", html_table(summary)]
    body += ["<h2>Metrics</h2>", html_table(table), f"<p>{esc(note)}</p>", html_table(confusion_table(m))]
    body += [
        f'<figure><img src="{f}" alt="{esc(c)}"><figcaption>{esc(c)}</figcaption></figure>'
        for f, c, _ in figures
    ]
    (out_dir / EVALUATION_HTML).write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {esc(card.name)}</title>'
        f"</head><body>{''.join(body)}</body></html>\n"
    )
    return out_dir / EVALUATION_MD


__all__ = [
    "EVALUATION_HTML",
    "EVALUATION_JSON",
    "EVALUATION_MD",
    "Evaluation",
    "evaluate_model",
    "score_samples",
    "write_evaluation",
]
