"""Train the pneumonia classifier: data -> split -> preprocess (cached in memory) -> fit -> pick
the operating point on validation.

One run is fully described by a :class:`TrainConfig`; :meth:`TrainConfig.command` prints the
``python -m training train ...`` line that repeats it. Runs are seeded and deterministic on a given
machine and thread count; with ``out_dir`` set, every epoch writes ``checkpoint.pt`` and a run
started again with ``resume=True`` continues where it stopped.

Recipe: AdamW (no weight decay on norms and biases), linear warm-up then cosine decay per step,
optional gradient-norm clipping, class balance by ``pos_weight`` in the BCE loss or by a balanced
sampler, augmentation safe for chest radiographs (small
rotation, scale and shift, brightness and contrast; never a left-right flip, which would put the
heart on the wrong side), early stopping on validation AUROC, best weights restored at the end.
Validation runs with BatchNorm in eval mode (running statistics), as the exported model does.

The final validation (and test) metrics carry the calibration error and percentile-bootstrap
confidence intervals (``TrainConfig.bootstrap`` resamples); :meth:`TrainResult.card` adds the
validation score histogram, the baseline of the node's drift monitor.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.uid import generate_uid

from dicomnode.model import ModelCard, PreprocessConfig, score_histogram
from training import datasets
from training.datasets import DATA_SOURCES
from training.evaluate import evaluate_scores, round_metrics
from training.events import log_event
from training.image_sets import TableSpec
from training.model import ModelConfig, ResNetCAM, build_model

CHECKPOINT_NAME = "checkpoint.pt"

#: how the classes are balanced: "loss" weights positives by n_neg/n_pos in the BCE loss, "sampler"
#: draws each batch with both classes equally likely (with replacement), "none" does neither
BALANCE_MODES = ("loss", "sampler", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run."""

    #: "phantoms" (made on the fly), "folder" (data_dir + labels_csv), "rsna" (data_dir),
    #: "classes" (data_dir of class folders) or "table" (labels_csv image table [+ data_dir])
    data: str = "phantoms"
    data_dir: Path | None = None
    labels_csv: Path | None = None
    #: data "classes": the folder name of the positive class
    positive_class: str = "PNEUMONIA"
    #: data "table": the columns and label rules of the image table
    table: TableSpec = field(default_factory=TableSpec)
    n_phantoms: int = 600
    phantom_size: int = 256
    phantom_positive_fraction: float = 0.5
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    #: clip the gradient's global L2 norm to this (0: no clipping)
    clip_grad: float = 0.0
    #: one of :data:`BALANCE_MODES`
    balance: str = "loss"
    patience: int = 5
    target_sensitivity: float = 0.9
    augment: bool = True
    seed: int = 0
    #: torch CPU threads (None: torch's default)
    threads: int | None = None
    #: "auto" (CUDA when torch sees a GPU, else CPU), "cpu" or "cuda"
    device: str = "auto"
    #: processes for preprocessing (0 or 1: in this process)
    workers: int = 0
    #: where checkpoint.pt goes; None: no checkpoints
    out_dir: Path | None = None
    resume: bool = False
    #: training time budget: after each epoch the cosine schedule is fitted to the epochs that the
    #: budget holds at the pace so far (at most ``epochs``), so the learning rate anneals before the
    #: budget ends; training stops after the first epoch that ends past it
    max_train_seconds: float | None = None
    #: bootstrap resamples for the confidence intervals of the final metrics (0: none)
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data={self.data!r} is unknown: use one of {DATA_SOURCES}")
        if self.data in ("folder", "rsna") and self.data_dir is None:
            raise ValueError(f"data={self.data!r} needs data_dir (--data-dir DIR)")
        if self.data == "folder" and self.labels_csv is None:
            raise ValueError("data='folder' needs labels_csv (--labels CSV with path,label)")
        if self.data == "table" and self.labels_csv is None:
            raise ValueError("data='table' needs labels_csv (--labels CSV, e.g. Data_Entry_2017.csv)")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance={self.balance!r} is unknown: use one of {BALANCE_MODES}")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad={self.clip_grad} must be >= 0 (0 turns clipping off)")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs={self.epochs}, batch_size={self.batch_size}: need >= 1, >= 2")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap={self.bootstrap} must be >= 0 (--bootstrap 0 turns it off)")
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (--out-dir DIR) holding checkpoint.pt")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings, nested configs as dicts)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["preprocess"] = self.preprocess.to_dict()
        d["model"] = self.model.to_dict()
        d["table"] = self.table.to_dict()
        for k in ("data_dir", "labels_csv", "out_dir"):
            d[k] = None if d[k] is None else str(d[k])
        return d

    def command(self) -> str:
        """The ``python -m training train ...`` command line that repeats this run."""
        argv = ["python", "-m", "training", "train", "--data", self.data]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        if self.labels_csv is not None:
            argv += ["--labels", str(self.labels_csv)]
        if self.data == "classes":
            argv += ["--positive-class", self.positive_class]
        if self.data == "table":
            t = self.table
            argv += ["--path-column", t.path_column, "--label-column", t.label_column]
            argv += ["--finding", t.finding, "--patient-column", t.patient_column]
            argv += ["--patient-pattern", t.patient_pattern, "--uncertain", t.uncertain]
        if self.data == "phantoms":
            argv += ["--n-phantoms", str(self.n_phantoms), "--phantom-size", str(self.phantom_size)]
            argv += ["--positive-fraction", str(self.phantom_positive_fraction)]
        argv += ["--val-fraction", str(self.val_fraction), "--test-fraction", str(self.test_fraction)]
        p = self.preprocess
        argv += ["--image-size", str(p.size), "--voi", p.voi]
        argv += ["--depth", str(self.model.depth), "--width", str(self.model.width)]
        argv += ["--epochs", str(self.epochs), "--batch-size", str(self.batch_size)]
        argv += ["--lr", str(self.lr), "--weight-decay", str(self.weight_decay)]
        argv += ["--warmup-epochs", str(self.warmup_epochs), "--patience", str(self.patience)]
        if self.clip_grad:
            argv += ["--clip-grad", str(self.clip_grad)]
        if self.balance != TrainConfig.balance:
            argv += ["--balance", self.balance]
        argv += ["--target-sensitivity", str(self.target_sensitivity), "--seed", str(self.seed)]
        if not self.augment:
            argv.append("--no-augment")
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.device != "auto":
            argv += ["--device", self.device]
        if self.workers:
            argv += ["--workers", str(self.workers)]
        if self.out_dir is not None:
            argv += ["--out-dir", str(self.out_dir)]
        if self.resume:
            argv.append("--resume")
        if self.max_train_seconds is not None:
            argv += ["--max-train-seconds", str(self.max_train_seconds)]
        if self.bootstrap != TrainConfig.bootstrap:
            argv += ["--bootstrap", str(self.bootstrap)]
        return shlex.join(argv)


