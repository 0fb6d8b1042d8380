"""Audit, monitoring and /metrics queries over a big synthetic store: are they interactive?

    .venv/bin/python bench/audit_queries.py                       # 1,000,000 studies, SQLite file
    .venv/bin/python bench/audit_queries.py --studies 100000 --pg postgresql+psycopg://postgres@127.0.0.1/test

Fills a fresh database with N synthetic studies spread over the last year (one instance, one
analysis -- two for every 50th study --, two result deliveries, three events each; 1% delivery
failures with retries; two model versions; radiologist reads for 5%), schema at revision 0001,
then times the upgrade to head (the 0002 indexes built over the full tables), then runs each
question of ``dicomnode audit``, ``dicomnode monitor``, ``dicomnode results``, the worklist from
SQL and a ``/metrics`` scrape three times and
prints rows returned, the first run and the best of three in milliseconds. Bulk insert:
``executemany`` on SQLite, ``COPY`` on PostgreSQL. ``--db FILE`` (or ``--db postgresql+psycopg://...``
naming an empty database) keeps the filled database and re-uses it on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text

from dicomnode.config import Settings
from dicomnode.logconfig import configure_logging
from dicomnode.ops import audit, drift, performance
from dicomnode.ops.metrics import SqlCollector
from dicomnode.ops.worklist import entries_from_store
from dicomnode.store.db import Store, migrate
from dicomnode.store.queries import result_rows

CHUNK = 50_000
AES = ("CR_ER1", "CR_ER2", "DX_WARD", "DX_ICU", "PORTABLE1")
AE_WEIGHTS = (0.3, 0.2, 0.25, 0.15, 0.1)
VERSIONS = ("1.0.0", "1.1.0")  # 1.1.0 from 60% of the year on
THRESHOLDS = {"1.0.0": 0.35, "1.1.0": 0.3}
ROOT = "1.2.826.0.1.3680043.10.1099"
SPAN = timedelta(days=365)
TABLES = ("studies", "instances", "analyses", "delivery_attempts", "events")


def _stamp(a: np.ndarray, pg: bool) -> list[str]:
    """datetime64[us] as the text each backend stores / COPY accepts (UTC)."""
    s = np.char.replace(np.datetime_as_string(a, unit="us"), "T", " ")
    return [x + "+00" for x in s.tolist()] if pg else s.tolist()


def generate(n: int, seed: int, pg: bool) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    """Rows per table, ``CHUNK`` studies at a time (ids from 1, deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    end = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")
    start = end - np.timedelta64(int(SPAN.total_seconds() * 1e6), "us")
    step_us = SPAN.total_seconds() * 1e6 / n
    analysis_id = attempt_id = event_id = 0
    selection = json.dumps([{"sop_instance_uid": "x", "selected": True, "reason": "CR/DX chest frontal"}])
    us = np.timedelta64(1, "us")
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        k = hi - lo
        idx = np.arange(lo, hi)
        first = start + (idx * step_us + rng.random(k) * step_us * 0.5).astype("int64") * us
        last = first + (rng.random(k) * 2e6).astype("int64") * us
        t = {"first": first, "last": last}
        offsets = {"complete": 5.0, "queued": 5.01, "started": 5.2, "pre": 5.5, "inf": 5.6, "built": 5.9}
        for name, sec in offsets.items():
            t[name] = last + (sec * 1e6 + rng.random(k) * 3e5).astype("int64") * us
        t["delivered"] = t["built"] + (4e5 + rng.exponential(3e5, k)).astype("int64") * us
        t["old"] = first - np.timedelta64(3600, "s")
        txt = {name: _stamp(a, pg) for name, a in t.items()}
        u = rng.random(k)
        ae_idx = rng.choice(len(AES), size=k, p=AE_WEIGHTS)
        truth = rng.random(k) < 0.3
        late = idx >= int(n * 0.6)
        score = np.where(truth, rng.beta(6, 2, k), np.where(late, rng.beta(1.5, 6, k), rng.beta(1.2, 8, k)))
        read = rng.random(k) < 0.05
        reader_agrees = rng.random(k) > 0.03
        rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in (*TABLES, "ground_truth")}
        for j in range(k):
            i = lo + j
            sid = i + 1
            uid = f"{ROOT}.{i}"
            if i >= n - 20:
                state = ("receiving", "complete", "analysing")[i % 3]
            elif u[j] < 0.965:
                state = "delivered"
            elif u[j] < 0.975:
                state = "delivery_failed"
            elif u[j] < 0.99:
                state = "not_applicable"
            elif u[j] < 0.995:
                state = "failed"
            else:
                state = "delivered"
            reason = {
                "delivery_failed": f"retry budget exhausted; re-send with `dicomnode resend {uid}`",
                "not_applicable": "no instance the model can read: modality CT not in CR, DX",
                "failed": "RuntimeError: ONNX session failed",
            }.get(state)
            ae = AES[ae_idx[j]]
            rows["studies"].append(
                (
                    sid,
                    uid,
                    state,
                    reason,
                    ae,
                    f"A{i:010d}",
                    1,
                    txt["first"][j],
                    txt["last"][j],
                    txt["complete"][j] if state != "receiving" else None,
                    txt["built"][j],
                )
            )
            rows["instances"].append(
                (
                    sid,
                    sid,
                    f"{uid}.1.1",
                    "1.2.840.10008.5.1.4.1.1.1.1",
                    f"{uid}.1",
                    "1.2.840.10008.1.2.1",
                    "DX",
                    f"/data/instances/{uid}/{uid}.1/{uid}.1.1.dcm",
                    8_400_000,
                    f"{i:064x}",
                    ae,
                    txt["last"][j],
                )
            )
            rows["events"].append((None, txt["last"][j], uid, "study.complete", None))
            if state in ("receiving", "complete"):
                continue
            version = VERSIONS[int(late[j])]
            thr = THRESHOLDS[version]
            if i % 50 == 0:  # analysed before, by the older version, then re-analysed
                analysis_id += 1
                rows["analyses"].append(
                    (analysis_id, sid, "pneumonia", VERSIONS[0], float(score[j]) * 0.9, THRESHOLDS[VERSIONS[0]],
                     bool(score[j] * 0.9 >= THRESHOLDS[VERSIONS[0]]), "routine", 1, selection, None, None, None,
                     "celery:w1", txt["old"][j], txt["old"][j], txt["old"][j], txt["old"][j], txt["old"][j],
                     None, txt["old"][j])
                )  # fmt: skip
            analysis_id += 1
            scored = state in ("delivered", "delivery_failed", "analysing")
            s = float(score[j]) if scored else None
            present = None if s is None else bool(s >= thr)
            done = state not in ("analysing",)
            rows["analyses"].append(
                (
                    analysis_id,
                    sid,
                    "pneumonia",
                    version,
                    s,
                    thr if scored else None,
                    present,
                    None if s is None else ("urgent" if present else "routine"),
                    1 if scored else 0,
                    selection,
                    f"{uid}.9.1" if scored else None,
                    f"{uid}.9.2" if scored else None,
                    reason if state in ("not_applicable", "failed") else None,
                    f"celery:w{i % 4}",
                    txt["queued"][j],
                    txt["started"][j],
                    txt["pre"][j],
                    txt["inf"][j] if scored else None,
                    txt["built"][j] if scored else None,
                    txt["delivered"][j] if state == "delivered" else None,
                    txt["delivered"][j] if done else None,
                )
            )
            rows["events"].append(
                (None, txt["started"][j], uid, "analysis.started", json.dumps({"model_version": version}))
            )
            rows["events"].append((None, txt["delivered"][j], uid, f"study.{state}", None))
            if state == "delivered":
                for obj in (1, 2):
                    attempt_id += 1
                    rows["delivery_attempts"].append(
                        (attempt_id, analysis_id, "PACS@10.0.0.5:104", f"{uid}.9.{obj}", 1, True, 0, None,
                         txt["delivered"][j])
                    )  # fmt: skip
            elif state == "delivery_failed":
                for obj in (1, 2):
                    for attempt in (1, 2, 3):
                        attempt_id += 1
                        rows["delivery_attempts"].append(
                            (attempt_id, analysis_id, "PACS@10.0.0.5:104", f"{uid}.9.{obj}", attempt, False,
                             None, "association rejected or aborted", txt["delivered"][j])
                        )  # fmt: skip
            if read[j] and s is not None:
                label = bool(truth[j]) if reader_agrees[j] else not truth[j]
                rows["ground_truth"].append(
                    (sid, label, f"dr-{i % 7}", txt["delivered"][j], "reads.csv", txt["delivered"][j])
                )
        for name in ("events",):
            for r_i, r in enumerate(rows[name]):
                event_id += 1
                rows[name][r_i] = (event_id, *r[1:])
        yield rows


