#!/usr/bin/env bash
# Train the demo model on a GPU, check its ONNX export, time inference; optionally the same
# training on the CPU for a ratio. Everything printed also lands in files under OUT_DIR.
#
#   bench/gpu_training.sh [OUT_DIR]     # default dicomnode-data/bench/gpu-training-<UTC time>
#
# The training is exactly the demo model's run (training.demo.demo_train_config: 800 phantoms,
# 128 px, ResNet-18 width 16, 12 epochs, early stopping, 120 s cap), repeated through
# `python -m training train ... --device cuda --onnx ...`, so the exported file is a verified
# model (the export compares onnxruntime with torch and refuses a mismatch).
#
# Files in OUT_DIR (at most 8): gpu_training.log (everything), env.txt, train-<device>.log,
# export-check.txt, inference.log, train-cpu.log, gpu-util.csv (nvidia-smi samples), summary.txt.
# Models and checkpoints go to WORK_DIR (default: a temporary folder, removed at the end).
#
# Environment:
#   PYTHON=python3        interpreter with torch, numpy, onnx, onnxscript, onnxruntime, pydicom
#   DEVICE=cuda           `cpu` dry-runs the whole script on a machine without a GPU
#   CPU_COMPARE=1         after the GPU run, train the same on the CPU (0: skip)
#   CPU_TIMEOUT=240       seconds before the CPU comparison is stopped (the run caps itself at
#                         120 s of training plus one epoch, preprocessing and export)
#   INFERENCE=1           run bench/inference.py (0: skip)
#   INFERENCE_ARGS        default: --threads 2 --batches 1,8,32 --repeats 3 --seconds 0.5
#   EXTRA_TRAIN_ARGS      appended to both training commands (later options win), e.g.
#                         "--n-phantoms 40 --image-size 32 --epochs 1" for a quick dry run
#   WORK_DIR              keep models and checkpoints here instead of a temporary folder
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
CPU_COMPARE=${CPU_COMPARE:-1}
CPU_TIMEOUT=${CPU_TIMEOUT:-240}
INFERENCE=${INFERENCE:-1}
INFERENCE_ARGS=${INFERENCE_ARGS:---threads 2 --batches 1,8,32 --repeats 3 --seconds 0.5}
EXTRA_TRAIN_ARGS=${EXTRA_TRAIN_ARGS:-}
OUT_DIR=${1:-dicomnode-data/bench/gpu-training-$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -n ${WORK_DIR:-} ]]; then
    mkdir -p "$WORK_DIR"
else
    WORK_DIR=$(mktemp -d -t dicomnode-gpu-training-XXXXXX)
    trap 'rm -rf "$WORK_DIR"' EXIT
fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec > >(tee "$OUT_DIR/gpu_training.log") 2>&1

failed=()
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%SZ)"; }

sampler_pid=
start_sampler() {
    if [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null; then
        echo "# $1" >>"$OUT_DIR/gpu-util.csv"
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm \
            --format=csv,noheader -lms 500 >>"$OUT_DIR/gpu-util.csv" 2>&1 &
        sampler_pid=$!
    fi
}
stop_sampler() {
    if [[ -n $sampler_pid ]]; then
        kill "$sampler_pid" 2>/dev/null
        wait "$sampler_pid" 2>/dev/null
        sampler_pid=
    fi
}

step "environment"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo)"
    grep -m1 'model name' /proc/cpuinfo || true
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '-')"
    echo "device: $DEVICE; out: $OUT_DIR; work: $WORK_DIR"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - "$DEVICE" <<'EOF'
import importlib.metadata as md
import sys

import torch

