"""GPU worker benchmark: the whole pipeline in one process on a burst of full-size studies, study by
study and in batches (worker.batch), and the model alone on onnxruntime and on torch, in one run.

    bench/gpu_worker.sh [OUT_DIR]                    # on a GPU host: installs what is missing, logs
    .venv/bin/python bench/gpu_worker.py --device cpu --studies 8 --size 1024    # dry run, no GPU

The burst: ``--studies`` single-view DX studies of ``--size`` px (copies of a few phantoms with new
UIDs: the pixels do not change the time), stored and recorded in SQLite as the SCP leaves them, no
destination (results written and recorded, nothing sent). The model: ResNet-18 width 64 on
224 px (the production architecture) with random weights, exported by training.export, or
``--model``. Each pipeline run gets its own SQLite and results folder over the same instance files,
and runs as the embedded worker does (decoding in the memory-capped child process; ``--decode
inprocess`` decodes in this process), after one warm-up study.

Engines in the pipeline: ``onnxruntime`` (dicomnode.model.PneumoniaModel with the providers this
onnxruntime has: CUDA, with inputs and outputs bound on the GPU, where onnxruntime-gpu is
installed) and, with ``--device cuda``, ``torch`` (the same graph in torch on the GPU, a stand-in
for the bench only: the service never imports torch). Per-stage times are the pipeline's own steps:
prepare (select, read, decode and preprocess: CPU), infer (one model call, ms per call and per
image) and finish (SR, heatmap SC, write, SQL: CPU). GPU utilisation and memory are nvidia-smi
samples every 100 ms during each run.

The model alone: images/s at each ``--batches`` on onnxruntime (plain ``run``, IO binding, and fp16
converted at load by onnxruntime.transformers.float16 where onnx is installed and the provider is
CUDA) and torch (fp32, and fp16 on the GPU), host to host.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

# the repository first: bench/ (this script's folder) would otherwise come first, and its
# worker.py hide the worker package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomnode.config import Settings  # noqa: E402
from dicomnode.logconfig import configure_logging  # noqa: E402
from dicomnode.model import ModelCard, PneumoniaModel, PreprocessConfig  # noqa: E402
from dicomnode.model.session import time_runs  # noqa: E402
from dicomnode.storage import instance_path, write_atomic  # noqa: E402
from dicomnode.store.db import Store  # noqa: E402
from dicomnode.store.models import StudyState  # noqa: E402
from dicomnode.store.records import InstanceRecord, record_instance, set_study_state  # noqa: E402
from dicomnode.testing.phantoms import make_phantom  # noqa: E402
from worker.batch import analyse_studies  # noqa: E402
from worker.pipeline import Pipeline  # noqa: E402

#: distinct phantoms the burst copies (making one at 2048 px takes seconds)
DISTINCT_PHANTOMS = 8


# --- the burst -------------------------------------------------------------------------------


def _phantom(args: tuple[int, int]) -> bytes:
    seed, size = args
    ds = make_phantom(np.random.default_rng(seed), bool(seed % 2), size=size)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_burst(root: Path, studies: int, size: int) -> list[tuple[pydicom.Dataset, Path]]:
    """``studies`` single-image studies under ``root``: (header, file) of each."""
    t0 = time.perf_counter()
    jobs = [(i, size) for i in range(min(DISTINCT_PHANTOMS, studies))]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        templates = [pydicom.dcmread(io.BytesIO(b)) for b in pool.map(_phantom, jobs)]
    out: list[tuple[pydicom.Dataset, Path]] = []
    for i in range(studies):
        ds = copy.deepcopy(templates[i % len(templates)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = instance_path(root, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        write_atomic(path, buf.getvalue())
        out.append((ds, path))
    print(f"bench.burst studies={studies} size={size} seconds={time.perf_counter() - t0:.1f}", flush=True)
    return out


def record_burst(store: Store, burst: list[tuple[pydicom.Dataset, Path]]) -> list[str]:
    """Record the burst as the SCP does and mark each study complete; the study UIDs."""
    uids = []
    for ds, path in burst:
        record_instance(
            store,
            InstanceRecord(
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                modality=ds.Modality,
                path=str(path),
                size_bytes=path.stat().st_size,
                sha256=None,
                calling_ae="BENCH",
            ),
        )
        set_study_state(store, str(ds.StudyInstanceUID), StudyState.COMPLETE, "bench")
        uids.append(str(ds.StudyInstanceUID))
    return uids


# --- models ----------------------------------------------------------------------------------


class TorchModel:
    """The model in torch on ``device``, with :class:`PneumoniaModel`'s face (card, preprocessing,
    ``predict``): a stand-in for the bench only, to run the pipeline on a GPU where onnxruntime has
    no CUDA provider. Host to host, like the worker: numpy in, numpy out."""

    def __init__(
        self, module: Any, card: ModelCard, device: str, batch_size: int, half: bool = False
    ) -> None:
        import torch

        self.torch = torch
        self.module = copy.deepcopy(module).to(device).eval()
        self.half = half
        if half:
            self.module = self.module.half()
        self.card = card
        self.preprocess_config = PreprocessConfig.from_dict(card.preprocess)
        self.device = device
        self.batch_size = batch_size
        self.providers = [f"torch {device}{' fp16' if half else ''}"]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, cams = [], []
        with self.torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                x = self.torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
                x = x.to(self.device, non_blocking=False)
                p, c = self.module(x.half() if self.half else x)
                probs.append(p.float().cpu().numpy().reshape(-1))
                cams.append(c.float().cpu().numpy())
        return np.concatenate(probs), np.concatenate(cams)


def production_model(tmp: Path) -> tuple[Path, Any]:
    """ResNet-18 w64 on 224 px, random weights, exported and verified; (file, torch module)."""
    import torch

    from training.export import export_onnx
    from training.model import ModelConfig, build_model

    torch.manual_seed(0)
    module = build_model(ModelConfig(depth=18, width=64)).eval()
    card = ModelCard(
        name="bench-resnet18-w64",
        version="0.0.0-bench",
        threshold=0.5,
        device_uid="2.25.1",
        preprocess=PreprocessConfig(size=224).to_dict(),
    )
    t0 = time.perf_counter()
    path = export_onnx(module, tmp / "bench.onnx", card)
    print(f"bench.export seconds={time.perf_counter() - t0:.1f}", flush=True)
    return path, module


def fp16_copy(path: Path, out: Path) -> Path | None:
    """An fp16 copy of the model with float32 input and outputs, or None where the converter
    (onnxruntime.transformers.float16, which needs onnx) is missing or fails."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        onnx.save(proto, str(out))
        return out
    except Exception as exc:  # a bench: say why and go on
        print(f"bench.fp16_unavailable error={type(exc).__name__}: {str(exc)[:200]}", flush=True)
        return None