COLUMNS = {
    "studies": "id, study_uid, state, state_reason, calling_ae, accession_number, instance_count, "
    "first_received_at, last_received_at, completed_at, updated_at",
    "instances": "id, study_id, sop_instance_uid, sop_class_uid, series_uid, transfer_syntax_uid, modality, "
    "path, size_bytes, sha256, calling_ae, received_at",
    "analyses": "id, study_id, model_name, model_version, score, threshold, finding_present, priority, "
    "instances_analysed, selection, sr_sop_instance_uid, sc_sop_instance_uid, error, execution, queued_at, "
    "started_at, preprocessed_at, inferred_at, results_built_at, delivered_at, finished_at",
    "delivery_attempts": "id, analysis_id, destination, sop_instance_uid, attempt, success, status, error, "
    "attempted_at",
    "events": "id, at, study_uid, kind, detail",
    "ground_truth": "study_id, label, reader, read_at, source, imported_at",
}


def fill(url: str, n: int, seed: int) -> dict[str, float]:
    """Create the schema at 0001, bulk-load, upgrade to head; returns timings in seconds."""
    pg = url.startswith("postgresql")
    times: dict[str, float] = {}
    migrate(url, "0001")
    t0 = time.perf_counter()
    truth: list[tuple[Any, ...]] = []
    if pg:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            with conn.cursor() as cur:
                for rows in generate(n, seed, pg=True):
                    for table in TABLES:
                        with cur.copy(f"COPY {table} ({COLUMNS[table]}) FROM STDIN") as cp:
                            for r in rows[table]:
                                cp.write_row(r)
                    truth += rows["ground_truth"]
            conn.commit()
    else:
        lite = sqlite3.connect(url.split("///", 1)[1])
        lite.execute("PRAGMA synchronous=OFF")
        lite.execute("PRAGMA cache_size=-1000000")
        for rows in generate(n, seed, pg=False):
            for table in TABLES:
                cols = COLUMNS[table]
                marks = ",".join("?" * len(cols.split(",")))
                lite.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows[table])
            lite.commit()
            truth += rows["ground_truth"]
        lite.close()
    times["bulk load (rev 0001)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    migrate(url, "head")
    times["upgrade 0001 -> 0002 (indexes)"] = time.perf_counter() - t0
    engine = create_engine(url)
    with engine.begin() as c:
        marks = ", ".join(f":c{i}" for i in range(6))
        c.execute(
            text(f"INSERT INTO ground_truth ({COLUMNS['ground_truth']}) VALUES ({marks})"),
            [{f"c{i}": v for i, v in enumerate(r)} for r in truth],
        )
        c.execute(text("ANALYZE"))  # planner statistics, as a long-running database has them
    engine.dispose()
    return times


def queries(store: Store, n: int) -> list[tuple[str, Callable[[], int]]]:
    """(name, run -> rows) for every question timed."""
    with store.engine.connect() as c:
        end = c.execute(text("SELECT max(first_received_at) FROM studies")).scalar_one()
    end = end if isinstance(end, datetime) else datetime.fromisoformat(str(end))
    end = end.replace(tzinfo=timezone.utc) if end.tzinfo is None else end
    day, week, month = (end - timedelta(days=d) for d in (1, 7, 30))
    f = audit.AuditFilter
    one_uid = f"{ROOT}.{n // 2}"
    acc = f"A{n // 3:010d}"
    settings = Settings(database_url=store.url)
    collector = SqlCollector(settings, store)

    def count(rows: Any) -> int:
        return len(rows)

    def scrape() -> int:
        return sum(1 for _ in collector.collect())

    return [
        ("studies: newest 100", lambda: count(audit.studies(store, f()))),
        ("studies: last 24 h, 100", lambda: count(audit.studies(store, f(since=day)))),
        ("studies: calling AE, last 7 d, 100", lambda: count(audit.studies(store, f(since=week, calling_ae="DX_ICU")))),
        ("studies: state delivery_failed, 100", lambda: count(audit.studies(store, f(states=("delivery_failed",))))),
        ("studies: failed deliveries, last 30 d, 100", lambda: count(audit.studies(store, f(since=month, failed_deliveries=True)))),
        ("studies: model version 1.1.0, 100", lambda: count(audit.studies(store, f(model_version="1.1.0")))),
        ("studies: model version 1.0.0 (older), 100", lambda: count(audit.studies(store, f(model_version="1.0.0")))),
        ("studies: one accession number", lambda: count(audit.studies(store, f(accession_number=acc)))),
        ("studies: one study UID", lambda: count(audit.studies(store, f(study_uid=one_uid)))),
        ("studies: last 30 d, all rows (CSV export)", lambda: count(audit.studies(store, f(since=month), limit=None))),
        ("summary by day, last 30 d", lambda: count(audit.summary(store, f(since=month), by="day"))),
        ("summary by calling AE, last 7 d", lambda: count(audit.summary(store, f(since=week), by="calling_ae"))),
        ("summary by state, all time", lambda: count(audit.summary(store, f(), by="state"))),
        ("summary by model version, all time", lambda: count(audit.summary(store, f(), by="model_version"))),
        ("deliveries: failed, last 7 d", lambda: count(audit.deliveries(store, f(since=week), limit=None))),
        ("deliveries: failed, newest 100", lambda: count(audit.deliveries(store, f()))),
        ("events: one study's timeline", lambda: count(audit.events(store, f(study_uid=one_uid)))),
        ("events: kind study.delivery_failed, 7 d", lambda: count(audit.events(store, f(since=week), kind="study.delivery_failed", limit=None))),
        ("monitor: drift (PSI per day), last 30 d", lambda: count(drift.drift(store, {}, month, None)[1])),
        ("monitor: drift, all time", lambda: count(drift.drift(store, {}, None, None)[1])),
        ("monitor: performance vs reads, all time", lambda: count(performance.performance(store))),
        ("monitor: performance vs reads, last 30 d", lambda: count(performance.performance(store, month))),
        ("results: newest 50 (dicomnode results)", lambda: count(result_rows(store, limit=50))),
        ("worklist from SQL (open studies)", lambda: count(entries_from_store(store))),
        ("/metrics scrape", scrape),
    ]  # fmt: skip


def _studies_held(url: str) -> int:
    """Studies already in the database at ``url`` (0 when it has no schema yet)."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM studies")).scalar_one())
    except Exception:
        return 0
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=1_000_000)
    ap.add_argument(
        "--pg", metavar="URL", help="PostgreSQL server URL; a fresh database is made there and dropped"
    )
    ap.add_argument(
        "--db",
        help="SQLite file or PostgreSQL database URL to fill and keep (re-used if it holds --studies already)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    configure_logging("warning")

    tmp = tempfile.TemporaryDirectory(prefix="dicomnode-audit-bench-")
    admin, name, path = None, "", None
    if args.pg:
        name = f"dicomnode_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = args.pg.rsplit("/", 1)[0] + "/" + name
    elif args.db and args.db.startswith("postgresql"):
        url = args.db
    else:
        path = Path(args.db) if args.db else Path(tmp.name) / "audit.sqlite3"
        url = f"sqlite:///{path.resolve()}"
    try:
        times: dict[str, float] = {}
        held = _studies_held(url)
        if held != args.studies:
            if held:
                raise SystemExit(f"{url} holds {held} studies, not {args.studies}: give an empty database")
            if path is not None and path.exists():
                path.unlink()
            times = fill(url, args.studies, args.seed)
        store = Store(url, run_migrations=False)
        with store.engine.connect() as c:
            counts = {
                t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                for t in (*TABLES, "ground_truth")
            }
        backend = "SQLite" if path is not None else "PostgreSQL"
        print(f"\n{backend}, {args.studies:,} studies: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
        if path is not None:
            print(f"database file {os.path.getsize(path) / 1e9:.2f} GB")
        for k, v in times.items():
            print(f"{k:<44} {v:>8.1f} s")
        print(f"\n{'query':<46} {'rows':>7} {'first ms':>9} {'best ms':>8}")
        print("-" * 73)
        for label, run in queries(store, args.studies):
            samples, rows = [], 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                rows = run()
                samples.append((time.perf_counter() - t0) * 1000)
            print(f"{label:<46} {rows:>7} {samples[0]:>9.1f} {min(samples):>8.1f}")
        store.dispose()
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