print(f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA build {torch.version.cuda})")
for name in ("numpy", "onnx", "onnxscript", "onnxruntime", "pydicom"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
print(f"torch threads {torch.get_num_threads()}, cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(
        f"cuda device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
        f"{p.multi_processor_count} SMs, cuDNN {torch.backends.cudnn.version()}"
    )
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("DEVICE=cuda but torch sees no GPU (set DEVICE=cpu for a dry run)")
EOF
} 2>&1 | tee "$OUT_DIR/env.txt"
if [[ ${PIPESTATUS[0]} != 0 ]]; then
    echo "environment check failed: see above" >&2
    exit 2
fi

# the demo model's own training command, less its "python -m training train" prefix
mapfile -t DEMO_ARGS < <("$PYTHON" -c '
import shlex
from training.demo import demo_train_config
print("\n".join(shlex.split(demo_train_config().command())[4:]))')
# shellcheck disable=SC2206  # word splitting is the point: a list of options
EXTRA=($EXTRA_TRAIN_ARGS)

train_on() { # device -> train-<device>.log, WORK_DIR/demo-<device>.onnx, seconds in $wall
    local device=$1 t0 rc
    local -a cmd=("$PYTHON" -m training train "${DEMO_ARGS[@]}" --device "$device"
        --out-dir "$WORK_DIR/ckpt-$device" --onnx "$WORK_DIR/demo-$device.onnx" "${EXTRA[@]}")
    [[ -n ${2:-} ]] && cmd=(timeout "$2" "${cmd[@]}")
    echo "+ ${cmd[*]}"
    t0=$(now)
    "${cmd[@]}" 2>&1 | tee "$OUT_DIR/train-$device.log"
    rc=${PIPESTATUS[0]}
    wall=$(elapsed "$t0" "$(now)")
    echo "train.wall device=$device seconds=$wall rc=$rc" | tee -a "$OUT_DIR/train-$device.log"
    return "$rc"
}

step "train the demo model, --device $DEVICE"
start_sampler "training --device $DEVICE"
train_on "$DEVICE" || failed+=("train-$DEVICE")
stop_sampler

step "export check and evaluation of demo-$DEVICE.onnx"
if [[ -f $WORK_DIR/demo-$DEVICE.onnx ]]; then
    "$PYTHON" - "$WORK_DIR" "$DEVICE" "${DEMO_ARGS[@]}" "${EXTRA[@]}" <<'EOF' 2>&1 | tee "$OUT_DIR/export-check.txt"
import sys
from pathlib import Path

import onnx

from training import datasets
from training.__main__ import build_parser, train_config_from_args
from training.evaluate import roc_auc
from training.export import DEFAULT_ATOL, verify_onnx
from dicomnode.model import predict_onnx, read_card
from training.train import load_checkpoint_model, split_data

work, device = Path(sys.argv[1]), sys.argv[2]
config = train_config_from_args(build_parser().parse_args(["train", *sys.argv[3:]]))
path = work / f"demo-{device}.onnx"
onnx.checker.check_model(onnx.load(str(path)))
card = read_card(path)
model = load_checkpoint_model(work / f"ckpt-{device}" / "checkpoint.pt")  # best weights, CPU
diff = verify_onnx(model, path, config.preprocess.size)
print(
    f"export.check file={path.name} bytes={path.stat().st_size} onnx_checker=ok "
    f"max_abs_diff_onnxruntime_vs_torch={diff:.2e} atol={DEFAULT_ATOL:.0e} "
    f"result={'pass' if diff <= DEFAULT_ATOL else 'FAIL'}"
)
# the training run's validation split, scored by onnxruntime on the CPU
split, phantom, fingerprint = split_data(config)
x, y = datasets.load_arrays(split.val, config.preprocess, phantom=phantom, workers=2)
p, _ = predict_onnx(path, x)
auroc, card_auroc = roc_auc(y, p), float(card.metrics["val"]["auroc"])
print(
    f"export.eval version={card.version} fingerprint_match={fingerprint == card.data_fingerprint} "
    f"n_val={len(y)} card_val_auroc={card_auroc:.4f} onnxruntime_val_auroc={auroc:.4f} "
    f"threshold={card.threshold:.4f} best_epoch={card.metrics['best_epoch']}"
)
if diff > DEFAULT_ATOL or fingerprint != card.data_fingerprint or abs(auroc - card_auroc) > 1e-3:
    sys.exit("export check failed")
EOF
    [[ ${PIPESTATUS[0]} == 0 ]] || failed+=("export-check")
else
    echo "no model to check" | tee "$OUT_DIR/export-check.txt"
    failed+=("export-check")
fi

if [[ $INFERENCE == 1 ]]; then
    step "bench/inference.py --torch-device $DEVICE"
    # shellcheck disable=SC2206
    inference_args=($INFERENCE_ARGS --torch-device "$DEVICE")
    [[ -f $WORK_DIR/demo-$DEVICE.onnx ]] && inference_args+=(--model "$WORK_DIR/demo-$DEVICE.onnx")
    echo "+ $PYTHON bench/inference.py ${inference_args[*]}"
    start_sampler "bench/inference.py"
    t0=$(now)
    "$PYTHON" bench/inference.py "${inference_args[@]}" 2>&1 | tee "$OUT_DIR/inference.log"
    rc=${PIPESTATUS[0]}
    stop_sampler
    echo "inference.wall seconds=$(elapsed "$t0" "$(now)") rc=$rc" | tee -a "$OUT_DIR/inference.log"
    [[ $rc == 0 ]] || failed+=("inference")
fi

if [[ $DEVICE != cpu && $CPU_COMPARE == 1 ]]; then
    step "the same training, --device cpu (stopped after ${CPU_TIMEOUT} s)"
    train_on cpu "$CPU_TIMEOUT" || failed+=("train-cpu")
fi

step "summary"
"$PYTHON" - "$OUT_DIR" <<'EOF' 2>&1 | tee "$OUT_DIR/summary.txt"
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


for log in sorted(out.glob("train-*.log")):
    lines = log.read_text().splitlines()
    pick = {k: next((fields(x) for x in lines if x.startswith(k + " ")), {}) for k in
            ("train.device", "train.preprocessed", "train.done", "train.wall", "train.exported")}
    epochs = [fields(x) for x in lines if x.startswith("train.epoch ")]
    ends = [float(e["seconds"]) for e in epochs]
    per = [b - a for a, b in zip([0.0] + ends, ends)]
    later = per[1:]
    print(
        f"{log.stem}: device={pick['train.device'].get('device', '?')} "
        f"preprocess_s={pick['train.preprocessed'].get('seconds', '?')} epochs={len(epochs)} "
        f"first_epoch_s={per[0] if per else float('nan'):.1f} "
        f"later_epoch_s={sum(later) / len(later) if later else float('nan'):.2f} "
        f"train_s={ends[-1] if ends else float('nan'):.1f} "
        f"stopped={pick['train.done'].get('stopped', '-')} best_epoch={pick['train.done'].get('best_epoch', '-')} "
        f"val_auroc={pick['train.done'].get('val_auroc', '-')} run_s={pick['train.done'].get('seconds', '-')} "
        f"wall_s={pick['train.wall'].get('seconds', '?')} exported={'yes' if pick['train.exported'] else 'no'} "
        f"rc={pick['train.wall'].get('rc', '?')}"
    )
check = out / "export-check.txt"
if check.is_file():
    print("\n".join(x for x in check.read_text().splitlines() if x.startswith("export.")))
inference = out / "inference.log"
if inference.is_file():
    keep = ("ResNet-18", "engine", "torch", "onnxruntime", "Demo model", "val AUROC", "held-out",
            "max |p", "img/s", "INT8", "inference.wall", "load average")
    print("\n".join(x for x in inference.read_text().splitlines() if x.startswith(keep)))
EOF

if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (logs in $OUT_DIR)"
    exit 1
fi
echo "all steps passed; logs in $OUT_DIR"
