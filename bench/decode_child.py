"""What decoding in a memory-limited child costs the worker, per instance and per study.

    .venv/bin/python bench/decode_child.py              # about half a minute on 2 cores
    .venv/bin/python bench/decode_child.py --side 2048 --repeats 15 --transfer-syntax rle

One image of ``--side`` x ``--side`` (a 16-bit phantom radiograph, 12 bits stored; explicit VR
little endian or RLE Lossless) is decoded and preprocessed to the model tensor, the way the worker
does it (:class:`dicomnode.model.decode.Decoder`), three ways:

- ``in-process``: ``DICOMNODE_DECODE_MEMORY_BYTES=0``, the same functions called in this process;
- ``child``: the default, a long-lived forkserver child capped with ``RLIMIT_AS``: the float32
  tensor (and, for the study's heatmap, the display image of at most 1024 x 1024 as uint8 gray levels) comes
  back through a pipe;
- ``child, fresh``: a new child for every study (what a failure or the recycling every
  ``RECYCLE_AFTER`` decodes costs once): its start, then the first decode in it.

"per study" is one image's tensor plus its heatmap display (a study of one frontal radiograph);
"vs in-process" is the child's extra time. Medians of ``--repeats`` interleaved runs (load from
other processes hits every variant alike); the best run in brackets. The peak resident memory of
this process (VmHWM) shows that with a child the worker never holds the decoded image.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from dicomnode.model.decode import DecodeLimits, Decoder
from dicomnode.model.preprocess import PreprocessConfig
from dicomnode.results.render import MAX_SIDE
from dicomnode.testing.phantoms import make_phantom


def _reset_vm_hwm() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_image(path: Path, side: int, syntax: str) -> Path:
    """A ``side`` x ``side`` 16-bit phantom chest radiograph as a Part 10 file."""
    ds = make_phantom(np.random.default_rng(0), True, size=side)
    if syntax == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=2048, help="image rows = columns (default 2048)")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs of each variant (default 9)")
    ap.add_argument("--transfer-syntax", choices=("explicit", "rle"), default="explicit")
    args = ap.parse_args()

    config = PreprocessConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_image(Path(tmp) / "image.dcm", args.side, args.transfer_syntax)
        here = Decoder(DecodeLimits(memory_bytes=0))
        child = Decoder(DecodeLimits())
        t_start = timed(child.start)  # forkserver and first child: once per worker process

        def study(decoder: Decoder) -> None:
            decoder.tensor(path, config, MAX_SIDE)
            decoder.display(path, config, MAX_SIDE)

        starts: list[float] = []

        def fresh_study() -> tuple[float, float]:
            d = Decoder(DecodeLimits())
            try:
                starts.append(timed(d.start))
                return timed(lambda: d.tensor(path, config, MAX_SIDE)), timed(
                    lambda: d.display(path, config, MAX_SIDE)
                )
            finally:
                d.close()

        variants: dict[str, dict[str, list[float]]] = {
            name: {"tensor": [], "display": [], "study": []}
            for name in ("in-process", "child", "child, fresh")
        }
        _reset_vm_hwm()
        hwm_before = _vm_hwm_mib()
        study(child)  # warm: imports, caches
        hwm_child = _vm_hwm_mib()
        study(here)
        hwm_here = _vm_hwm_mib()
        for _ in range(args.repeats):
            for name, decoder in (("in-process", here), ("child", child)):
                t0 = time.perf_counter()
                decoder.tensor(path, config, MAX_SIDE)
                t1 = time.perf_counter()
                decoder.display(path, config, MAX_SIDE)
                t2 = time.perf_counter()
                variants[name]["tensor"].append(t1 - t0)
                variants[name]["display"].append(t2 - t1)
                variants[name]["study"].append(t2 - t0)
            t_tensor, t_display = fresh_study()
            variants["child, fresh"]["tensor"].append(t_tensor)
            variants["child, fresh"]["display"].append(t_display)
            variants["child, fresh"]["study"].append(starts[-1] + t_tensor + t_display)
        child.close()

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1e3:8.1f} ({min(xs) * 1e3:.1f})" if xs else "       -"

    base = statistics.median(variants["in-process"]["study"])
    print(
        f"decode + preprocess of one {args.side} x {args.side} 16-bit image ({args.transfer_syntax}), "
        f"{args.repeats} runs; {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print()
    print("| variant | tensor ms | display ms | per study ms | vs in-process ms |")
    print("|---|---|---|---|---|")
    for name, v in variants.items():
        extra = statistics.median(v["study"]) - base
        print(f"| {name} | {ms(v['tensor'])} | {ms(v['display'])} | {ms(v['study'])} | {extra * 1e3:+.1f} |")
    print()
    print(
        f"child start: {t_start * 1e3:.0f} ms the first (forkserver and child, once per worker process), "
        f"{statistics.median(starts) * 1e3:.0f} ms ({min(starts) * 1e3:.0f}) a fresh child "
        "(included in 'child, fresh')"
    )
    print(
        f"peak RSS of this process (VmHWM): {hwm_before:.0f} MiB at start, {hwm_child:.0f} MiB after a "
        f"study decoded in the child, {hwm_here:.0f} MiB after one decoded in-process"
    )


if __name__ == "__main__":  # required: the decoding child re-imports the parent's main module
    main()