# --- GPU sampling ----------------------------------------------------------------------------


@dataclass
class GpuSamples:
    util: list[float] = field(default_factory=list)
    mem_mib: list[float] = field(default_factory=list)

    def summary(self) -> tuple[str, str, str]:
        if not self.util:
            return "-", "-", "-"
        return f"{statistics.mean(self.util):.0f}", f"{max(self.util):.0f}", f"{max(self.mem_mib):.0f}"


@contextmanager
def gpu_sampler(enabled: bool) -> Iterator[GpuSamples]:
    """nvidia-smi every 100 ms while the block runs (nothing without nvidia-smi)."""
    samples = GpuSamples()
    exe = shutil.which("nvidia-smi") if enabled else None
    if exe is None:
        yield samples
        return
    proc = subprocess.Popen(
        [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield samples
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and all(p.replace(".", "").isdigit() for p in parts):
                samples.util.append(float(parts[0]))
                samples.mem_mib.append(float(parts[1]))


# --- the pipeline runs -----------------------------------------------------------------------


@dataclass
class StageTimes:
    prepare: list[float] = field(default_factory=list)
    infer: list[float] = field(default_factory=list)
    images: int = 0
    finish: list[float] = field(default_factory=list)


def _timed(times: list[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times.append((time.perf_counter() - t0) * 1000)

    return wrapper


def run_pipeline(
    name: str,
    model: Any,
    batch_studies: int,
    burst: list[tuple[pydicom.Dataset, Path]],
    root: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One run of the burst through a fresh pipeline; a row of the table."""
    settings = Settings(
        storage_dir=root,
        model=args.model_path,
        decode_memory_bytes=0 if args.decode == "inprocess" else Settings().decode_memory_bytes,
        batch_max_studies=batch_studies,
    )
    store = Store(settings.effective_database_url)
    uids = record_burst(store, burst)
    pipeline = Pipeline(settings, store, model)
    times = StageTimes()
    # the pipeline's own steps, timed where they are looked up (on the instance)
    pipeline.prepare = _timed(times.prepare, pipeline.prepare)  # type: ignore[method-assign]
    pipeline.finish = _timed(times.finish, pipeline.finish)  # type: ignore[method-assign]
    predict = model.predict

    def counted(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        times.images += len(images)
        result: tuple[np.ndarray, np.ndarray] = _timed(times.infer, predict)(images)
        return result

    try:
        warm, timed = uids[0], uids[1:]
        for n in sorted({1, batch_studies}):  # first calls: CUDA context, kernel choice, decode child
            side = int(model.card.preprocess["size"])
            model.predict(np.zeros((n, 1, side, side), np.float32))
        pipeline.analyse_study(warm)
        model.predict = counted
        times.prepare.clear()
        times.finish.clear()
        with gpu_sampler(args.device == "cuda") as gpu:
            t0 = time.perf_counter()
            if batch_studies == 1:
                outcomes = [pipeline.analyse_study(uid) for uid in timed]
            else:
                outcomes = []
                for i in range(0, len(timed), batch_studies):
                    chunk = timed[i : i + batch_studies]
                    outcomes += analyse_studies(pipeline, [(uid, None) for uid in chunk])
            wall = time.perf_counter() - t0
    finally:
        model.predict = predict
        pipeline.close()
        store.dispose()
    bad = [o for o in outcomes if o.score is None]
    if bad:
        print(
            f"bench.warning engine={name} studies_without_score={len(bad)} first={bad[0].reason}", flush=True
        )
    util_mean, util_max, mem = gpu.summary()
    return {
        "engine": name,
        "batch": batch_studies,
        "studies": len(timed),
        "wall_s": wall,
        "studies_s": len(timed) / wall,
        "prepare_ms": statistics.median(times.prepare),
        "infer_ms": statistics.median(times.infer),
        "infer_img_ms": sum(times.infer) / max(1, times.images),
        "finish_ms": statistics.median(times.finish),
        "cpu_ms": (sum(times.prepare) + sum(times.finish)) / len(timed),
        "gpu_util": util_mean,
        "gpu_util_max": util_max,
        "gpu_mib": mem,
    }


def print_pipeline(rows: list[dict[str, Any]]) -> None:
    base = rows[0]["studies_s"]
    print(
        f"\n{'engine':<30}{'batch':>6}{'studies':>8}{'studies/s':>10}{'vs first':>9}{'prepare ms':>11}"
        f"{'infer ms/call':>14}{'infer ms/img':>13}{'finish ms':>10}{'CPU ms/study':>13}"
        f"{'GPU %':>7}{'GPU % max':>10}{'GPU MiB':>8}"
    )
    for r in rows:
        print(
            f"{r['engine']:<30}{r['batch']:>6}{r['studies']:>8}{r['studies_s']:>10.2f}{r['studies_s'] / base:>8.2f}x"
            f"{r['prepare_ms']:>11.1f}{r['infer_ms']:>14.1f}{r['infer_img_ms']:>13.2f}{r['finish_ms']:>10.1f}"
            f"{r['cpu_ms']:>13.1f}{r['gpu_util']:>7}{r['gpu_util_max']:>10}{r['gpu_mib']:>8}"
        )
    print(
        "prepare and finish: median ms per study (CPU: decode, preprocess; SR, SC, write, SQL); "
        "infer: median ms per model call and mean ms per image; CPU ms/study: prepare + finish, the "
        "bound on one process's studies/s (1000 / it)"
    )


# --- the model alone -------------------------------------------------------------------------


def model_alone(
    args: argparse.Namespace, tmp: Path, module: Any, ort_providers: list[str]
) -> list[tuple[str, int, float]]:
    """(engine, batch, images/s) of the model alone, host to host."""
    import onnxruntime as ort

    from dicomnode.model.session import _open, _run_bound, _run_plain

    path: Path = args.model_path
    side = int(PneumoniaModel(path, providers=ort_providers).card.preprocess["size"])
    device = "cuda" if ort_providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
    session, _ = _open(path, ort_providers)
    engines: dict[str, Callable[[np.ndarray], Any]] = {
        f"onnxruntime {device} run": _run_plain(session),
        f"onnxruntime {device} io-binding": _run_bound(session, device),
    }
    if device == "cuda":
        fp16 = fp16_copy(path, tmp / "bench-fp16.onnx")
        if fp16 is not None:
            s16 = ort.InferenceSession(str(fp16), providers=ort_providers)
            engines["onnxruntime cuda fp16 io-binding"] = _run_bound(s16, device)
    if module is not None:
        torch_device = "cuda" if args.device == "cuda" else "cpu"
        engines[f"torch {torch_device} fp32"] = TorchModel(module, _card(path), torch_device, 1 << 30).predict
        if torch_device == "cuda":
            engines["torch cuda fp16"] = TorchModel(module, _card(path), "cuda", 1 << 30, half=True).predict
    rows = []
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 1, side, side), dtype=np.float32)
        ms = time_runs(
            {name: functools.partial(run, x) for name, run in engines.items()},
            max_runs=args.repeats,
            max_seconds=args.seconds * len(engines),
        )
        rows += [(name, batch, 1000 * batch / ms[name]) for name in engines]
    return rows


def _card(path: Path) -> ModelCard:
    from dicomnode.model import read_card

    return read_card(path)


def print_model_alone(rows: list[tuple[str, int, float]]) -> None:
    batches = sorted({b for _, b, _ in rows})
    names = list(dict.fromkeys(n for n, _, _ in rows))
    ref = names[0]
    by = {(n, b): v for n, b, v in rows}
    print(
        f"\n{'model alone, images/s (vs first)':<36}" + "".join(f"{'batch ' + str(b):>20}" for b in batches)
    )
    for n in names:
        cells = "".join(f"{by[(n, b)]:>11.1f} ({by[(n, b)] / by[(ref, b)]:>5.2f}x)" for b in batches)
        print(f"{n:<36}{cells}")


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sizes like 1,8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--studies", type=int, default=64, help="studies in the burst (one more warms up)")
    ap.add_argument("--size", type=int, default=2048, help="rows and columns of each radiograph")
    ap.add_argument("--batch-studies", type=_batches, default=(1, 8), help="studies per batch, e.g. 1,8")
    ap.add_argument("--decode", choices=["child", "inprocess"], default="child")
    ap.add_argument("--model", type=Path, help="a dicomnode .onnx (default: ResNet-18 w64, random weights)")
    ap.add_argument("--batches", type=_batches, default=(1, 8, 32), help="model-alone batch sizes")
    ap.add_argument("--repeats", type=int, default=20, help="model alone: most timed calls per engine")
    ap.add_argument("--seconds", type=float, default=1.0, help="model alone: time per engine and batch")
    args = ap.parse_args()
    if args.studies < 2:
        ap.error("--studies: at least 2 (one warms up)")
    # the pipeline logs every study at info: the tables are the output
    configure_logging(os.environ.get("DICOMNODE_LOG_LEVEL", "warning"))

    import onnxruntime as ort

    available = ort.get_available_providers()
    torch_cuda = False
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch = None  # type: ignore[assignment]
    if args.device == "cuda" and not torch_cuda and "CUDAExecutionProvider" not in available:
        ap.error("--device cuda: neither onnxruntime (no CUDAExecutionProvider) nor torch sees a GPU")
    ort_providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if args.device == "cuda" and "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )
    print(
        f"bench.env python={sys.version.split()[0]} onnxruntime={ort.__version__} providers={available} "
        f"torch={getattr(torch, '__version__', '-')} torch_cuda={torch_cuda} cpus={os.cpu_count()} "
        f"load={', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        flush=True,
    )
    if args.device == "cuda" and "CUDAExecutionProvider" not in available:
        print(
            "bench.note onnxruntime has no CUDA provider here (install onnxruntime-gpu): the "
            "onnxruntime rows run on the CPU, the torch rows on the GPU",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="dicomnode-gpu-worker-") as tmp_name:
        tmp = Path(tmp_name)
        module = None
        if args.model is None:
            args.model_path, module = production_model(tmp)
        else:
            args.model_path = args.model
        burst = write_burst(tmp / "instances", args.studies + 1, args.size)

        engines: list[tuple[str, Callable[[int], Any]]] = [
            (
                f"onnxruntime {ort_providers[0].removesuffix('ExecutionProvider').lower()}",
                lambda b: PneumoniaModel(args.model_path, providers=ort_providers),
            )
        ]
        if module is not None and args.device == "cuda" and torch_cuda:
            card = _card(args.model_path)
            engines.append(("torch cuda (bench stand-in)", lambda b: TorchModel(module, card, "cuda", 32)))
        rows: list[dict[str, Any]] = []
        for name, make in engines:
            for b in args.batch_studies:
                print(f"bench.pipeline engine={name!r} batch={b}", flush=True)
                rows.append(run_pipeline(name, make(b), b, burst, tmp / f"run-{len(rows)}", args))
        print(
            f"\nWhole pipeline in one process, {args.studies} studies of {args.size} x {args.size} px "
            f"(one view each), decode: {args.decode}, no destination"
        )
        print_pipeline(rows)
        alone = model_alone(args, tmp, module, ort_providers)
        print_model_alone(alone)
        print(f"\nload average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
