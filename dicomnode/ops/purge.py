"""Retention: delete received instances and result files after a number of days; keep the rows.

``dicomnode purge`` runs it once; ``serve`` runs it every ``DICOMNODE_PURGE_INTERVAL_SECONDS``
(:class:`PurgeSchedule`). Nothing is deleted unless a retention setting is above 0.

- Received instances of a study go ``DICOMNODE_RETENTION_INSTANCE_DAYS`` after its results were
  delivered (or, for a study the model could not read, after that analysis finished), and only
  instances received before that cut-off: a study still being received, analysed, waiting for a
  delivery, failed or ``delivery_failed`` keeps everything, because someone still needs it.
- Result files (SR, SC) of an analysis go ``DICOMNODE_RETENTION_RESULT_DAYS`` after they were
  built, once delivered. A purged result can no longer be re-sent (``dicomnode resend``), and a
  later revision of the study goes out without the Predecessor Documents reference to it.

The SQL rows stay for the audit trail, marked ``instances.purged_at``, ``studies.purged_at`` and
``analyses.results_purged_at``, with one ``study.purged`` or ``results.purged`` event per study or
analysis (counts, never patient data). The start-up re-scan skips purged rows. A file that is
already gone counts as purged; one that cannot be deleted (permissions) is left with its row
unmarked, logged, and tried again next time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from sqlalchemy import func, insert, select, update

from dicomnode.config import Settings
from dicomnode.store.db import Store
from dicomnode.store.models import Analysis, Event, Instance, Study, StudyState, utcnow

__all__ = ["PurgeReport", "PurgeSchedule", "purge"]

log = structlog.get_logger("dicomnode.purge")

#: Studies (or analyses) handled per transaction: bounded memory and IN lists at any backlog.
BATCH = 500
#: Files deleted at once: unlink and rmdir wait on the disk's journal, not on a CPU.
DELETE_THREADS = 8
#: Studies whose instances retention may delete: finished, nothing left to do with the images.
_DONE_STATES = (StudyState.DELIVERED.value, StudyState.NOT_APPLICABLE.value)


@dataclass(frozen=True)
class PurgeReport:
    """What one purge deleted (or, dry run, would delete)."""

    studies: int = 0  # studies whose instances were purged
    instances: int = 0  # instance files deleted (or already gone)
    instance_bytes: int = 0
    analyses: int = 0  # analyses whose result files were purged
    result_files: int = 0
    failed: int = 0  # files that could not be deleted (left, rows unmarked, retried next time)
    seconds: float = 0.0
    dry_run: bool = False


def purge(
    settings: Settings,
    store: Store,
    *,
    instance_days: float | None = None,
    result_days: float | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Delete what retention allows (days default to the settings; 0: keep); returns counts."""
    t0 = time.monotonic()
    now = now or utcnow()
    instance_days = settings.retention_instance_days if instance_days is None else instance_days
    result_days = settings.retention_result_days if result_days is None else result_days
    counts = dict(studies=0, instances=0, instance_bytes=0, analyses=0, result_files=0, failed=0)
    with ThreadPoolExecutor(DELETE_THREADS, thread_name_prefix="purge-delete") as pool:
        if instance_days > 0:
            _purge_instances(store, now - timedelta(days=instance_days), now, dry_run, counts, pool)
        if result_days > 0:
            cutoff = now - timedelta(days=result_days)
            _purge_results(settings.results_dir, store, cutoff, now, dry_run, counts, pool)
    report = PurgeReport(**counts, seconds=round(time.monotonic() - t0, 3), dry_run=dry_run)
    if instance_days > 0 or result_days > 0:
        log.info("purge.done", **report.__dict__)
    return report


def _delete(path: Path) -> tuple[bool, int]:
    """(deleted or already gone, bytes freed); False when the file stays."""
    try:
        size = path.stat().st_size
        path.unlink()
        return True, size
    except FileNotFoundError:
        return True, 0
    except OSError as exc:
        log.error(
            "purge.delete_failed", path=str(path), error=type(exc).__name__, detail="check the file's owner"
        )
        return False, 0


def _remove(path: Path, levels: int) -> tuple[bool, int]:
    """:func:`_delete`, then :func:`_prune_dirs` when it went."""
    ok, size = _delete(path)
    if ok:
        _prune_dirs(path, levels)
    return ok, size


def _remove_results(results_dir: Path, study_uid: str, uids: Sequence[str | None]) -> list[tuple[bool, int]]:
    """Delete an analysis's result files (the pipeline's layout: delivery.rounds.result_file)."""
    return [_remove(results_dir / study_uid / f"{uid}.dcm", 1) for uid in uids if uid is not None]


def _prune_dirs(path: Path, stop: int) -> None:
    """Remove the now-empty series and study folders above ``path`` (``stop`` levels at most)."""
    parent = path.parent
    for _ in range(stop):
        try:
            parent.rmdir()
        except OSError:  # not empty, or gone
            return
        parent = parent.parent


