"""Opening an exported model file with onnxruntime (no torch, no onnx): its card, a session, scores.

Every way in goes through one opener that checks the file is a dicomnode model: it exists, it
loads, it carries the card under :data:`~dicomnode.model.card.METADATA_KEY`, and its graph has the
input :data:`~dicomnode.model.card.INPUT_NAME` and the outputs
:data:`~dicomnode.model.card.PROBABILITY_OUTPUT` and :data:`~dicomnode.model.card.CAM_OUTPUT`.

- :class:`PneumoniaModel` is the model as the worker runs it (``worker.pipeline``, and
  ``dicomnode worker`` checks the model at start): card, preprocessing, a session on the best
  execution provider (:data:`PREFERRED_PROVIDERS`, TensorRT first when asked for and installed),
  batched :meth:`~PneumoniaModel.predict` with inputs and outputs bound on the GPU there, and on a
  CPU the INT8 copy beside the file (:func:`int8_path`) where it is faster on that CPU and its
  card says it loses no more AUROC than allowed (:func:`int8_refusal`, :class:`Int8Choice`).
- :func:`read_card` reads a card without scoring (``dicomnode monitor --model``, ``python -m training
  card`` and ``quantize``); :func:`onnx_session` and :func:`predict_onnx` score on the CPU for
  training's checks (quantisation, the benchmark).

onnxruntime and structlog are imported when a model is opened, not with this module: the package
:mod:`dicomnode.model` re-exports these names, and ``dicomnode.config`` imports the package.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.model.card import (
    CAM_OUTPUT,
    INPUT_NAME,
    METADATA_KEY,
    PROBABILITY_OUTPUT,
    QUANTIZATION_KEY,
    ModelCard,
)
from dicomnode.model.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import onnxruntime as ort

#: Execution providers the worker prefers, best first; it uses those this onnxruntime build offers.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: onnxruntime's TensorRT provider: first in the list with ``DICOMNODE_TENSORRT=true``, where installed.
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
#: Providers that run the graph on an NVIDIA GPU: there inputs and outputs are bound on the device.
GPU_PROVIDERS = (TENSORRT_PROVIDER, "CUDAExecutionProvider")

#: Providers of :func:`read_card`, :func:`onnx_session` and :func:`predict_onnx`.
CPU_PROVIDERS = ("CPUExecutionProvider",)

#: Images per model call on a CPU (throughput barely grows past it) and on a GPU.
CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32

#: INT8 is used only when fp32 takes at least this many times as long per batch: a margin over
#: timing noise, so that a worker does not flip between the two from one start to the next.
INT8_MIN_SPEEDUP = 1.1
#: Bounds of the timing at load: at most this many timed batches of each, within this many
#: seconds in all (at least 3 of each however long they take).
INT8_TIMING_RUNS = 10
INT8_TIMING_SECONDS = 2.0

#: An onnxruntime provider: its name, or its name and options.
Provider = str | tuple[str, dict[str, Any]]


class ModelLoadError(RuntimeError):
    """:class:`PneumoniaModel` could not load its file; the message says what to do.

    It carries the message of the FileNotFoundError or ValueError that :func:`read_card` raises for
    the same file.
    """


def _open(
    path: Path, providers: Sequence[Provider], *, threads: int | None = None, quiet: bool = True
) -> tuple[ort.InferenceSession, ModelCard]:
    """A session on ``path`` and its card, once the file has passed the checks in the module doc.

    Raises FileNotFoundError if there is no file, ValueError if it is not a dicomnode model.
    ``quiet`` keeps onnxruntime's own warnings out of the log; ``threads`` sets intra-op threads.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {str(path)!r} not found: set DICOMNODE_MODEL (or --model) to an .onnx "
            "exported by training.export.export_onnx, or build the demo model with `dicomnode demo` "
            "or `python -m training demo-model --out PATH`"
        )
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"{path} is not a loadable ONNX model ({exc}): re-export it") from exc
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(
            f"{path} has no {METADATA_KEY!r} metadata: it was not exported by "
            "training.export.export_onnx; re-export it there"
        )
    inputs = [i.name for i in session.get_inputs()]
    outputs = {o.name for o in session.get_outputs()}
    if inputs != [INPUT_NAME] or not {PROBABILITY_OUTPUT, CAM_OUTPUT} <= outputs:
        raise ValueError(
            f"{path} has inputs {inputs} and outputs {sorted(outputs)}; dicomnode needs input "
            f"{INPUT_NAME!r} and outputs {PROBABILITY_OUTPUT!r}, {CAM_OUTPUT!r}: re-export it"
        )
    return session, ModelCard.from_json(meta[METADATA_KEY])


