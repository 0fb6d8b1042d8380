#!/usr/bin/env bash
# The GPU worker benchmark (bench/gpu_worker.py) on a device machine, in one command, under 8 minutes:
# the whole pipeline in one process on a burst of 2048 px studies (studies/s, per-stage ms, GPU
# utilisation) with onnxruntime and with torch on the GPU, and the model alone on each.
#
#   bench/gpu_worker.sh wheels          # HERE, before: the service's Python packages the device
#                                       # image lacks, as cp312 wheels in .whl/ (carry it)
#   bench/gpu_worker.sh [OUT_DIR]       # THERE: installs .whl/ if present, runs, prints the tables
#
# Files in OUT_DIR (default $OUT, else dicomnode-data/bench/gpu-worker-<UTC time>): gpu_worker.log
# (everything), env.txt.
#
# Environment:
#   PYTHON=python3          interpreter with torch, numpy, onnx, onnxruntime (the device image's)
#   DEVICE=cuda             `cpu` dry-runs it without a GPU (onnxruntime and torch on the CPU)
#   BENCH_ARGS              default: --studies 64 --size 2048 --batch-studies 1,8,32
#   TIMEOUT=450             seconds before the benchmark is stopped
#
# onnxruntime-gpu is not on the device image and its wheel (with its CUDA libraries) is larger than
# what a call may carry: there the onnxruntime rows run on the CPU and say so, and the torch rows
# run the same graph on the GPU. Where onnxruntime-gpu is installed the onnxruntime rows use CUDA,
# with inputs and outputs bound on the GPU, as a worker does.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [[ ${1:-} == wheels ]]; then
    # The distributions the benchmark imports from the venv, less those the device image has
    # (/work/.library/device/KINDS.md), pinned to the venv's versions.
    VENV_PYTHON=${VENV_PYTHON:-.venv/bin/python}
    mapfile -t wanted < <("$VENV_PYTHON" - <<'EOF'
import importlib.metadata as md
import sys

before = set(sys.modules)
import dicomnode.testing.phantoms, dicomnode.store.records, worker.batch, worker.pipeline  # noqa
on_device = {
    "numpy", "onnx", "onnxruntime", "torch", "pillow", "requests", "urllib3", "idna", "certifi",
    "charset-normalizer", "packaging", "typing-extensions", "markupsafe", "protobuf", "pyyaml",
    "psutil", "prometheus-client", "click", "attrs",
}
dists = md.packages_distributions()
names = set()
for mod in set(sys.modules) - before:
    for dist in dists.get(mod.split(".")[0], []):
        names.add(dist)
names.update({"alembic", "mako"})  # Store migrates on open
# decoders of compressed pixel data, plugins pydicom finds if present: the burst is uncompressed
names -= {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"}
for name in sorted(names):
    if name.lower().replace("_", "-") not in on_device and name != "dicomnode":
        print(f"{name}=={md.version(name)}")
EOF
    )
    echo "wheels for: ${wanted[*]}"
    WHEEL_DIR=${WHEEL_DIR:-.whl}  # another folder: to try the download without touching .git
    mkdir -p "$WHEEL_DIR"
    if [[ $WHEEL_DIR == .whl ]]; then  # ignored here, so it travels only when carried
        grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    fi
    for spec in "${wanted[@]}"; do
        "$VENV_PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEEL_DIR" "$spec" \
            || echo "MISSING wheel: $spec"
    done
    du -sh "$WHEEL_DIR"
    exit 0
fi

DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---studies 64 --size 2048 --batch-studies 1,8,32}
TIMEOUT=${TIMEOUT:-450}
OUT_DIR=${1:-${OUT:-dicomnode-data/bench/gpu-worker-$(date -u +%Y%m%dT%H%M%SZ)}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee "$OUT_DIR/gpu_worker.log") 2>&1

if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d -t dicomnode-site-XXXXXX)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
        || { echo "installing .whl/ failed"; exit 1; }
    export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DICOMNODE_LOG_LEVEL=warning

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 2^20}' /proc/meminfo)"
    grep -m1 'model name' /proc/cpuinfo || true
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '-') $(git status --porcelain 2>/dev/null | wc -l) changed files"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    fi
    "$PYTHON" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
} 2>&1 | tee "$OUT_DIR/env.txt"

if ! "$PYTHON" -c 'import worker.batch, dicomnode.testing.phantoms' 2>"$OUT_DIR/import-error.txt"; then
    cat "$OUT_DIR/import-error.txt"
    echo "the service's packages are missing here: run 'bench/gpu_worker.sh wheels' on the dev machine and carry .whl"
    exit 1
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout "$TIMEOUT" "$PYTHON" bench/gpu_worker.py --device "$DEVICE" $BENCH_ARGS
rc=$?
[[ $rc == 124 ]] && echo "bench/gpu_worker.py stopped after TIMEOUT=$TIMEOUT s: fewer --studies or --batch-studies"
exit $rc