def _purge_instances(
    store: Store, cutoff: datetime, now: datetime, dry_run: bool, counts: dict[str, int], pool: Executor
) -> None:
    finished = (
        select(
            Analysis.study_id,
            func.max(func.coalesce(Analysis.delivered_at, Analysis.finished_at)).label("done"),
        )
        .group_by(Analysis.study_id)
        .subquery()
    )
    last_id = 0
    while True:
        with store.session() as s:
            study_ids = list(
                s.scalars(
                    select(Study.id)
                    .join(finished, finished.c.study_id == Study.id)
                    .where(
                        Study.id > last_id,
                        Study.purged_at.is_(None),
                        Study.state.in_(_DONE_STATES),
                        finished.c.done < cutoff,
                    )
                    .order_by(Study.id)
                    .limit(BATCH)
                )
            )
            if not study_ids:
                return
            last_id = study_ids[-1]
            rows = list(
                s.execute(
                    select(Instance.id, Instance.study_id, Instance.path, Study.study_uid)
                    .join(Study, Study.id == Instance.study_id)
                    .where(
                        Instance.study_id.in_(study_ids),
                        Instance.purged_at.is_(None),
                        Instance.received_at < cutoff,
                    )
                )
            )
        if dry_run:
            counts["studies"] += len(study_ids)
            counts["instances"] += len(rows)
            continue
        purged: list[int] = []
        kept_studies: set[int] = set()
        per_study: dict[int, tuple[str, int, int]] = {}
        outcomes = pool.map(functools.partial(_remove, levels=2), [Path(r[2]) for r in rows])
        for (instance_id, study_id, _, study_uid), (ok, size) in zip(rows, outcomes, strict=True):
            if not ok:
                kept_studies.add(study_id)
                counts["failed"] += 1
                continue
            purged.append(instance_id)
            uid, n, total = per_study.get(study_id, (study_uid, 0, 0))
            per_study[study_id] = (uid, n + 1, total + size)
            counts["instance_bytes"] += size
        done = [sid for sid in study_ids if sid not in kept_studies]
        with store.engine.begin() as conn:
            for start in range(0, len(purged), BATCH):
                chunk = purged[start : start + BATCH]
                conn.execute(update(Instance).where(Instance.id.in_(chunk)).values(purged_at=now))
            if done:
                conn.execute(update(Study).where(Study.id.in_(done)).values(purged_at=now))
            events = [
                {
                    "at": now,
                    "study_uid": per_study[sid][0],
                    "kind": "study.purged",
                    "detail": {"instances": per_study[sid][1], "bytes": per_study[sid][2]},
                }
                for sid in done
                if sid in per_study
            ]
            if events:
                conn.execute(insert(Event), events)
        counts["studies"] += len(done)
        counts["instances"] += len(purged)


def _purge_results(
    results_dir: Path,
    store: Store,
    cutoff: datetime,
    now: datetime,
    dry_run: bool,
    counts: dict[str, int],
    pool: Executor,
) -> None:
    last_id = 0
    while True:
        with store.session() as s:
            rows = list(
                s.execute(
                    select(
                        Analysis.id,
                        Study.study_uid,
                        Analysis.sr_sop_instance_uid,
                        Analysis.sc_sop_instance_uid,
                    )
                    .join(Study, Study.id == Analysis.study_id)
                    .where(
                        Analysis.id > last_id,
                        Analysis.results_purged_at.is_(None),
                        Analysis.results_built_at < cutoff,
                        Analysis.delivered_at.is_not(None),
                    )
                    .order_by(Analysis.id)
                    .limit(BATCH)
                )
            )
        if not rows:
            return
        last_id = rows[-1][0]
        if dry_run:
            counts["analyses"] += len(rows)
            continue
        done: list[tuple[int, str, int]] = []
        for (analysis_id, study_uid, *_), outcomes in zip(
            rows, pool.map(lambda r: _remove_results(results_dir, r[1], r[2:]), rows), strict=True
        ):
            if all(ok for ok, _ in outcomes):
                done.append((analysis_id, study_uid, len(outcomes)))
            else:
                counts["failed"] += 1
        if not done:
            continue
        with store.engine.begin() as conn:
            conn.execute(
                update(Analysis).where(Analysis.id.in_([d[0] for d in done])).values(results_purged_at=now)
            )
            conn.execute(
                insert(Event),
                [
                    {
                        "at": now,
                        "study_uid": uid,
                        "kind": "results.purged",
                        "detail": {"analysis_id": aid, "files": n},
                    }
                    for aid, uid, n in done
                ],
            )
        counts["analyses"] += len(done)
        counts["result_files"] += sum(d[2] for d in done)


class PurgeSchedule:
    """Runs :func:`purge` every ``interval`` seconds on a daemon thread while ``serve`` runs.

    The first run waits one interval (at most a minute), so a start opens its port first. A purge
    that raises (the database down) is logged and tried again at the next tick."""

    def __init__(
        self, run: Callable[[], PurgeReport], interval: float, close: Callable[[], None] | None = None
    ) -> None:
        self._run = run
        self._interval = interval
        self._close = close  # after the thread ends: dispose of the schedule's own store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="purge", daemon=True)

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether ``serve`` runs a schedule: an interval and a retention above 0."""
        return settings.purge_interval_seconds > 0 and (
            settings.retention_instance_days > 0 or settings.retention_result_days > 0
        )

    @classmethod
    def for_settings(cls, settings: Settings, store: Store, *, own_store: bool = False) -> PurgeSchedule:
        """The schedule of ``settings`` on ``store`` (disposed of at :meth:`stop` if ``own_store``)."""
        return cls(
            lambda: purge(settings, store),
            settings.purge_interval_seconds,
            store.dispose if own_store else None,
        )

    def start(self) -> PurgeSchedule:
        self._thread.start()
        return self

    def _loop(self) -> None:
        wait = min(self._interval, 60.0)
        while not self._stop.wait(wait):
            wait = self._interval
            try:
                self._run()
            except Exception as exc:  # the next tick tries again; the type only (SQL text quotes values)
                log.error("purge.failed", error=type(exc).__name__, detail="retried at the next interval")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._close is not None and not self._thread.is_alive():
            self._close()
