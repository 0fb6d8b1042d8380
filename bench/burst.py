"""Burst benchmark: N synthetic studies pushed to an embedded node; ingest rate and end-to-end time.

    .venv/bin/python bench/burst.py --studies 20

Prints instances/s and MB/s received by our SCP (durable writes included) and, per study, the
seconds from its last instance sent to its SR stored at the receiving PACS, with the quiet period
shown separately. Everything runs in this process on loopback: node (SQLite, in-process analysis),
a pynetdicom PACS, and a pynetdicom SCU as the modality.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dicomnode.config import Destination, Settings
from dicomnode.delivery.push import push_files
from dicomnode.logconfig import configure_logging
from dicomnode.node import Node
from dicomnode.testing.pacs import Receiver
from dicomnode.testing.phantoms import write_phantom_studies
from training.demo import ensure_demo_model
from worker.runners import make_runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--size", type=int, default=None, help="phantom size in pixels (default: generator's)")
    ap.add_argument("--quiet", type=float, default=1.0)
    ap.add_argument("--model", type=Path, default=Path("dicomnode-data/models/pneumonia-demo.onnx"))
    args = ap.parse_args()
    configure_logging("warning")
    model = ensure_demo_model(args.model)

    with tempfile.TemporaryDirectory(prefix="dicomnode-bench-") as tmp:
        root = Path(tmp)
        studies = write_phantom_studies(root / "in", args.studies, seed=2024, size=args.size)
        files = [p for s in studies for p in s.paths]
        total_bytes = sum(p.stat().st_size for p in files)
        with Receiver(root / "pacs", ae_title="BENCHPACS") as pacs:
            settings = Settings(
                host="127.0.0.1",
                port=0,
                storage_dir=root / "node",
                quiet_seconds=args.quiet,
                model=model,
                destinations=(Destination("BENCHPACS", "127.0.0.1", pacs.port),),
            )
            node = Node(settings, make_runner).start()
            try:
                sent_at: dict[str, float] = {}
                t0 = time.perf_counter()
                for s in studies:
                    res = push_files(s.paths, "127.0.0.1", node.port)
                    assert all(r.status == 0 for r in res), res
                    sent_at[s.study_uid] = time.time()
                ingest_s = time.perf_counter() - t0
                got = pacs.wait_for(2 * len(studies), timeout=60 + 10 * len(studies))
            finally:
                node.stop()
        sr_at = {r.study_uid: r.at for r in got if r.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.")}
        e2e = sorted(sr_at[u] - sent_at[u] for u in sent_at if u in sr_at)

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    print(f"\nburst: {len(studies)} studies, {len(files)} instances, {total_bytes / 1e6:.1f} MB")
    print(f"{'metric':<44} {'value':>10}")
    print("-" * 56)
    print(f"{'ingest instances/s (push, durable write)':<44} {len(files) / ingest_s:>10.1f}")
    print(f"{'ingest MB/s':<44} {total_bytes / 1e6 / ingest_s:>10.1f}")
    print(f"{'studies with a result':<44} {len(e2e):>10d}")
    if e2e:
        print(f"{'end-to-end s/study p50 (incl. quiet period)':<44} {pct(e2e, 0.5):>10.2f}")
        print(f"{'end-to-end s/study p95':<44} {pct(e2e, 0.95):>10.2f}")
        print(f"{'end-to-end s/study mean':<44} {statistics.mean(e2e):>10.2f}")
        print(f"{'quiet period s (part of every figure above)':<44} {args.quiet:>10.2f}")
        print(
            f"{'burst wall s (first push -> last SR)':<44} {max(sr_at.values()) - min(sent_at.values()) + ingest_s / len(studies):>10.2f}"
        )


if __name__ == "__main__":
    main()