#: One model call: a contiguous float32 batch [n, 1, S, S] in, probabilities and CAMs out.
RunBatch = Callable[[np.ndarray], Sequence[Any]]


def _run_plain(session: ort.InferenceSession) -> RunBatch:
    """``session.run``: onnxruntime copies the input to the device and the outputs back itself."""

    def run(batch: np.ndarray) -> Sequence[Any]:
        return session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: batch})

    return run


def _run_bound(session: ort.InferenceSession, device: str) -> RunBatch:
    """The call with the input and both outputs bound on ``device`` (``cuda`` or ``cpu``): one copy
    of the batch to the device, the graph run there, one copy of each output back, and no
    copies or synchronisation of onnxruntime's own between nodes and the host."""
    import onnxruntime as ort

    def run(batch: np.ndarray) -> Sequence[Any]:
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(batch, device, 0))
        binding.bind_output(PROBABILITY_OUTPUT, device)
        binding.bind_output(CAM_OUTPUT, device)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()  # in the order bound

    return run


def _predict(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int, run: RunBatch | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N] and CAMs [N, h, w] of ``session`` for images [N, 1, S, S], in batches
    (each through ``run``, plain ``session.run`` by default)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected preprocessed images [N, 1, S, S], got shape {images.shape}")
    run = run or _run_plain(session)
    probs, cams = [], []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        p, c = run(batch)
        probs.append(np.asarray(p).reshape(-1))
        cams.append(np.asarray(c))
    if not probs:
        raise ValueError("no images to score")
    return np.concatenate(probs), np.concatenate(cams)


def read_card(path: Path) -> ModelCard:
    """Return the :class:`~dicomnode.model.card.ModelCard` stored in the ONNX file at ``path``.

    Raises FileNotFoundError if there is no file, and ValueError if it is not a dicomnode model
    (no card, or inputs/outputs other than those in :mod:`dicomnode.model.card`).
    """
    return _open(path, CPU_PROVIDERS)[1]


def onnx_session(path: Path, *, threads: int | None = None) -> ort.InferenceSession:
    """A checked CPU onnxruntime session for ``path`` (all graph optimisations; ``threads`` intra-op).

    Raises as :func:`read_card` does.
    """
    return _open(path, CPU_PROVIDERS, threads=threads)[0]


def predict_onnx(
    path: Path, images: np.ndarray, *, batch_size: int = 32, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N] and CAMs [N, h, w] of the model at ``path`` for preprocessed images
    ``[N, 1, S, S]``, on the CPU in batches of ``batch_size``."""
    return _predict(onnx_session(path, threads=threads), images, batch_size)


def int8_path(path: Path) -> Path:
    """Where the INT8 copy of the model at ``path`` sits: ``models/m.onnx`` -> ``models/m-int8.onnx``
    (the name ``python -m training quantize --out`` is given in the README)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-int8{path.suffix}")


def int8_refusal(fp32: ModelCard, int8: ModelCard, max_auroc_drop: float) -> str | None:
    """Why the INT8 model with card ``int8`` may not stand in for ``fp32``, or None when it may:
    it must have been quantised from this very model (its record names ``fp32``'s version), take
    the same preprocessing, and its card must record an AUROC change of at least ``-max_auroc_drop``
    (``python -m training quantize`` records it when given the training run's data options)."""
    record = int8.metrics.get(QUANTIZATION_KEY)
    if not isinstance(record, dict):
        return "its card has no quantisation record: make it with `python -m training quantize`"
    if record.get("fp32_version") != fp32.version:
        return (
            f"it was quantised from model version {record.get('fp32_version')!r}, not {fp32.version!r}: "
            "quantise this model again"
        )
    if int8.preprocess != fp32.preprocess:
        return "its preprocessing differs from the model's: quantise this model again"
    change = record.get("auroc_change")
    if not isinstance(change, int | float):
        return (
            "its card records no AUROC change: quantise with the training run's data options, so "
            "that fp32 and INT8 are compared on the validation split"
        )
    if change < -max_auroc_drop:
        return f"it loses {-change:.4f} AUROC, more than DICOMNODE_INT8_MAX_AUROC_DROP={max_auroc_drop}"
    return None


