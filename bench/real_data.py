"""Real-data benchmark: train on the Kermany chest radiographs and evaluate, in one command.

    .venv/bin/python bench/real_data.py --results dicomnode-data/real-data   # minutes: docs/models.md

Data: ``kermany-train/{NORMAL,PNEUMONIA}`` in the shared real-data folder (``../shared/data`` beside
the repository, or ``$DICOMNODE_DATA_DIR``; ``--data-dir`` names the class folders directly). The
benchmark says so and exits 0 where the data is absent. Cite Kermany et al., Cell 2018,
doi:10.17632/rscbjbr9sj.2 (CC BY 4.0) wherever these figures are shown.

What it does, with the package's own code only:

1. a three-way patient split (``--val-fraction`` / ``--test-fraction``, stratified, seeded): train;
   validation for early stopping and the threshold (``--target-sensitivity``); a held-out test
   part that no step of training looks at;
2. ``training.train`` with the recipe given by the options (defaults: the run in docs/models.md);
3. export to ONNX (``training.export``), then the held-out part scored through the node's own
   inference path (``training.assess``: ``PneumoniaModel`` + the card's preprocessing), at the
   card's threshold, with 95 % bootstrap intervals over patients;
4. figures printed as a table beside Kermany et al.'s published ones and written to
   ``--results``: ``real_data.json``, ``real_data.md``, the model, the training report
   (``report/``) and the held-out evaluation report (``heldout/``).

The published figures are on Kermany's official test split (not in the shared folder); ours are on
held-out patients of their training split: the same source, not the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import onnxruntime
import torch

from dicomnode.model.card import DEFAULT_BASE_VERSION, weights_version
from training.__main__ import train_config_from_args
from training.assess import evaluate_model, write_evaluation
from training.export import export_onnx
from training.image_sets import shared_data_dir
from training.report import md_table, write_report
from training.train import split_data, train, weights_fingerprint

#: Kermany et al. 2018 (Cell 172:1122), Inception v3 transfer learning, on their official test split
PUBLISHED = {"auroc": 0.968, "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901}

#: rows of the printed table: (metrics key, label)
ROWS = (
    ("auroc", "AUROC"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("accuracy", "Accuracy"),
    ("average_precision", "Average precision"),
    ("ece", "ECE (10 bins)"),
    ("threshold", "Threshold"),
    ("n", "Images"),
    ("n_patients", "Patients"),
)


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark; the defaults are the recorded run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, required=True, help="folder for the figures, model, reports")
    p.add_argument("--data-dir", type=Path, help="class folders (default: <shared data>/kermany-train)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--balance", choices=["loss", "sampler", "none"], default="loss")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--target-sensitivity", type=float, default=0.9)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--max-train-seconds", type=float, default=1500.0, help="stop after the epoch past it")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--workers", type=int, default=2, help="preprocessing threads")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    return p


def hardware(threads: int) -> dict[str, Any]:
    """What the run ran on (and how busy the machine was when it started)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cell(m: dict[str, Any] | None, key: str) -> str:
    if not m or key not in m or m[key] is None:
        return "-"
    v = m[key]
    if isinstance(v, int):
        return str(v)
    text = f"{v:.3f}"
    ci = m.get(f"{key}_ci")
    return text + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def table(val: dict[str, Any], heldout: dict[str, Any]) -> list[list[str]]:
    """Header and one row per metric: validation, held-out test, published."""
    rows = [
        [
            "Metric",
            "Validation (early stopping, threshold)",
            "Held-out test (node path)",
            "Kermany 2018 (their test split)",
        ]
    ]
    for key, label in ROWS:
        rows.append([label, _cell(val, key), _cell(heldout, key), _cell(PUBLISHED, key)])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or shared_data_dir() / "kermany-train"
    if not (data_dir / "NORMAL").is_dir() or not (data_dir / "PNEUMONIA").is_dir():
        print(
            f"real_data.skipped reason='no Kermany class folders at {data_dir}' hint='set "
            "DICOMNODE_DATA_DIR to the shared data folder or give --data-dir'",
            file=sys.stderr,
        )
        return 0
    t_wall = time.perf_counter()
    load_start = _load()
    config = train_config_from_args(args, data="classes", data_dir=data_dir)
    result = train(config)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    version = weights_version(DEFAULT_BASE_VERSION, weights_fingerprint(result.model))
    card = result.card(name="dicomnode-pneumonia-kermany", version=version)
    model_path = export_onnx(result.model, results / "model.onnx", card)
    test = None
    if result.test_labels is not None and result.test_scores is not None:
        test = (result.test_labels, result.test_scores)
    assert result.val_labels is not None and result.val_scores is not None
    write_report(
        results / "report",
        card,
        val=(result.val_labels, result.val_scores),
        test=test,
        history=result.history,
        command=config.command(),
    )

    split = split_data(config)[0]
    ev = evaluate_model(model_path, split.test, bootstrap=args.bootstrap, seed=args.seed)
    write_evaluation(results / "heldout", ev, data=f"classes {data_dir} split=test (held out)")

    epochs = [row["seconds"] for row in result.history]
    per_epoch = [b - a for a, b in zip([0.0, *epochs[:-1]], epochs, strict=True)]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t: dict[str, Any] = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch_median": round(statistics.median(per_epoch), 1),
        "seconds_per_epoch": [round(s, 1) for s in per_epoch],
        "training_seconds": round(epochs[-1], 1),
        "run_seconds": round(result.elapsed_s, 1),
        "heldout_scoring_seconds": round(ev.seconds, 1),
        "total_seconds": round(time.perf_counter() - t_wall, 1),
        # CPU seconds of this process: what the run cost whatever else shared the machine
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
    }
    hw: dict[str, Any] = {**hardware(args.threads), "loadavg_start": load_start, "loadavg_end": _load()}
    figures: dict[str, Any] = {
        "validation": result.val_metrics,
        "heldout_test_node_path": ev.metrics,
        "heldout_test_training_forward": result.test_metrics,
        "published_kermany_2018": PUBLISHED,
        "timing": t,
        "hardware": hw,
        "history": result.history,
        "split": {"train": result.n_train, "val": result.n_val, "test": result.n_test},
        "command": shlex_command(argv),
        "train_command": config.command(),
    }
    rows = table(result.val_metrics, ev.metrics)
    lines = [
        md_table(rows),
        "",
        f"Images train / validation / held-out test: {result.n_train} / {result.n_val} / {result.n_test} "
        "(patient-disjoint). 95 % intervals: percentile bootstrap over patients, threshold held fixed.",
        f"Time: {t['epochs_run']} epochs (best {t['best_epoch']}), median {t['seconds_per_epoch_median']} s "
        f"per epoch, training {t['training_seconds']} s, whole run {t['total_seconds']} s wall, "
        f"{t['cpu_seconds']} s CPU.",
        f"Hardware: {hw['platform']}, {hw['processor']}, {hw['cpu_count']} CPUs, torch {hw['torch']} with "
        f"{hw['torch_threads']} threads, onnxruntime {hw['onnxruntime']}, GPU {hw['cuda'] or 'none'}; "
        f"load average at start {hw['loadavg_start']}, at end {hw['loadavg_end']}.",
        "",
        f"Repeat: `{figures['command']}`",
    ]
    text = "\n".join(lines)
    print(text)
    (results / "real_data.md").write_text(text + "\n")
    (results / "real_data.json").write_text(json.dumps(figures, indent=2, default=float) + "\n")
    print(f"real_data.written results={results}")
    return 0


def shlex_command(argv: list[str] | None) -> str:
    """The command line that repeats this run."""
    return shlex.join([".venv/bin/python", "bench/real_data.py", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