@dataclass
class TrainResult:
    """A trained model (best validation weights, eval mode) and how it was obtained."""

    model: ResNetCAM
    config: TrainConfig
    #: threshold picked on validation for ``config.target_sensitivity``
    threshold: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any] | None
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    data_fingerprint: str
    n_train: int
    n_val: int
    n_test: int
    elapsed_s: float
    checkpoint: Path | None = None
    #: validation labels and scores of the returned weights (for the report and the drift baseline)
    val_labels: np.ndarray | None = None
    val_scores: np.ndarray | None = None
    #: test labels and scores (when the run had a test split)
    test_labels: np.ndarray | None = None
    test_scores: np.ndarray | None = None

    @property
    def val_auroc(self) -> float:
        """Validation AUROC of the returned weights."""
        return float(self.val_metrics["auroc"])

    def card(self, *, name: str, version: str, created: str | None = None) -> ModelCard:
        """The model card for exporting this result.

        The Device UID is derived from the weights, so it changes with every retrain that
        changes the model (DICOM Contributing Equipment).
        """
        metrics: dict[str, Any] = {"val": round_metrics(self.val_metrics), "best_epoch": self.best_epoch}
        if self.test_metrics is not None:
            metrics["test"] = round_metrics(self.test_metrics)
        metrics["n_train"], metrics["n_val"], metrics["n_test"] = (
            self.n_train,
            self.n_val,
            self.n_test,
        )
        metrics["target_sensitivity"] = self.config.target_sensitivity
        if self.val_scores is not None:
            # the drift monitor's baseline (dicomnode.ops.drift reads this key)
            metrics["val_score_histogram"] = round_metrics(score_histogram(self.val_scores))
            metrics["val_scores_n"] = int(len(self.val_scores))
        return ModelCard(
            name=name,
            version=version,
            threshold=float(self.threshold),
            device_uid=generate_uid(entropy_srcs=["dicomnode-model", weights_fingerprint(self.model)]),
            preprocess=self.config.preprocess.to_dict(),
            architecture=self.model.config.name,
            created=created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            data_fingerprint=self.data_fingerprint,
            metrics=metrics,
        )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers (hex)."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random small affine (rotation +-7 deg, scale 0.92-1.08, shift +-5 %) and
    brightness/contrast; no flips."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-7.0, 7.0) * math.pi / 180.0
    scale = uniform(0.92, 1.08)
    tx, ty = uniform(-0.05, 0.05), uniform(-0.05, 0.05)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [N, 2, 3]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(0.85, 1.15).view(n, 1, 1, 1)
    brightness = uniform(-0.2, 0.2).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * contrast + mean + brightness


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: torch sees no GPU (CPU-only torch build or no driver); use --device cpu"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


