"""Records received instances in SQL on one thread, in batches, off the C-STORE path.

A C-STORE is answered once its file is durable (fsynced and renamed into place); the file on disk is
what "stored" means, and SQL is the index over it. Recording a row one at a time costs more than
the durable write itself (docs/sizing.md), so the SCP hands each record to this thread and answers
at once; the thread gathers what arrives within 20 ms and commits it in one transaction of a few
statements (:func:`~dicomnode.store.records.record_instances`). Nothing is lost between the two: a
file whose row never committed (power cut, kill -9) is found and recorded by the start-up rescan
(:mod:`dicomnode.receive.rescan`).

The study's quiet period starts when its row commits (``on_recorded``), so a study is never handed
to analysis before SQL knows all of its instances. When the database fails, the recorder keeps
retrying with a capped backoff and ``accepting`` turns false: the SCP then refuses new instances
with 0xA700 (out of resources) rather than piling up files SQL does not know about.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dicomnode.store.db import Store
from dicomnode.store.records import InstanceOutcome, InstanceRecord, record_instance, record_instances

log = structlog.get_logger("dicomnode.recorder")

_STOP = object()
_RETRY_FIRST_SECONDS = 0.5
_RETRY_MAX_SECONDS = 10.0


def _database_down(exc: BaseException) -> bool:
    """A failure of the database itself (connection, lock, disk, pool) rather than of one record."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class InstanceRecorder:
    """Queue + thread: ``submit`` a record, ``on_recorded`` runs after its row has committed."""

    def __init__(
        self,
        store: Store,
        on_recorded: Callable[[InstanceRecord, InstanceOutcome], None],
        *,
        max_batch: int = 256,
        max_queue: int = 10_000,
        # The quiet period starts when a row commits, so the linger adds to every study's time to
        # result; longer batches help only bursts of small instances (docs/sizing.md, "Recorder").
        linger_seconds: float = 0.02,
    ) -> None:
        self.store = store
        self.on_recorded = on_recorded
        self.max_batch = max_batch
        self.linger_seconds = linger_seconds
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._pending: dict[str, str] = {}  # SOP Instance UID -> path, submitted but not committed
        self._lock = threading.Condition()
        self._submitted = 0
        self._committed = 0
        self._stopping = False
        self.accepting = True
        self._thread: threading.Thread | None = None

    def start(self) -> InstanceRecorder:
        self._thread = threading.Thread(target=self._run, name="dicomnode-recorder", daemon=True)
        self._thread.start()
        return self

    def submit(self, rec: InstanceRecord) -> bool:
        """Queue ``rec``; False when the queue is full (the caller refuses the instance)."""
        with self._lock:
            self._pending[rec.sop_instance_uid] = rec.path
            self._submitted += 1
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            with self._lock:
                self._pending.pop(rec.sop_instance_uid, None)
                self._submitted -= 1
            return False
        return True

    def pending_path(self, sop_instance_uid: str) -> str | None:
        """Where a submitted, not yet committed instance lies (the ``ignore`` duplicate policy)."""
        with self._lock:
            return self._pending.get(sop_instance_uid)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record submitted so far has committed (or been given up)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self._submitted
            while self._committed < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop. Records still failing after ``timeout`` are left to the
        start-up rescan (their files are on disk)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        with self._lock:
            self._stopping = True
        self._thread.join(5.0)
        if self._thread.is_alive():
            log.warning("recorder.stopped_with_backlog", records=self._queue.qsize())

    # -- thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop_after = False
            # a busy sender's next instances arrive within milliseconds: let them queue up and take
            # them along (sleeping, not waiting on the queue, so each arrival does not wake us)
            time.sleep(self.linger_seconds)
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            self._commit([r for r in batch if isinstance(r, InstanceRecord)])
            if stop_after:
                return

    def _commit(self, batch: list[InstanceRecord]) -> None:
        try:
            outcomes = record_instances(self.store, batch)
        except Exception:  # one record may be at fault, or the database: record them one by one
            outcomes_or_none = [self._record_one(rec) for rec in batch]
            done = [(r, o) for r, o in zip(batch, outcomes_or_none, strict=True) if o is not None]
        else:
            done = list(zip(batch, outcomes, strict=True))
        self.accepting = True
        for rec, outcome in done:
            try:
                self.on_recorded(rec, outcome)
            except Exception as exc:
                log.error(
                    "recorder.callback_failed", error=type(exc).__name__, sop_instance_uid=rec.sop_instance_uid
                )
        with self._lock:  # only now: flush() promises the rows and what follows them
            for rec in batch:
                if self._pending.get(rec.sop_instance_uid) == rec.path:
                    del self._pending[rec.sop_instance_uid]
            self._committed += len(batch)
            self._lock.notify_all()

    def _record_one(self, rec: InstanceRecord) -> InstanceOutcome | None:
        delay = _RETRY_FIRST_SECONDS
        while True:
            try:
                return record_instance(self.store, rec)
            except Exception as exc:
                if not _database_down(exc):
                    log.error(
                        "store.record_failed",
                        error=type(exc).__name__,
                        sop_instance_uid=rec.sop_instance_uid,
                        detail="the file is stored; the next start-up rescan records it",
                    )
                    return None
                with self._lock:
                    stopping = self._stopping
                if stopping:
                    log.error(
                        "store.record_abandoned",
                        sop_instance_uid=rec.sop_instance_uid,
                        error=type(exc).__name__,
                    )
                    return None
                if self.accepting:
                    log.error("store.db_unavailable", error=type(exc).__name__, retry_seconds=delay)
                self.accepting = False
                time.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_SECONDS)


__all__ = ["InstanceRecorder"]
