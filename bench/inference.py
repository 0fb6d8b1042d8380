"""Inference benchmark: torch eager vs onnxruntime fp32 vs onnxruntime INT8, in one run.

    .venv/bin/python bench/inference.py            # about two minutes on 2 cores

Speed: ResNet-18 width 64 (the production architecture) on 1x224x224 inputs, random weights
(speed does not depend on them), exported by training.export and quantised by training.quantize
(static INT8, calibrated on preprocessed phantoms; QDQ and QOperator formats). Every engine runs
the whole graph, probability and CAM. Throughput is images/s at batch 1 and 8, the median of
``--repeats`` timed windows of ``--seconds`` each, engines interleaved so that load from other
processes hits them alike (the best window is also shown: load only ever slows a window
down); GFLOP/s (of the best window) counts 2 x the multiply-adds of every conv and linear layer.
torch and onnxruntime both get ``--threads`` (default 2) intra-op threads.

On a GPU host, ``--torch-device cuda`` adds the engine "torch eager fp32 cuda": the same model on
the GPU, timed host to host (the numpy batch copied to the GPU and both outputs copied back, as a
worker would), with its peak GPU memory; the CPU engines and the "vs torch" ratios (against torch
on the CPU) stay as they are. ``--batches 1,8,32`` sets the batch sizes.

Accuracy: the demo model (``--model``, trained if missing) is quantised exactly as
``python -m training quantize`` does, calibrated on its own validation split, and fp32 and INT8
are compared by AUROC on ``--heldout`` fresh full-size phantoms that no training run has seen.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dicomnode.model import (
    CAM_OUTPUT,
    INPUT_NAME,
    PROBABILITY_OUTPUT,
    ModelCard,
    PreprocessConfig,
    onnx_session,
    predict_onnx,
    preprocess,
    read_card,
)
from dicomnode.testing.phantoms import make_phantom, phantom_labels
from training import datasets
from training.demo import demo_train_config, ensure_demo_model
from training.evaluate import bootstrap_ci, roc_auc
from training.export import export_onnx
from training.model import ModelConfig, ResNetCAM, build_model
from training.quantize import QUANTIZATION_KEY, quantize_int8

BATCHES = (1, 8)
CUDA_ENGINE = "torch eager fp32 cuda"


def count_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one forward pass on one ``size`` x ``size`` image: 2 x conv and linear MACs."""
    macs = 0

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            macs += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 1, size, size))
    finally:
        for h in handles:
            h.remove()
    return 2.0 * macs


def _phantom_images(
    seed: int, labels: np.ndarray, config: PreprocessConfig, size: int | None, threads: int
) -> np.ndarray:
    def one(i: int) -> np.ndarray:
        ds = make_phantom(np.random.default_rng([seed, i]), bool(labels[i]), size=size)
        return preprocess(ds, config)

    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(one, range(len(labels)))))


