"""Opening an exported model file with onnxruntime (no torch, no onnx): its card, a session, scores.

Every way in goes through one opener that checks the file is a dicomnode model: it exists, it
loads, it carries the card under :data:`~dicomnode.model.card.METADATA_KEY`, and its graph has the
input :data:`~dicomnode.model.card.INPUT_NAME` and the outputs
:data:`~dicomnode.model.card.PROBABILITY_OUTPUT` and :data:`~dicomnode.model.card.CAM_OUTPUT`.

- :class:`PneumoniaModel` is the model as the worker runs it (``worker.pipeline``, and
  ``dicomnode worker`` checks the model at start): card, preprocessing, a session on the best
  execution provider (:data:`PREFERRED_PROVIDERS`), batched :meth:`~PneumoniaModel.predict`.
- :func:`read_card` reads a card without scoring (``dicomnode monitor --model``, ``python -m training
  card`` and ``quantize``); :func:`onnx_session` and :func:`predict_onnx` score on the CPU for
  training's checks (quantisation, the benchmark).

onnxruntime and structlog are imported when a model is opened, not with this module: the package
:mod:`dicomnode.model` re-exports these names, and ``dicomnode.config`` imports the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicomnode.model.card import CAM_OUTPUT, INPUT_NAME, METADATA_KEY, PROBABILITY_OUTPUT, ModelCard
from dicomnode.model.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import onnxruntime as ort

#: Execution providers the worker prefers, best first; it uses those this onnxruntime build offers.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

#: Providers of :func:`read_card`, :func:`onnx_session` and :func:`predict_onnx`.
CPU_PROVIDERS = ("CPUExecutionProvider",)


class ModelLoadError(RuntimeError):
    """:class:`PneumoniaModel` could not load its file; the message says what to do.

    It carries the message of the FileNotFoundError or ValueError that :func:`read_card` raises for
    the same file.
    """


def _open(
    path: Path, providers: Sequence[str], *, threads: int | None = None, quiet: bool = True
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


def _predict(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [N] and CAMs [N, h, w] of ``session`` for images [N, 1, S, S], in batches."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected preprocessed images [N, 1, S, S], got shape {images.shape}")
    probs, cams = [], []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        p, c = session.run([PROBABILITY_OUTPUT, CAM_OUTPUT], {INPUT_NAME: batch})
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


class PneumoniaModel:
    """A loaded model as the worker runs it: its card, its preprocessing and an onnxruntime session.

    ``providers`` defaults to the :data:`PREFERRED_PROVIDERS` this onnxruntime build offers; the
    choice is logged (``inference.cpu`` when CUDA is not used, then ``inference.loaded``). Raises
    :class:`ModelLoadError` if the file is missing or is not a dicomnode model.
    """

    def __init__(self, path: Path, *, providers: list[str] | None = None, batch_size: int = 8) -> None:
        import onnxruntime as ort
        import structlog

        log = structlog.get_logger("worker.inference")
        available = ort.get_available_providers()
        chosen = providers or [p for p in PREFERRED_PROVIDERS if p in available]
        try:
            # not quiet: onnxruntime's warnings say, for one, why CUDA fell back to the CPU
            self.session, self.card = _open(path, chosen, quiet=False)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
        self.preprocess_config = PreprocessConfig.from_dict(self.card.preprocess)
        self.path = path
        self.batch_size = batch_size
        self.providers: list[str] = self.session.get_providers()
        if "CUDAExecutionProvider" not in self.providers:
            log.info("inference.cpu", reason="CUDAExecutionProvider not available", providers=self.providers)
        log.info(
            "inference.loaded", model=self.card.name, version=self.card.version, providers=self.providers
        )

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities [N] and class-activation maps [N, h, w] for preprocessed images [N, 1, S, S]."""
        return _predict(self.session, images, self.batch_size)


__all__ = [
    "CPU_PROVIDERS",
    "PREFERRED_PROVIDERS",
    "ModelLoadError",
    "PneumoniaModel",
    "onnx_session",
    "predict_onnx",
    "read_card",
]
