"""The web page over a big synthetic store: is every page interactive, and bounded?

    .venv/bin/python bench/web_pages.py                       # 100,000 studies, SQLite file
    .venv/bin/python bench/web_pages.py --studies 1000000 --db /tmp/audit.sqlite3   # re-use a filled file
    .venv/bin/python bench/web_pages.py --pg postgresql+psycopg://postgres@127.0.0.1/test

Fills a database as ``bench/audit_queries.py`` does (N studies over the last year, two model
versions, reads for 5%), then requests each page of :mod:`dicomnode.web` in this process
(Starlette's TestClient: no socket, so the numbers are the page's own work) ``--repeat`` times and
prints the bytes, the first and the best time in milliseconds, and the best against the reference
run in the same process: the query behind ``dicomnode worklist`` (every open study, unbounded),
which the worklist page bounds to a window (7 days) and a cap (2,000 studies).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ holds the store generator

from audit_queries import ROOT, _studies_held, fill  # noqa: E402

from dicomnode.config import Settings  # noqa: E402
from dicomnode.logconfig import configure_logging  # noqa: E402
from dicomnode.ops.worklist import entries_from_store  # noqa: E402
from dicomnode.store.db import Store  # noqa: E402
from dicomnode.web.app import create_app  # noqa: E402

with warnings.catch_warnings():  # starlette asks for httpx2 instead of httpx; both work
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def pages(n: int) -> list[tuple[str, str]]:
    """(name, path) of every page timed."""
    one = f"{ROOT}.{n // 2}"
    return [
        ("worklist (7 d, first page of 50)", "/"),
        ("worklist, 90 d window (capped at 2000)", "/?days=90"),
        ("studies, newest 50", "/studies"),
        ("studies, delivery_failed, 50", "/studies?state=delivery_failed"),
        ("one study (stages, deliveries, events)", f"/studies/{one}"),
        ("model (drift 30 d, performance, plots)", "/model"),
        ("health (metrics scrape, stranded, disk)", "/health"),
    ]


def best_of(run: Callable[[], int], repeat: int) -> tuple[int, float, float]:
    """(size, first ms, best ms) of ``repeat`` runs."""
    samples, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = run()
        samples.append((time.perf_counter() - t0) * 1000)
    return size, samples[0], min(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument(
        "--pg", metavar="URL", help="PostgreSQL server URL; a fresh database is made there and dropped"
    )
    ap.add_argument("--db", help="SQLite file to fill and keep (re-used if it holds --studies already)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    configure_logging("warning")

    tmp = tempfile.TemporaryDirectory(prefix="dicomnode-web-bench-")
    admin, name, path = None, "", None
    if args.pg:
        name = f"dicomnode_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = args.pg.rsplit("/", 1)[0] + "/" + name
    else:
        path = Path(args.db) if args.db else Path(tmp.name) / "web.sqlite3"
        url = f"sqlite:///{path.resolve()}"
    try:
        held = _studies_held(url)
        if held != args.studies:
            if held:
                raise SystemExit(f"{url} holds {held} studies, not {args.studies}: give an empty database")
            t0 = time.perf_counter()
            fill(url, args.studies, args.seed)
            print(f"filled {args.studies:,} studies in {time.perf_counter() - t0:.0f} s")
        store = Store(url, run_migrations=False)
        settings = Settings(database_url=url, storage_dir=Path(tmp.name) / "node")
        client = TestClient(create_app(settings, store), base_url="http://127.0.0.1:8088")
        backend = "SQLite" if path is not None else "PostgreSQL"
        if path is not None:
            print(f"{backend}, {args.studies:,} studies, database file {os.path.getsize(path) / 1e9:.2f} GB")
        else:
            print(f"{backend}, {args.studies:,} studies")
        rows, first, reference = best_of(lambda: len(entries_from_store(store)), args.repeat)
        print(f"\n{'page':<42} {'KiB':>6} {'first ms':>9} {'best ms':>8} {'x ref':>6}")
        print("-" * 75)
        print(
            f"{'reference: dicomnode worklist query':<42} {'-':>6} {first:>9.1f} {reference:>8.1f} {1:>6.2f}"
        )
        print(f"{f'  ({rows:,} open studies, unbounded)':<42}")
        for label, url_path in pages(args.studies):

            def get(p: str = url_path) -> int:
                r = client.get(p)
                assert r.status_code == 200, f"{p}: {r.status_code}"
                return len(r.content)

            size, first, best = best_of(get, args.repeat)
            print(f"{label:<42} {size / 1024:>6.0f} {first:>9.1f} {best:>8.1f} {best / reference:>6.2f}")
        store.dispose()
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