def _throughput(run: Callable[[], object], batch: int, seconds: float) -> float:
    """Images/s of ``run`` (one batch per call) over a window of at least ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n * batch / elapsed


def _ort_runner(path: Path, x: np.ndarray, threads: int) -> Callable[[], object]:
    """One onnxruntime call on ``x`` (both outputs), with the session made once."""
    session = onnx_session(path, threads=threads)

    def run() -> object:
        return session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: x})

    return run


def _cuda_runner(model: ResNetCAM, x: np.ndarray) -> Callable[[], object]:
    """One call of ``model`` (already on the GPU) on host array ``x``: copy in, run, copy out."""

    def run() -> object:
        with torch.inference_mode():
            prob, cam = model(torch.from_numpy(x).cuda())
            return prob.cpu(), cam.cpu()  # waits for the GPU

    return run


def _engines(
    model: ResNetCAM,
    files: dict[str, Path],
    x: np.ndarray,
    threads: int,
    cuda_model: ResNetCAM | None = None,
) -> dict[str, Callable[[], object]]:
    xt = torch.from_numpy(x)

    def torch_eager() -> object:
        with torch.inference_mode():
            return model(xt)

    engines: dict[str, Callable[[], object]] = {"torch eager fp32": torch_eager}
    if cuda_model is not None:
        engines[CUDA_ENGINE] = _cuda_runner(cuda_model, x)
    for name, path in files.items():
        engines[name] = _ort_runner(path, x, threads)
    return engines


def speed(args: argparse.Namespace, tmp: Path) -> None:
    size = 224
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=18, width=64)).eval()
    flops = count_flops(model, size)
    config = PreprocessConfig(size=size)
    card = ModelCard(
        name="bench-resnet18-w64",
        version="0.0.0",
        threshold=0.5,
        device_uid="2.25.1",
        preprocess=config.to_dict(),
    )
    fp32 = export_onnx(model, tmp / "fp32.onnx", card)
    cuda_model = None
    if args.torch_device == "cuda":
        cuda_model = copy.deepcopy(model).cuda().eval()
        torch.cuda.reset_peak_memory_stats()
    calibration = _phantom_images(11, phantom_labels(32, 11), config, 256, args.threads)
    files = {"onnxruntime fp32": fp32}
    for fmt in ("qdq", "qoperator"):
        t0 = time.perf_counter()
        files[f"onnxruntime int8 {fmt}"] = quantize_int8(
            fp32, tmp / f"int8-{fmt}.onnx", calibration, quant_format=fmt
        )
        print(f"bench.quantized format={fmt} seconds={time.perf_counter() - t0:.1f}", flush=True)

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\nResNet-18 w64, 1x{size}x{size}, {flops / 1e9:.2f} GFLOP/image (2 x conv+linear MACs), "
        f"{args.threads} threads, median of {args.repeats} x {args.seconds:g} s windows; "
        f"load average {load} on {os.cpu_count()} CPUs"
    )
    if cuda_model is not None:
        print(f"{CUDA_ENGINE}: {torch.cuda.get_device_name()}, torch {torch.__version__}, host to host")
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 1, size, size)).astype(np.float32)
        engines = _engines(model, files, x, args.threads, cuda_model)
        for run in engines.values():  # warm-up: first-call allocations, oneDNN/MLAS kernel choice
            for _ in range(3):
                run()
        samples: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, run in engines.items():
                samples[name].append(_throughput(run, batch, args.seconds))
        base_med = statistics.median(samples["torch eager fp32"])
        base_best = max(samples["torch eager fp32"])
        for name in engines:
            med, best = statistics.median(samples[name]), max(samples[name])
            rows.append((name, batch, med, best, best * flops / 1e9, med / base_med, best / base_best))
    # other processes on a shared machine only ever slow a window down: the best window is the
    # engine's speed, the median what a busy machine gives; ratios are like against like
    print(
        f"\n{'engine':<27}{'batch':>5}{'img/s med':>11}{'img/s best':>11}{'ms best':>9}{'GFLOP/s':>9}"
        f"{'vs torch med':>14}{'vs torch best':>15}"
    )
    for name, batch, med, best, gflops, r_med, r_best in rows:
        print(
            f"{name:<27}{batch:>5}{med:>11.1f}{best:>11.1f}{1000 * batch / best:>9.1f}{gflops:>9.1f}"
            f"{r_med:>13.2f}x{r_best:>14.2f}x"
        )
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if cuda_model is not None:
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(
            f"{CUDA_ENGINE}: peak GPU memory allocated by torch {peak:.0f} MiB (batch up to {max(args.batches)})"
        )


def accuracy(args: argparse.Namespace, tmp: Path) -> None:
    model_path = ensure_demo_model(args.model)
    card = read_card(model_path)
    config = PreprocessConfig.from_dict(card.preprocess)
    train_config = demo_train_config()
    split, phantom, fingerprint = datasets.split_source(
        train_config.data,
        config,
        n_phantoms=train_config.n_phantoms,
        phantom_size=train_config.phantom_size,
        positive_fraction=train_config.phantom_positive_fraction,
        val_fraction=train_config.val_fraction,
        test_fraction=train_config.test_fraction,
        seed=train_config.seed,
    )
    x_val, y_val = datasets.load_arrays(split.val, config, phantom=phantom, workers=args.threads)
    int8 = quantize_int8(model_path, tmp / "demo-int8.onnx", x_val, validation=(x_val, y_val))
    q = read_card(int8).metrics[QUANTIZATION_KEY]

    labels = phantom_labels(args.heldout, seed=90210)
    t0 = time.perf_counter()
    x = _phantom_images(90210, labels, config, None, args.threads)  # full size, 512-768 px
    print(f"\nbench.heldout phantoms={len(x)} seconds={time.perf_counter() - t0:.1f}", flush=True)
    p32, _ = predict_onnx(model_path, x, threads=args.threads)
    p8, _ = predict_onnx(int8, x, threads=args.threads)
    a32, a8 = roc_auc(labels, p32), roc_auc(labels, p8)
    ci32 = bootstrap_ci(labels, p32, roc_auc, n=1000)
    ci8 = bootstrap_ci(labels, p8, roc_auc, n=1000)
    sens32 = float(np.mean(p32[labels] >= card.threshold))
    sens8 = float(np.mean(p8[labels] >= q["int8_threshold"]))

    demo_speed = {}
    xb = np.ascontiguousarray(x[:8])
    for name, path in (("fp32", model_path), ("int8", int8)):
        run = _ort_runner(path, xb, args.threads)
        for _ in range(3):
            run()
        demo_speed[name] = statistics.median(_throughput(run, 8, args.seconds) for _ in range(args.repeats))
    print(
        f"\nDemo model {card.name} {card.version} ({card.architecture}, {config.size} px); INT8 calibrated on its "
        f"validation split ({len(x_val)} images, fingerprint match={fingerprint == card.data_fingerprint})"
    )
    print(f"{'':<22}{'fp32':>18}{'int8':>18}{'change':>10}")
    print(f"{'val AUROC':<22}{q['fp32_auroc']:>18.4f}{q['int8_auroc']:>18.4f}{q['auroc_change']:>+10.4f}")
    print(
        f"{'held-out AUROC':<22}{a32:>9.4f} ({ci32[0]:.3f}-{ci32[1]:.3f}){a8:>8.4f} ({ci8[0]:.3f}-{ci8[1]:.3f}){a8 - a32:>+9.4f}"
    )
    print(
        f"{'held-out sensitivity':<22}{sens32:>18.3f}{sens8:>18.3f}{sens8 - sens32:>+10.3f}   (each at its card threshold)"
    )
    print(f"{'max |p int8 - p fp32|':<22}{'':>18}{float(np.max(np.abs(p8 - p32))):>18.4f}")
    print(
        f"{'img/s, batch 8':<22}{demo_speed['fp32']:>18.1f}{demo_speed['int8']:>18.1f}{demo_speed['int8'] / demo_speed['fp32']:>9.2f}x"
    )
    verdict = "meets" if a32 - a8 < 0.01 else "MISSES"
    print(f"\nINT8 held-out AUROC loss {a32 - a8:+.4f}: {verdict} the < 0.01 target")


def _batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes like 1,8,32") from None
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be >= 1")
    return batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--torch-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: also time torch on the GPU (host to host); the CPU engines stay",
    )
    ap.add_argument("--batches", type=_batches, default=BATCHES, help="comma-separated, default 1,8")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one timed window")
    ap.add_argument("--heldout", type=int, default=300, help="fresh phantoms for the INT8 AUROC check")
    ap.add_argument("--model", type=Path, default=Path("dicomnode-data/models/pneumonia-demo.onnx"))
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    if args.torch_device == "cuda" and not torch.cuda.is_available():
        ap.error("--torch-device cuda: torch sees no GPU (CPU-only build or no driver)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        speed(args, Path(tmp))
        if not args.skip_accuracy:
            accuracy(args, Path(tmp))


if __name__ == "__main__":
    main()