def time_runs(
    runs: Mapping[str, Callable[[], object]],
    *,
    max_runs: int = INT8_TIMING_RUNS,
    max_seconds: float = INT8_TIMING_SECONDS,
) -> dict[str, float]:
    """Median milliseconds per call of each of ``runs``, after one untimed call each.

    The calls alternate, so that load from other processes hits each alike; timing stops after
    ``max_runs`` calls of each or ``max_seconds`` in all, but never before 3 calls of each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    t_end = time.perf_counter() + max_seconds
    for i in range(max_runs):
        if i >= 3 and time.perf_counter() > t_end:
            break
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(ms) for name, ms in times.items()}


@dataclass(frozen=True)
class Int8Choice:
    """Whether the worker runs the INT8 copy of its model, and why (logged as ``inference.int8``)."""

    used: bool
    reason: str
    #: median milliseconds per batch of ``batch_size`` images of each, where they were timed
    fp32_ms: float | None = None
    int8_ms: float | None = None
    #: INT8 AUROC minus fp32 AUROC on the validation split, as the INT8 card records it
    auroc_change: float | None = None


def worker_providers(
    available: Sequence[str],
    *,
    tensorrt: bool = False,
    card: ModelCard | None = None,
    cache_dir: Path | None = None,
    batch_size: int = GPU_BATCH_SIZE,
) -> list[Provider]:
    """The providers a worker asks for, best first: :data:`PREFERRED_PROVIDERS` this build offers,
    and TensorRT before them with ``tensorrt`` where offered.

    TensorRT gets an optimisation profile for 1 to ``batch_size`` images of the card's size (one
    engine serves every batch; without it each new batch size builds another, for minutes) and
    caches engines in ``cache_dir``. It runs fp32: fp16 would change the scores the card's
    threshold was picked on."""
    chosen: list[Provider] = [p for p in PREFERRED_PROVIDERS if p in available]
    if tensorrt and TENSORRT_PROVIDER in available:
        options: dict[str, Any] = {"trt_fp16_enable": False}
        if card is not None:
            side = int(card.preprocess["size"])
            options.update(
                trt_profile_min_shapes=f"{INPUT_NAME}:1x1x{side}x{side}",
                trt_profile_opt_shapes=f"{INPUT_NAME}:{batch_size}x1x{side}x{side}",
                trt_profile_max_shapes=f"{INPUT_NAME}:{batch_size}x1x{side}x{side}",
            )
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        chosen.insert(0, (TENSORRT_PROVIDER, options))
    return chosen


class PneumoniaModel:
    """A loaded model as the worker runs it: its card, its preprocessing and an onnxruntime session.

    ``providers`` defaults to :func:`worker_providers` (TensorRT first with ``tensorrt``, where
    installed; engines cached in ``cache_dir``); the choice is logged (``inference.cpu`` when no
    GPU provider is used, then ``inference.loaded``). ``batch_size`` (images per model call)
    defaults to :data:`GPU_BATCH_SIZE` on a GPU and :data:`CPU_BATCH_SIZE` on the CPU.
    ``io_binding`` (default: on a GPU) binds inputs and outputs on the session's device.

    With ``int8_max_auroc_drop`` (None or negative: never) and the INT8 copy at
    :func:`int8_path` beside the file, a CPU worker times both and runs INT8 where
    :func:`int8_refusal` has no objection and it is :data:`INT8_MIN_SPEEDUP` times as fast; then
    :attr:`card` is the INT8 card (its version, ending ``int8``, goes into every analysis row and
    result) and :attr:`int8` says why, with both timings (also logged as ``inference.int8``).

    Raises :class:`ModelLoadError` if the file is missing or is not a dicomnode model.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[Provider] | None = None,
        batch_size: int | None = None,
        tensorrt: bool = False,
        cache_dir: Path | None = None,
        int8_max_auroc_drop: float | None = None,
        io_binding: bool | None = None,
    ) -> None:
        import onnxruntime as ort
        import structlog

        log = structlog.get_logger("worker.inference")
        if providers is None:
            available = ort.get_available_providers()
            card = None
            if tensorrt and TENSORRT_PROVIDER in available:  # its profile needs the image size
                try:
                    card = read_card(path)
                except (FileNotFoundError, ValueError) as exc:
                    raise ModelLoadError(str(exc)) from exc
            providers = worker_providers(
                available,
                tensorrt=tensorrt,
                card=card,
                cache_dir=cache_dir,
                batch_size=batch_size or GPU_BATCH_SIZE,
            )
        try:
            # not quiet: onnxruntime's warnings say, for one, why CUDA fell back to the CPU
            self.session, self.card = _open(path, providers, quiet=False)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
        self.preprocess_config = PreprocessConfig.from_dict(self.card.preprocess)
        self.path = Path(path)
        self.providers: list[str] = self.session.get_providers()
        #: the session runs on an NVIDIA GPU (TensorRT or CUDA provider first)
        self.on_gpu = self.providers[0] in GPU_PROVIDERS
        self.batch_size = batch_size or (GPU_BATCH_SIZE if self.on_gpu else CPU_BATCH_SIZE)
        self.io_binding = self.on_gpu if io_binding is None else io_binding
        self._device = "cuda" if self.on_gpu else "cpu"
        #: the INT8 decision, None where there was none to make (no INT8 copy, or not asked)
        self.int8: Int8Choice | None = None
        if int8_max_auroc_drop is not None and int8_max_auroc_drop >= 0:
            self.int8 = self._consider_int8(int8_max_auroc_drop, providers)
            if self.int8 is not None:
                log.info(
                    "inference.int8",
                    used=self.int8.used,
                    reason=self.int8.reason,
                    fp32_ms=self.int8.fp32_ms,
                    int8_ms=self.int8.int8_ms,
                    auroc_change=self.int8.auroc_change,
                    batch=self.batch_size,
                )
        if not self.on_gpu:
            log.info("inference.cpu", reason="no GPU execution provider available", providers=self.providers)
        log.info(
            "inference.loaded",
            model=self.card.name,
            version=self.card.version,
            providers=self.providers,
            batch=self.batch_size,
            io_binding=self.io_binding,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> PneumoniaModel:
        """The model a worker runs with :class:`dicomnode.config.Settings` ``settings`` (``Any``
        here: the config room sits above this one): ``DICOMNODE_MODEL``, its INT8 copy by
        ``DICOMNODE_INT8_MAX_AUROC_DROP``, TensorRT by ``DICOMNODE_TENSORRT`` (engines cached in
        ``trt-cache/`` under the storage folder)."""
        return cls(
            settings.model_path,
            tensorrt=settings.tensorrt,
            cache_dir=settings.storage_dir / "trt-cache",
            int8_max_auroc_drop=settings.int8_max_auroc_drop,
        )

    def _consider_int8(self, max_auroc_drop: float, providers: Sequence[Provider]) -> Int8Choice | None:
        """Switch to the INT8 copy where it may stand in and is faster here; the decision, or None
        when there is no INT8 copy."""
        path = int8_path(self.path)
        if not path.is_file():
            return None
        if self.on_gpu:
            return Int8Choice(False, "a GPU worker runs fp32: INT8 is for CPU workers")
        try:
            session, card = _open(path, providers, quiet=False)
        except (FileNotFoundError, ValueError) as exc:
            return Int8Choice(False, f"{path.name} cannot be loaded: {exc}"[:300])
        record = card.metrics.get(QUANTIZATION_KEY)
        change = record.get("auroc_change") if isinstance(record, dict) else None
        auroc_change = float(change) if isinstance(change, int | float) else None
        refusal = int8_refusal(self.card, card, max_auroc_drop)
        if refusal is not None:
            return Int8Choice(False, refusal, auroc_change=auroc_change)
        side = int(self.card.preprocess["size"])
        batch = np.random.default_rng(0).standard_normal((self.batch_size, 1, side, side), dtype=np.float32)
        fp32_run, int8_run = self._runner(self.session), self._runner(session)
        ms = time_runs({"fp32": lambda: fp32_run(batch), "int8": lambda: int8_run(batch)})
        fp32_ms, int8_ms = round(ms["fp32"], 2), round(ms["int8"], 2)
        if ms["fp32"] < INT8_MIN_SPEEDUP * ms["int8"]:
            return Int8Choice(
                False, f"INT8 is not {INT8_MIN_SPEEDUP}x as fast on this CPU", fp32_ms, int8_ms, auroc_change
            )
        self.session, self.card, self.path = session, card, path
        self.providers = session.get_providers()
        return Int8Choice(
            True, "faster on this CPU, within the AUROC allowed", fp32_ms, int8_ms, auroc_change
        )

    def _runner(self, session: ort.InferenceSession) -> RunBatch:
        return _run_bound(session, self._device) if self.io_binding else _run_plain(session)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N] and class-activation maps [N, h, w] for preprocessed images [N, 1, S, S]."""
        return _predict(self.session, images, self.batch_size, self._runner(self.session))


__all__ = [
    "CPU_BATCH_SIZE",
    "CPU_PROVIDERS",
    "GPU_BATCH_SIZE",
    "GPU_PROVIDERS",
    "INT8_MIN_SPEEDUP",
    "PREFERRED_PROVIDERS",
    "TENSORRT_PROVIDER",
    "Int8Choice",
    "ModelLoadError",
    "PneumoniaModel",
    "Provider",
    "int8_path",
    "int8_refusal",
    "onnx_session",
    "predict_onnx",
    "read_card",
    "time_runs",
    "worker_providers",
]
