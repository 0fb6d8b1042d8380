"""End-to-end burst through Celery: modality -> our SCP -> Redis -> worker process(es) -> PACS.

    .venv/bin/python bench/e2e_celery.py                     # 100 single-image studies, 1 worker
    .venv/bin/python bench/e2e_celery.py --workers 2 --pg postgresql+psycopg://postgres@127.0.0.1/test

The node (SCP, tracker, Celery dispatch) runs in this process; each worker is a ``dicomnode worker
--pool solo`` subprocess with the same ``DICOMNODE_*`` environment, on the real Redis. The studies
go back to back, one association each, from the modality to the node and their results to the
PACS, both as ``bench/notify.py --peers`` picks them: ``dcmtk`` (a ``storescu`` process per study,
a ``storescp --fork`` PACS; the default where installed) or ``pynetdicom`` (an SCU and a PACS in
this process, sharing its interpreter with the node). Per study:

- time to notification: last instance received by our SCP -> SR stored at the PACS
  (with the quiet period, and from study complete, i.e. without it)
- queueing delay: task queued -> a worker starts it
- analysis: worker start -> analysis finished (results built and written)
- delivery: analysis finished -> results accepted by the PACS; the C-STOREs are a delivery task
  of their own, queued behind the analyses waiting, so in a burst this is mostly queueing

and studies per minute over the burst (first instance sent -> last SR stored). Times come from
the node's SQL record and the PACS's receive times, on one clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from notify import PEERS, default_peers  # bench/notify.py, beside this script
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import create_engine, select, text

from dicomnode.config import Destination, Settings
from dicomnode.logconfig import configure_logging
from dicomnode.node import Node
from dicomnode.store.db import Store, migrate
from dicomnode.store.models import Analysis, Study
from dicomnode.testing.phantoms import write_phantom_studies
from training.demo import ensure_demo_model
from worker.runners import make_runner

REPO = Path(__file__).resolve().parents[1]


def worker_env(s: Settings) -> dict[str, str]:
    """This process's environment with the ``DICOMNODE_*`` variables giving a worker ``s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env.update(s.to_env(), DICOMNODE_LOG_LEVEL="warning", PYTHONUNBUFFERED="1")
    return env


