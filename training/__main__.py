"""Command line: ``python -m training {demo-model,phantoms,train,quantize,card} ...``.

Examples::

    python -m training demo-model --out models/demo.onnx
    python -m training phantoms --out data/phantoms -n 200 --labels data/phantoms.csv
    python -m training train --data folder --data-dir data/phantoms --labels data/phantoms.csv \\
        --image-size 224 --width 64 --onnx models/pneumonia.onnx --report reports/pneumonia
    python -m training quantize --model models/pneumonia.onnx --out models/pneumonia-int8.onnx \\
        --data folder --data-dir data/phantoms --labels data/phantoms.csv
    python -m training card models/pneumonia.onnx
    python -m training train --data classes --data-dir ../shared/data/kermany-train \\
        --val-fraction 0.15 --test-fraction 0.15 --image-size 64 --width 16 --epochs 10 --clip-grad 1.0 \\
        --max-train-seconds 1500 --onnx models/kermany.onnx
    python -m training evaluate --model models/kermany.onnx --data classes \\
        --data-dir ../shared/data/kermany-train --val-fraction 0.15 --test-fraction 0.15 --split val \\
        --out reports/kermany-val

``train`` prints the full command line that repeats the run (``train.start command=...``).
``evaluate`` scores an exported model through the node's own inference path on any labelled set
(the whole set, or one part of a training run's split) and writes metrics and a report.
``quantize`` takes the same data options as the training run: it rebuilds that run's validation
split, calibrates on it and says whether the data fingerprint matches the model card's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicomnode.model.card import DEFAULT_BASE_VERSION, weights_version

if TYPE_CHECKING:
    from training.image_sets import TableSpec
    from training.train import TrainConfig

#: the subcommands; ``dicomnode train`` forwards to :func:`main`, adding ``train`` unless its
#: first argument is one of these
COMMANDS = ("demo-model", "phantoms", "train", "quantize", "card", "evaluate")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    from training.datasets import DATA_SOURCES
    from training.image_sets import UNCERTAIN_POLICIES, TableSpec

    d = p.add_argument_group("data")
    d.add_argument("--data", choices=DATA_SOURCES, default="phantoms")
    d.add_argument(
        "--data-dir",
        type=Path,
        help="folder of DICOMs (folder), the RSNA download root (rsna), the folder of class folders "
        "(classes) or the images' folder of a table (table; default: the table's folder)",
    )
    d.add_argument(
        "--labels",
        type=Path,
        help="CSV path,label[,patient_id] for --data folder; the image table for --data table",
    )
    d.add_argument("--positive-class", default="PNEUMONIA", help="classes: the positive class folder")
    t = TableSpec()
    d.add_argument("--path-column", default=t.path_column, help="table: image path column")
    d.add_argument("--label-column", default=t.label_column, help="table: label column")
    d.add_argument("--finding", default=t.finding, help="table: positive finding in a '|' list")
    d.add_argument("--patient-column", default=t.patient_column, help="table: patient ID column")
    d.add_argument(
        "--patient-pattern", default=t.patient_pattern, help="table: regex for the patient in the path"
    )
    d.add_argument(
        "--uncertain", choices=UNCERTAIN_POLICIES, default=t.uncertain, help="table: reading of -1 labels"
    )
    d.add_argument("--n-phantoms", type=int, default=600)
    d.add_argument("--phantom-size", type=int, default=256)
    d.add_argument("--positive-fraction", type=float, default=0.5)
    d.add_argument("--val-fraction", type=float, default=0.2)
    d.add_argument("--test-fraction", type=float, default=0.0)
    d.add_argument("--workers", type=int, default=0, help="threads for preprocessing")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    m = p.add_argument_group("model and preprocessing")
    m.add_argument("--image-size", type=int, default=224)
    m.add_argument("--voi", choices=["header", "percentile"], default="header")
    m.add_argument("--depth", type=int, choices=[18, 34], default=18)
    m.add_argument("--width", type=int, default=64)
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=30)
    o.add_argument("--batch-size", type=int, default=32)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--warmup-epochs", type=float, default=1.0)
    o.add_argument("--clip-grad", type=float, default=0.0, help="max gradient norm (0: off)")
    o.add_argument("--balance", choices=["loss", "sampler", "none"], default="loss")
    o.add_argument("--patience", type=int, default=5)
    o.add_argument("--target-sensitivity", type=float, default=0.9)
    o.add_argument("--no-augment", action="store_true")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--threads", type=int)
    o.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA if available"
    )
    o.add_argument("--max-train-seconds", type=float)
    o.add_argument("--bootstrap", type=int, default=1000, help="resamples for metric CIs (0: none)")
    r = p.add_argument_group("outputs")
    r.add_argument("--out-dir", type=Path, help="checkpoint directory")
    r.add_argument("--resume", action="store_true", help="continue from --out-dir/checkpoint.pt")
    r.add_argument("--onnx", type=Path, help="export the best model here")
    r.add_argument("--report", type=Path, help="write report.md/.html with PNG plots to this folder")
    r.add_argument("--name", default="dicomnode-pneumonia")
    r.add_argument(
        "--version",
        default=DEFAULT_BASE_VERSION,
        metavar="BASE",
        help="base of the model version; the first 8 hex digits of the weights' SHA-256 are added "
        f"(e.g. {DEFAULT_BASE_VERSION}+1a2b3c4d), so two different models never share a version "
        f"(default {DEFAULT_BASE_VERSION})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m training``."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo-model", help="train and export the phantom demo model (~1 min)")
    demo.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--force", action="store_true", help="retrain even if --out exists")

    ph = sub.add_parser("phantoms", help="write phantom studies as DICOM files")
    ph.add_argument("--out", type=Path, required=True, help="folder; files go to <study>/<sop>.dcm")
    ph.add_argument("-n", "--n-studies", type=int, required=True)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--positive-fraction", type=float, default=0.5)
    ph.add_argument("--size", type=int, help="rows = columns (default: random 512-768)")
    ph.add_argument("--modality", choices=["DX", "CR"], default="DX")
    ph.add_argument("--labels", type=Path, help="also write a path,label,patient_id CSV here")

    tr = sub.add_parser("train", help="train a model; optionally export it to ONNX")
    _add_train_args(tr)

    q = sub.add_parser(
        "quantize",
        help="INT8 copy of an exported model, calibrated on its validation split",
        description="Static INT8 quantisation with onnxruntime; give the data options of the "
        "training run so its validation split is rebuilt for calibration and evaluation.",
    )
    q.add_argument("--model", type=Path, required=True, help="fp32 ONNX from `train --onnx`")
    q.add_argument("--out", type=Path, required=True, help="INT8 ONNX file to write")
    q.add_argument("--n-calibration", type=int, default=256, help="validation images to calibrate on")
    q.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    q.add_argument("--no-per-channel", action="store_true", help="one scale per weight tensor")
    q.add_argument("--reduce-range", action="store_true", help="7-bit weights (x86 CPUs without VNNI)")
    q.add_argument("--calibrate", choices=["minmax", "percentile", "entropy"], default="minmax")
    q.add_argument("--seed", type=int, default=0, help="seed of the training run (split and phantoms)")
    _add_data_args(q)

    card = sub.add_parser("card", help="print the model card of an exported ONNX model")
    card.add_argument("model", type=Path)

    ev = sub.add_parser(
        "evaluate",
        help="score an exported model on a labelled set through the node's inference path",
        description="Scores an exported ONNX model on a labelled set (class folders, an image table, a "
        "DICOM folder + CSV) with the node's own preprocessing and onnxruntime session, at the card's "
        "threshold; writes evaluation.json/.md/.html with bootstrap CIs over patients. --split picks one "
        "part of a training run's patient split (give that run's --val-fraction/--test-fraction/--seed).",
    )
    ev.add_argument("--model", type=Path, required=True, help="ONNX model exported by `train --onnx`")
    ev.add_argument("--out", type=Path, required=True, help="folder for the evaluation and its plots")
    ev.add_argument("--split", choices=["all", "train", "val", "test"], default="all")
    ev.add_argument("--seed", type=int, default=0, help="seed of the training run (its split)")
    ev.add_argument("--threshold", type=float, help="operating point (default: the card's)")
    ev.add_argument("--bootstrap", type=int, default=1000, help="resamples for the CIs (0: none)")
    ev.add_argument("--max-cases", type=int, help="score a random subset of this many cases")
    _add_data_args(ev)
    return parser


def _cmd_demo(args: argparse.Namespace) -> int:
    from training.demo import ensure_demo_model

    if args.force and args.out.exists():
        args.out.unlink()
    print(ensure_demo_model(args.out, seed=args.seed))
    return 0


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from dicomnode.testing.phantoms import write_phantom_studies
    from training.datasets import samples_from_phantom_studies, write_labels_csv

    studies = write_phantom_studies(
        args.out,
        args.n_studies,
        seed=args.seed,
        positive_fraction=args.positive_fraction,
        size=args.size,
        modality=args.modality,
    )
    if args.labels is not None:
        write_labels_csv(samples_from_phantom_studies(studies), args.labels, root=args.out)
    positives = sum(s.positive for s in studies)
    print(f"phantoms.written out={args.out} studies={len(studies)} positive={positives}")
    return 0


def table_spec_from_args(args: argparse.Namespace) -> TableSpec:
    """The image-table columns and label rules of the data options."""
    from training.image_sets import TableSpec

    return TableSpec(
        path_column=args.path_column,
        label_column=args.label_column,
        finding=args.finding,
        patient_column=args.patient_column,
        patient_pattern=args.patient_pattern,
        uncertain=args.uncertain,
    )


def train_config_from_args(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The TrainConfig that ``python -m training train ARGS`` runs (imports torch).

    ``args`` may come from a parser with only some of the training options (bench/real_data.py's):
    the others take their ``train`` defaults. ``fixed`` sets TrainConfig fields outright, e.g.
    ``data="classes"``."""
    from dicomnode.model import PreprocessConfig
    from training.model import ModelConfig
    from training.train import TrainConfig

    defaults = argparse.ArgumentParser()
    _add_train_args(defaults)
    args = argparse.Namespace(**{**vars(defaults.parse_args([])), **vars(args)})
    options: dict[str, Any] = dict(
        data=args.data,
        data_dir=args.data_dir,
        labels_csv=args.labels,
        positive_class=args.positive_class,
        table=table_spec_from_args(args),
        n_phantoms=args.n_phantoms,
        phantom_size=args.phantom_size,
        phantom_positive_fraction=args.positive_fraction,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        preprocess=PreprocessConfig(size=args.image_size, voi=args.voi),
        model=ModelConfig(depth=args.depth, width=args.width),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        clip_grad=args.clip_grad,
        balance=args.balance,
        patience=args.patience,
        target_sensitivity=args.target_sensitivity,
        augment=not args.no_augment,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        workers=args.workers,
        out_dir=args.out_dir,
        resume=args.resume,
        max_train_seconds=args.max_train_seconds,
        bootstrap=args.bootstrap,
    )
    return TrainConfig(**{**options, **fixed})