@torch.no_grad()
def predict(model: ResNetCAM, x: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Probabilities for preprocessed images ``[N, 1, S, S]`` (eval mode, no grad)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.asarray(x[i : i + batch_size], dtype=np.float32), device=device)
        out.append(torch.sigmoid(model.logits(xb)).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def weighted_bce(y: np.ndarray, p: np.ndarray, pos_weight: float = 1.0) -> float:
    """Mean binary cross-entropy of probabilities ``p``, positives weighted as in the training loss."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean(-(pos_weight * y * np.log(p) + (1.0 - y) * np.log1p(-p))))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_lambda(total_steps: list[int], warmup_steps: int) -> Callable[[int], float]:
    """Warm-up then cosine to ``total_steps[0]`` (a list: the time budget may change it)."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps[0] - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def split_data(config: TrainConfig) -> tuple[datasets.Split, datasets.PhantomSpec | None, str]:
    """The patient split of ``config``'s data, the phantom spec (phantoms only) and the data
    fingerprint that goes into the model card; no images are read."""
    return datasets.split_source(
        config.data,
        config.preprocess,
        data_dir=config.data_dir,
        labels_csv=config.labels_csv,
        n_phantoms=config.n_phantoms,
        phantom_size=config.phantom_size,
        positive_fraction=config.phantom_positive_fraction,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        positive_class=config.positive_class,
        table=config.table,
    )


def _patients(samples: list[datasets.Sample]) -> np.ndarray:
    """Patient IDs of ``samples``, for bootstrapping over patients (never logged)."""
    return np.array([s.patient_id for s in samples])


def _load_data(
    config: TrainConfig, log: Callable[..., None]
) -> tuple[datasets.Split, datasets.PhantomSpec | None, str]:
    split, phantom, fp = split_data(config)
    log(
        "train.data",
        source=config.data,
        n_train=len(split.train),
        n_val=len(split.val),
        n_test=len(split.test),
        positives_train=sum(s.label for s in split.train),
        fingerprint=fp,
    )
    return split, phantom, fp


def train(config: TrainConfig, *, log: Callable[..., None] = log_event) -> TrainResult:
    """Train one model as ``config`` says and return the best-on-validation weights."""
    t_start = time.perf_counter()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    log("train.start", command=config.command())
    torch.manual_seed(config.seed)

    split, phantom, data_fp = _load_data(config, log)
    t0 = time.perf_counter()
    x_train, y_train = datasets.load_arrays(
        split.train, config.preprocess, phantom=phantom, workers=config.workers
    )
    x_val, y_val = datasets.load_arrays(split.val, config.preprocess, phantom=phantom, workers=config.workers)
    log("train.preprocessed", seconds=round(time.perf_counter() - t0, 1), shape=x_train.shape[1:])

    device = resolve_device(config.device)
    log("train.device", device=str(device))
    model = build_model(config.model).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    n_train = len(y_train)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    # drop a last batch of one: BatchNorm cannot train on it
    if n_train % config.batch_size == 1:
        steps_per_epoch -= 1
    planned_epochs = config.epochs
    total_steps = [steps_per_epoch * planned_epochs]
    warmup = max(1, int(config.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))
    n_pos = float(y_train.sum())
    pos_weight = torch.tensor(
        (n_train - n_pos) / max(n_pos, 1.0) if config.balance == "loss" else 1.0, device=device
    )
    # "sampler": each case drawn with probability 1 / (2 x its class's count), so both classes
    # are equally likely in every batch
    class_count = torch.tensor([n_train - n_pos, n_pos]).clamp(min=1.0)
    draw_weights = (1.0 / class_count)[torch.from_numpy(y_train).long()]

    start_epoch, best_auroc, best_epoch, bad_epochs = 0, -1.0, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    ckpt_path = Path(config.out_dir) / CHECKPOINT_NAME if config.out_dir is not None else None
    if config.resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["data_fingerprint"] != data_fp or ckpt["model_config"] != config.model.to_dict():
            raise ValueError(
                f"{ckpt_path} was trained on other data or another architecture: start a new "
                "run in another --out-dir, or drop --resume to overwrite it"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        best_state, best_auroc = ckpt["best_state"], ckpt["best_auroc"]
        best_epoch, bad_epochs, history = ckpt["best_epoch"], ckpt["bad_epochs"], ckpt["history"]
        start_epoch = ckpt["epoch"]
        planned_epochs = int(ckpt.get("planned_epochs", config.epochs))
        total_steps[0] = steps_per_epoch * planned_epochs
        log("train.resume", checkpoint=str(ckpt_path), epoch=start_epoch)

    x_train_t = torch.from_numpy(x_train)
    y_train_t = torch.from_numpy(y_train)
    t_train = time.perf_counter()
    stopped = "epochs"
    for epoch in range(start_epoch, config.epochs):
        if bad_epochs >= config.patience:
            stopped = "early"
            break
        if epoch >= planned_epochs:
            stopped = "time"
            break
        model.train()
        # one generator per epoch: a resumed run sees the same batches and augmentations
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        if config.balance == "sampler":
            order = torch.multinomial(draw_weights, n_train, replacement=True, generator=gen)
        else:
            order = torch.randperm(n_train, generator=gen)
        loss_sum, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            xb = x_train_t[idx].float()
            yb = y_train_t[idx]
            if config.augment:
                xb = augment_batch(xb, gen)  # on the CPU, with the epoch's generator: reproducible
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.binary_cross_entropy_with_logits(model.logits(xb), yb, pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        p_val = predict(model, x_val)
        val = evaluate_scores(y_val, p_val, target_sensitivity=config.target_sensitivity)
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "val_loss": weighted_bce(y_val, p_val, float(pos_weight)),
            "val_auroc": val["auroc"],
            "val_ap": val["average_precision"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - t_train,
        }
        history.append(row)
        if val["auroc"] > best_auroc + 1e-4:
            best_auroc, best_epoch, bad_epochs = val["auroc"], epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        log(
            "train.epoch",
            epoch=f"{epoch + 1}/{config.epochs}",
            loss=round(row["loss"], 4),
            val_loss=round(row["val_loss"], 4),
            val_auroc=round(val["auroc"], 4),
            val_ap=round(val["average_precision"], 4),
            best=round(best_auroc, 4),
            seconds=round(row["seconds"], 1),
        )
        if ckpt_path is not None:
            _save_checkpoint(
                ckpt_path,
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_state": best_state,
                    "best_auroc": best_auroc,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "config": config.to_dict(),
                    "model_config": config.model.to_dict(),
                    "data_fingerprint": data_fp,
                    "planned_epochs": planned_epochs,
                },
            )
        if config.max_train_seconds is not None:
            spent = time.perf_counter() - t_train
            if spent > config.max_train_seconds:
                stopped = "time"
                break
            # the epochs that fit the budget at the pace so far (between this one and config.epochs):
            # the cosine schedule follows, so it anneals before the budget ends; on a shared machine
            # the pace changes, and the plan with it
            fit = int(config.max_train_seconds / (spent / (epoch + 1 - start_epoch))) + start_epoch
            fit = min(config.epochs, max(fit, epoch + 1))
            if fit != planned_epochs:
                planned_epochs = fit
                total_steps[0] = steps_per_epoch * planned_epochs
                log("train.schedule", planned_epochs=planned_epochs, reason="time budget")

    model.load_state_dict(best_state)
    model.cpu()  # export and the card's fingerprint work on CPU weights
    model.eval()
    p_val = predict(model, x_val)
    ci = {"bootstrap": config.bootstrap, "seed": config.seed}
    val_metrics = evaluate_scores(
        y_val, p_val, target_sensitivity=config.target_sensitivity, groups=_patients(split.val), **ci
    )
    test_metrics = None
    y_test = p_test = None
    if split.test:
        x_test, y_test = datasets.load_arrays(
            split.test, config.preprocess, phantom=phantom, workers=config.workers
        )
        p_test = predict(model, x_test)
        test_metrics = evaluate_scores(
            y_test, p_test, threshold=val_metrics["threshold"], groups=_patients(split.test), **ci
        )
    elapsed = time.perf_counter() - t_start
    log(
        "train.done",
        stopped=stopped,
        best_epoch=best_epoch,
        val_auroc=round(val_metrics["auroc"], 4),
        threshold=round(val_metrics["threshold"], 4),
        val_sensitivity=round(val_metrics["sensitivity"], 3),
        val_specificity=round(val_metrics["specificity"], 3),
        seconds=round(elapsed, 1),
    )
    return TrainResult(
        model=model,
        config=config,
        threshold=float(val_metrics["threshold"]),
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        data_fingerprint=data_fp,
        n_train=len(split.train),
        n_val=len(split.val),
        n_test=len(split.test),
        elapsed_s=elapsed,
        checkpoint=ckpt_path,
        val_labels=y_val,
        val_scores=p_val,
        test_labels=y_test,
        test_scores=p_test,
    )


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint_model(path: Path, *, best: bool = True) -> ResNetCAM:
    """Rebuild the model from a ``checkpoint.pt`` (best weights by default), in eval mode."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=False)
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["best_state"] if best else ckpt["model"])
    return model.eval()


__all__ = [
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "load_checkpoint_model",
    "log_event",
    "predict",
    "split_data",
    "train",
    "weighted_bce",
    "weights_fingerprint",
]