def start_worker(s: Settings, log: Path, name: str) -> subprocess.Popen[bytes]:
    """``dicomnode worker`` (solo pool, one ONNX session); returns once it answers a ping."""
    from worker.app import make_celery

    out = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomnode", "worker", "--pool", "solo", "--hostname", f"{name}@bench"],
        cwd=REPO,
        env=worker_env(s),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    app = make_celery(s)
    deadline = time.monotonic() + 90
    while not any(f"{name}@bench" in reply for reply in app.control.ping(timeout=0.5)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker {name} did not start: {log.read_text()[-2000:]}")
    app.close()
    return proc


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``xs``."""
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))]


def epoch(at: datetime | None) -> float:
    assert at is not None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1, help="worker processes (solo pool, one each)")
    ap.add_argument("--quiet", type=float, default=1.0, help="quiet period in seconds")
    ap.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    ap.add_argument(
        "--pg",
        metavar="URL",
        help="PostgreSQL server URL: a fresh database is made there and dropped (default: SQLite)",
    )
    ap.add_argument("--size", type=int, default=None, help="phantom size in pixels (default 512-768)")
    ap.add_argument("--model", type=Path, default=Path("dicomnode-data/models/pneumonia-demo.onnx"))
    ap.add_argument(
        "--peers", choices=sorted(PEERS), default=None, help="modality and PACS (bench/notify.py)"
    )
    args = ap.parse_args()
    args.peers = args.peers or default_peers()
    configure_logging("warning")
    model = ensure_demo_model(args.model).resolve()
    queue = f"dicomnode-bench-{uuid.uuid4().hex[:8]}"
    database_url, admin = "", None
    if args.pg:
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{queue.replace("-", "_")}"'))
        database_url = args.pg.rsplit("/", 1)[0] + "/" + queue.replace("-", "_")
    try:
        run(args, model, queue, database_url)
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{queue.replace("-", "_")}" WITH (FORCE)'))
            admin.dispose()


def run(args: argparse.Namespace, model: Path, queue: str, database_url: str) -> None:
    """Start PACS, workers and node; push the burst; print the table."""
    with tempfile.TemporaryDirectory(prefix="dicomnode-e2e-") as tmp:
        root = Path(tmp)
        studies = write_phantom_studies(root / "in", args.studies, seed=2025, size=args.size)
        peers = PEERS[args.peers]
        with peers.pacs(root / "pacs") as pacs:
            settings = Settings(
                host="127.0.0.1",
                port=0,
                storage_dir=root / "node",
                database_url=database_url,
                broker_url=args.broker,
                queue=queue,
                quiet_seconds=args.quiet,
                model=model,
                destinations=(Destination("BENCHPACS", "127.0.0.1", pacs.port),),
                log_format="json",
            )
            migrate(settings.effective_database_url)
            workers = [
                start_worker(settings, root / f"worker{i}.log", f"bench{i}-{queue[-8:]}")
                for i in range(args.workers)
            ]
            node = Node(settings, make_runner).start()
            try:
                t0 = time.time()
                for st in studies:
                    peers.send(st.paths, node.port)
                push_s = time.time() - t0
                got = pacs.wait_for(2 * len(studies), timeout=120 + 10 * len(studies))
            finally:
                node.stop()
                for w in workers:
                    w.terminate()
                for w in workers:
                    try:
                        w.wait(20)
                    except subprocess.TimeoutExpired:
                        w.kill()
                import redis

                rds = redis.Redis.from_url(args.broker)
                rds.delete(queue)
                rds.close()
            store = Store(settings.effective_database_url, run_migrations=False)
            with store.session() as s:
                rows = s.execute(
                    select(
                        Study.study_uid,
                        Study.last_received_at,
                        Study.completed_at,
                        Analysis.queued_at,
                        Analysis.started_at,
                        Analysis.preprocessed_at,
                        Analysis.inferred_at,
                        Analysis.finished_at,
                        Analysis.delivered_at,
                    ).join(Analysis, Analysis.study_id == Study.id)
                ).all()
            store.dispose()

    sr_at = {r.study_uid: r.at for r in got if r.sop_class_uid == str(Comprehensive3DSRStorage)}
    incl, excl, queued, analysis, infer, delivery = [], [], [], [], [], []
    for r in rows:
        if r.study_uid not in sr_at:
            continue
        incl.append(sr_at[r.study_uid] - epoch(r.last_received_at))
        excl.append(sr_at[r.study_uid] - epoch(r.completed_at))
        queued.append(epoch(r.started_at) - epoch(r.queued_at))
        analysis.append(epoch(r.finished_at) - epoch(r.started_at))
        infer.append(epoch(r.inferred_at) - epoch(r.preprocessed_at))
        delivery.append(epoch(r.delivered_at) - epoch(r.finished_at))
    for xs in (incl, excl, queued, analysis, infer, delivery):
        xs.sort()
    wall = max(sr_at.values()) - t0 if sr_at else float("nan")
    print(
        f"\ne2e through Celery: {len(studies)} single-image studies, {args.workers} worker(s) (solo pool), "
        f"quiet period {args.quiet:g} s, {os.cpu_count()} CPU cores, "
        f"{'PostgreSQL' if 'postgresql' in settings.effective_database_url else 'SQLite'}\n"
        f"peers: {PEERS[args.peers].description}"
    )
    print(f"{'metric':<52} {'p50':>8} {'p95':>8} {'mean':>8}")
    print("-" * 79)
    for label, xs in (
        ("time to notification s (last instance -> SR at PACS)", incl),
        ("  excluding the quiet period (complete -> SR)", excl),
        ("  queueing delay s (queued -> worker starts)", queued),
        ("  analysis s (worker starts -> results written)", analysis),
        ("    of which inference s", infer),
        ("  delivery s (results written -> PACS accepted)", delivery),
    ):
        if xs:
            print(f"{label:<52} {pct(xs, 0.5):>8.3f} {pct(xs, 0.95):>8.3f} {statistics.mean(xs):>8.3f}")
    print(f"{'studies with an SR at the PACS':<52} {len(sr_at):>8d}")
    print(f"{'push s (all studies, one association each)':<52} {push_s:>8.1f}")
    print(f"{'burst wall s (first push -> last SR)':<52} {wall:>8.1f}")
    print(f"{'studies/minute over the burst':<52} {60 * len(sr_at) / wall:>8.1f}")
    print(f"{'studies/minute per worker over the burst':<52} {60 * len(sr_at) / wall / args.workers:>8.1f}")


if __name__ == "__main__":
    main()
