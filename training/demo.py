"""The demo model: a small ResNet-18 trained on phantoms in about a minute on two CPU cores.

It exists so the node can run end to end without real data or downloaded weights. It has only
seen phantoms (:mod:`dicomnode.testing.phantoms`) and must never be used on patients. Importing this module
does not import torch; :func:`ensure_demo_model` needs torch only when it has to train.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.model import PreprocessConfig

if TYPE_CHECKING:
    from training.train import TrainConfig

DEMO_NAME = "dicomnode-pneumonia-demo"
DEMO_BASE_VERSION = "0.1.0"
TORCH_MISSING = "training needs the train extra: pip install torch==2.13.0 && pip install -e .[train]"
#: a safety stop only: the demo trains all its epochs on any machine that can run the node, so it
#: is the same model everywhere (a tighter budget made it depend on how busy the machine was)
DEMO_MAX_TRAIN_SECONDS = 900.0
#: preprocessing of the demo model: 128 px keeps its training to a minute or two on 2 cores
DEMO_PREPROCESS = PreprocessConfig(size=128)
#: ResNet depth and base width of the demo model
DEMO_DEPTH, DEMO_WIDTH = 18, 16


def _require_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(TORCH_MISSING) from None


def demo_train_config(seed: int = 0) -> TrainConfig:
    """The :class:`~training.train.TrainConfig` of the demo model (imports torch)."""
    _require_torch()
    from training.model import ModelConfig
    from training.train import TrainConfig

    return TrainConfig(
        data="phantoms",
        n_phantoms=800,
        phantom_size=256,
        val_fraction=0.2,
        preprocess=DEMO_PREPROCESS,
        model=ModelConfig(depth=DEMO_DEPTH, width=DEMO_WIDTH),
        epochs=12,
        batch_size=16,
        lr=3e-3,
        weight_decay=1e-4,
        patience=4,
        seed=seed,
        workers=2,
        max_train_seconds=DEMO_MAX_TRAIN_SECONDS,
    )


def ensure_demo_model(path: Path, *, seed: int = 0) -> Path:
    """Return ``path``, first training and exporting the demo model there if it does not exist.

    Safe to call from several processes at once: one trains, the others wait and reuse its file.
    Raises ImportError (with the install command) if it has to train and torch is missing.
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if path.is_file():  # another process made it while we waited
                return path
            _train_and_export(path, seed)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        lock_path.unlink()
    except FileNotFoundError:
        pass
    return path


def _train_and_export(path: Path, seed: int) -> None:
    _require_torch()
    from training.export import export_onnx
    from training.train import log_event, train

    t0 = time.perf_counter()
    config = demo_train_config(seed)
    log_event("demo.train", out=str(path), seed=seed)
    result = train(config)
    fingerprint = hashlib.sha256(f"{config.command()}|{result.data_fingerprint}".encode()).hexdigest()[:8]
    card = result.card(name=DEMO_NAME, version=f"{DEMO_BASE_VERSION}-demo+{fingerprint}")
    export_onnx(result.model, path, card)
    if result.val_auroc < 0.9:
        log_event("demo.warning", reason="val_auroc_below_0.9", val_auroc=result.val_auroc)
    log_event(
        "demo.done",
        out=str(path),
        version=card.version,
        val_auroc=round(result.val_auroc, 4),
        threshold=round(card.threshold, 4),
        seconds=round(time.perf_counter() - t0, 1),
    )


__all__ = ["DEMO_NAME", "demo_train_config", "ensure_demo_model"]
