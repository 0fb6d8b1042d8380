"""Delivery benchmark: K studies' results (SR + heatmap SC) C-STOREd to a local DCMTK storescp.

    .venv/bin/python bench/delivery.py --studies 20

Compares, in one run against the same storescp, one study after another:

- ``fresh, encoded``: a fresh association per study, each object encoded by pynetdicom from the
  dataset in memory (the sender before kept-open associations and stored files);
- ``fresh, files``: a fresh association per study (``DICOMNODE_DELIVERY_IDLE_RELEASE_SECONDS=0``),
  each object sent as the result file the pipeline wrote;
- ``kept open, files``: one kept-open association reused by every study (the default, 5 s);
- with ``--tls``, the last two again to a ``storescp +tls`` (a TLS 1.2+ handshake per association);
- with ``--nagle``, each file kind again with Nagle's algorithm left on (no ``TCP_NODELAY`` on the
  sender's socket, as before 2026-12-05), so that the two are compared in the same run.

Prints studies/s and this process's CPU ms per study (every thread: pynetdicom's association and
DUL threads included; storescp's CPU is not ours), the median of ``--reps`` runs, with ratios
against the first row; then the CPU a kept association costs per idle second, parked (as the
pool keeps it) and not. Other load on the machine moves every number; the ratios less so.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from dicomnode.config import Destination  # noqa: E402
from dicomnode.delivery import sender  # noqa: E402
from dicomnode.delivery.pool import POOL  # noqa: E402
from dicomnode.delivery.sender import send_once  # noqa: E402
from dicomnode.logconfig import configure_logging  # noqa: E402
from dicomnode.model.card import ModelCard  # noqa: E402
from dicomnode.model.preprocess import PreprocessConfig  # noqa: E402
from dicomnode.results import Finding, build_heatmap_sc, build_sr  # noqa: E402
from dicomnode.testing.phantoms import make_phantom  # noqa: E402
from tests.support import free_port, listening  # noqa: E402

CALLING = "BENCH"


def _studies(out: Path, n: int, size: int) -> list[list[Dataset]]:
    """n studies' SR and SC, written as the pipeline writes them; in memory, without file names."""
    card = ModelCard(
        name="bench",
        version="1",
        threshold=0.5,
        device_uid=pydicom.uid.generate_uid(entropy_srcs=["bench-delivery"]),
        preprocess=PreprocessConfig(size=64).to_dict(),
    )
    studies = []
    for i in range(n):
        source = make_phantom(np.random.default_rng(i), True, size=size)
        finding = Finding(0.8, card.threshold)
        cam = np.random.default_rng(i).random((8, 8)).astype(np.float32)
        results = [build_sr([source], finding, card), build_heatmap_sc(source, cam, finding, card)]
        for ds in results:
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        studies.append(results)
    return studies


def _run(studies: Sequence[Sequence[Dataset]], dest: Destination, keep_open: float) -> tuple[float, float]:
    """Deliver every study, one after another; (wall s, CPU s) of this process."""
    POOL.close()
    c0, t0 = time.process_time(), time.perf_counter()
    for study in studies:
        results = send_once(study, dest, calling_ae=CALLING, keep_open=keep_open)
        assert all(r.success for r in results), results
    return time.perf_counter() - t0, time.process_time() - c0


def _with_nagle(run: Callable[[], tuple[float, float]]) -> Callable[[], tuple[float, float]]:
    """``run`` with the sender's TCP_NODELAY handler unbound (Nagle's algorithm on)."""

    def nagle() -> tuple[float, float]:
        bound = list(sender._HANDLERS)
        sender._HANDLERS.clear()
        try:
            return run()
        finally:
            sender._HANDLERS[:] = bound
            POOL.close()  # no association with Nagle on outlives the row

    return nagle


def _idle_cpu_ms_per_s(dest: Destination, study: Sequence[Dataset], parked: bool, seconds: float) -> float:
    """CPU ms per second of one kept association doing nothing, parked in the pool or held."""
    POOL.close()
    assert all(r.success for r in send_once(study, dest, calling_ae=CALLING, keep_open=600))
    lease = None if parked else POOL.checkout((CALLING, dest))  # held: its threads poll as in use
    c0 = time.process_time()
    time.sleep(seconds)
    used = time.process_time() - c0
    if lease is not None:
        POOL.checkin((CALLING, dest), lease[0], lease[1], 600)
    POOL.close()
    return used / seconds * 1000