def _cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        from training.demo import TORCH_MISSING

        raise ImportError(TORCH_MISSING) from None
    from training.export import export_onnx
    from training.train import train, weights_fingerprint

    weights_version(args.version, "0" * 64)  # a bad --version fails now, not after training
    result = train(train_config_from_args(args))
    version = weights_version(args.version, weights_fingerprint(result.model))
    card = result.card(name=args.name, version=version)
    if args.onnx is not None:
        export_onnx(result.model, args.onnx, card)
        print(f"train.exported onnx={args.onnx} version={card.version}")
    if args.report is not None:
        from training.report import write_report

        assert result.val_labels is not None and result.val_scores is not None
        test = None
        if result.test_labels is not None and result.test_scores is not None:
            test = (result.test_labels, result.test_scores)
        path = write_report(
            args.report,
            card,
            val=(result.val_labels, result.val_scores),
            test=test,
            history=result.history,
            command=result.config.command(),
        )
        print(f"train.report path={path}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import numpy as np

    from dicomnode.model import PreprocessConfig, read_card
    from dicomnode.model.card import QUANTIZATION_KEY
    from training.datasets import load_arrays, split_source
    from training.quantize import quantize_int8

    if args.n_calibration < 1:
        raise ValueError(f"--n-calibration {args.n_calibration} must be at least 1 (e.g. 256)")
    card = read_card(args.model)
    config = PreprocessConfig.from_dict(card.preprocess)
    split, phantom, fingerprint = split_source(
        args.data,
        config,
        data_dir=args.data_dir,
        labels_csv=args.labels,
        n_phantoms=args.n_phantoms,
        phantom_size=args.phantom_size,
        positive_fraction=args.positive_fraction,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        positive_class=args.positive_class,
        table=table_spec_from_args(args),
    )
    same = fingerprint == card.data_fingerprint
    print(
        f"quantize.data fingerprint={fingerprint} card={card.data_fingerprint or '-'} "
        f"match={same} n_val={len(split.val)}",
        flush=True,
    )
    if not same:
        print(
            "quantize.warning the data options do not rebuild the training run's data: calibration "
            "and the AUROC comparison use other images than its validation split (give the "
            "training run's --data/--n-phantoms/--val-fraction/--seed)",
            file=sys.stderr,
        )
    x_val, y_val = load_arrays(split.val, config, phantom=phantom, workers=args.workers)
    test = load_arrays(split.test, config, phantom=phantom, workers=args.workers) if split.test else None
    pick = np.random.default_rng([args.seed, 0xCA1]).permutation(len(x_val))[: args.n_calibration]
    out = quantize_int8(
        args.model,
        args.out,
        x_val[np.sort(pick)],
        validation=(x_val, y_val),
        test=test,
        quant_format=args.format,
        per_channel=not args.no_per_channel,
        reduce_range=args.reduce_range,
        calibrate_method=args.calibrate,
    )
    q = read_card(out).metrics[QUANTIZATION_KEY]
    print(
        f"quantize.done out={out} version={read_card(out).version} fp32_auroc={q['fp32_auroc']:.4f} "
        f"int8_auroc={q['int8_auroc']:.4f} change={q['auroc_change']:+.4f} "
        f"threshold={q['fp32_threshold']:.4f}->{q['int8_threshold']:.4f}"
        + (f" int8_test_auroc={q['int8_test_auroc']:.4f}" if "int8_test_auroc" in q else "")
    )
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from dicomnode.model import read_card

    print(json.dumps(asdict(read_card(args.model)), indent=2, sort_keys=True))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from dicomnode.model import PreprocessConfig, read_card
    from training.assess import evaluate_model, write_evaluation
    from training.datasets import load_source, split_source
    from training.events import log_event

    if args.data == "phantoms":
        raise ValueError(
            "evaluate scores files: write phantoms with `phantoms --labels` and use --data folder"
        )
    card = read_card(args.model)
    source = {
        "data_dir": args.data_dir,
        "labels_csv": args.labels,
        "seed": args.seed,
        "positive_class": args.positive_class,
        "table": table_spec_from_args(args),
    }
    same: bool | None = None
    if args.split == "all":
        samples = load_source(args.data, **source)[0]
    else:
        split, _, fingerprint = split_source(
            args.data,
            PreprocessConfig.from_dict(card.preprocess),
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            **source,
        )
        samples = getattr(split, args.split)
        same = fingerprint == card.data_fingerprint
        if not same:
            print(
                f"evaluate.warning data fingerprint {fingerprint} differs from the card's "
                f"{card.data_fingerprint or '-'}: the split is not the training run's (give its --data, "
                "--val-fraction, --test-fraction and --seed); its train part may overlap what you score",
                file=sys.stderr,
            )
    if args.max_cases is not None and args.max_cases < len(samples):
        pick = np.random.default_rng([args.seed, 0xE7A1]).permutation(len(samples))[: args.max_cases]
        samples = [samples[i] for i in sorted(pick)]
    log_event(
        "evaluate.start",
        model=str(args.model),
        data=args.data,
        split=args.split,
        n=len(samples),
        fingerprint_match=same,
    )
    ev = evaluate_model(
        args.model, samples, threshold=args.threshold, bootstrap=args.bootstrap, seed=args.seed, log=log_event
    )
    data = f"{args.data} {args.data_dir or args.labels} split={args.split}"
    path = write_evaluation(
        args.out, ev, data=data, command=shlex.join(["python", "-m", "training", *args.argv])
    )
    print(f"evaluate.report path={path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    handlers = {
        "demo-model": _cmd_demo,
        "phantoms": _cmd_phantoms,
        "train": _cmd_train,
        "quantize": _cmd_quantize,
        "card": _cmd_card,
        "evaluate": _cmd_evaluate,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