def _storescp(binary: str, port: int, tls: tuple[Path, Path] | None) -> subprocess.Popen[bytes]:
    """storescp receiving without writing (our CPU only), on TLS with ``tls`` (cert, key)."""
    argv = [binary, "-aet", "PACS", "--ignore"]
    if tls is not None:  # our client certificate is not asked for
        argv += ["+tls", str(tls[1]), str(tls[0]), "-ic"]
    proc = subprocess.Popen(argv + [str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not listening(port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit(f"storescp did not start listening: {' '.join(argv)}")
        time.sleep(0.1)
    return proc


def _self_signed(out: Path) -> tuple[Path, Path]:
    cert, key = out / "server.crt", out / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20, help="K: studies per run (default 20)")
    ap.add_argument("--size", type=int, default=1024, help="phantom side in pixels (default 1024: the SC's)")
    ap.add_argument("--reps", type=int, default=3, help="runs of each kind; the median is shown")
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--tls", action="store_true", help="also to a storescp on TLS (needs openssl)")
    ap.add_argument("--nagle", action="store_true", help="also each file kind with Nagle's algorithm on")
    args = ap.parse_args()
    configure_logging("warning")
    binary = shutil.which("storescp")
    if binary is None:
        sys.exit("DCMTK storescp not found: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-delivery-") as tmp:
        root = Path(tmp)
        (root / "results").mkdir()
        (root / "pacs").mkdir()
        port = free_port()
        scps = [_storescp(binary, port, None)]
        try:
            dest = Destination("PACS", "127.0.0.1", port)
            in_memory = _studies(root / "results", args.studies, args.size)
            # as a scheduled round reads them back (dicomnode.delivery.rounds.read_results)
            from_files = [
                [pydicom.dcmread(root / "results" / f"{ds.SOPInstanceUID}.dcm") for ds in study]
                for study in in_memory
            ]
            kinds: list[tuple[str, Callable[[], tuple[float, float]]]] = [
                ("fresh association, encoded", lambda: _run(in_memory, dest, 0)),
                ("fresh association, files", lambda: _run(from_files, dest, 0)),
                ("kept open (5 s), files", lambda: _run(from_files, dest, 5)),
            ]
            if args.tls:
                cert, key = _self_signed(root)
                tls_port = free_port()
                scps.append(_storescp(binary, tls_port, (cert, key)))
                tls = Destination(
                    "PACS", "127.0.0.1", tls_port, tls=True, tls_ca=cert, tls_server_name="localhost"
                )
                kinds += [
                    ("TLS: fresh association, files", lambda: _run(from_files, tls, 0)),
                    ("TLS: kept open (5 s), files", lambda: _run(from_files, tls, 5)),
                ]
            if args.nagle:
                kinds += [(f"{name}, Nagle on", _with_nagle(run)) for name, run in kinds if "files" in name]
            _run(from_files[:2], dest, 0)  # warm-up: imports, first association
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in kinds}
            for _ in range(args.reps):  # interleaved, so that load changes hit every kind alike
                for name, run in kinds:
                    runs[name].append(run())
            idle_parked = _idle_cpu_ms_per_s(dest, from_files[0], True, args.idle_seconds)
            idle_held = _idle_cpu_ms_per_s(dest, from_files[0], False, args.idle_seconds)
        finally:
            POOL.close()
            for scp in scps:
                scp.terminate()
                scp.wait(10)
    k = args.studies
    print(
        f"\ndelivery: {k} studies x (SR + SC of a {args.size}-px radiograph), storescp on loopback, "
        f"median of {args.reps}"
    )
    print(f"{'kind':<41} {'studies/s':>10} {'x':>6} {'CPU ms/study':>13} {'x':>6}")
    print("-" * 80)
    ref_rate = ref_cpu = 0.0
    for name, _ in kinds:
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        rate, cpu_ms = k / wall, cpu / k * 1000
        ref_rate, ref_cpu = (ref_rate or rate), (ref_cpu or cpu_ms)
        print(f"{name:<41} {rate:>10.1f} {rate / ref_rate:>6.2f} {cpu_ms:>13.1f} {cpu_ms / ref_cpu:>6.2f}")
    print(f"\nidle kept association, CPU ms per second: parked {idle_parked:.1f}, not parked {idle_held:.1f}")


if __name__ == "__main__":
    main()
