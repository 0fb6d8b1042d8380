"""Group commit: writers on concurrent associations share their disk flushes.

Making a received instance durable takes two flushes (:func:`dicomnode.storage.move_atomic`): its
data before the rename into place, so a file under its final name is never cut short, and the
folder after it, so the name itself survives a power cut. Each flush waits for the disk. Writers
that call :meth:`GroupCommit.sync` at about the same time share one: the first to find no flush
running leads (it flushes what every queued writer asked for, its own included) while the others
wait; writers that arrive during a flush queue for the next one. A flush therefore always starts
after every write it covers, no writer returns before its paths are flushed, and durability costs
one flush per batch instead of one per instance. No thread of its own: the leader is a writer.

Gathering: a leader that finds fewer writers queued than the previous flush covered waits for the
others, at most as long as that flush took and never more than ``max_delay``. Without it, writers
released by one flush come back (their rename done, or their next instance received) just after
the next flush started, and the senders split into two groups whose flushes alternate, halving
the batches; with it they fall into step. Waiting longer than a flush costs would cost more than
it saves, so the wait follows the disk: fractions of a millisecond on a local SSD, more on a busy
or networked disk. A lone sender never waits (the previous flush covered one writer).

Bounds: a flush covers at most ``max_batch`` writers (the rest wait for the next one), so one
flush's work, and the wait of the writers in it, stays bounded; the queue holds at most one entry
per waiting writer, that is one per association (DICOMNODE_MAX_ASSOCIATIONS).

The node does not use it by default (:class:`dicomnode.receive.handler.StoreHandler` takes one):
each association fsyncs on its own thread, with the interpreter lock released, and a journalling
filesystem (ext4's jbd2; XFS's log works alike) already merges fsyncs that arrive together into
one commit while the data of each file is written in parallel. A leader that fsyncs its batch's
files one after the other pays a disk cache flush for each, and one ``syncfs`` per batch waits for
the whole filesystem: both were slower than the kernel's own batching on ext4 (``bench/group_commit.py``;
docs/sizing.md, "Group commit"). It is here for filesystems that do not batch, to measure there.

A flush that fails fails every writer of its batch (:class:`FlushError`, an :class:`OSError`): none
of them may tell its sender Success, since what the kernel reports once is not reported again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds a leader may wait for the writers of the previous flush to come back (see above).
MAX_DELAY = 0.01

#: A flush: make the data of ``files`` and the entries of ``dirs`` durable, or raise OSError.
FlushFunction = Callable[[Sequence[Path], Sequence[Path]], None]


def fsync_paths(files: Sequence[Path], dirs: Sequence[Path]) -> None:
    """fsync each file, then each folder (each once): the data first, then the names in the folders.

    Per path rather than the whole filesystem (``syncfs``): the storage may share its filesystem
    with a database or other services whose dirty pages are none of our business."""
    for path in (*files, *dirs):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FlushError(OSError):
    """The flush covering this write failed: the write is not durable (answer a failure; the
    sender retries). ``__cause__`` is the error the flush raised."""


@dataclass(eq=False)
class _Batch:
    """The writers one flush covers: their paths, deduplicated (a series folder once per batch)."""

    ready: threading.Condition  # its writers wait here, on the GroupCommit's lock
    files: dict[Path, None] = field(default_factory=dict)
    dirs: dict[Path, None] = field(default_factory=dict)
    writers: int = 0
    done: bool = False
    error: BaseException | None = None


class GroupCommit:
    """Batches the fsyncs of concurrent writers (leader/follower, see the module docstring).

    ``flush`` does the flushing (default :func:`fsync_paths`; tests and benchmarks pass their own);
    ``max_batch`` bounds the writers one flush covers and ``max_delay`` (0: never wait) the time a
    leader waits for more.
    :attr:`flushes` counts flushes done, :attr:`writes` the :meth:`sync` calls they covered and
    :attr:`failures` the flushes that raised: ``writes / flushes`` is the mean batch size."""

    def __init__(
        self, flush: FlushFunction = fsync_paths, *, max_batch: int = 64, max_delay: float = MAX_DELAY
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_delay < 0:
            raise ValueError(f"max_delay must be 0 or more seconds, got {max_delay}")
        self._flush = flush
        self.max_batch = max_batch
        self.max_delay = max_delay
        self._lock = threading.Lock()
        self._gathering = threading.Condition(self._lock)  # a leader waiting for more writers
        self._gatherer = False
        self._queue: deque[_Batch] = deque()  # oldest first; the last one takes new writers
        self._flushing = False
        self._last_writers = 1  # how many writers the previous flush covered
        self._last_seconds = 0.0  # and how long it took
        self.flushes = 0
        self.writes = 0
        self.failures = 0

    @property
    def waiting(self) -> int:
        """Writers queued for a flush that has not started yet."""
        with self._lock:
            return sum(b.writers for b in self._queue)

    def sync(self, files: Iterable[Path] = (), dirs: Iterable[Path] = ()) -> None:
        """Return once a flush that started after this call has made ``files`` (their data) and
        ``dirs`` (their entries) durable; raise :class:`FlushError` if that flush failed."""
        with self._lock:
            batch = self._join(files, dirs)
            while not batch.done:
                if self._flushing:
                    batch.ready.wait()
                else:
                    self._lead()
            self.writes += 1
            if batch.error is not None:
                err = batch.error
                why = (
                    f"flush of {batch.writers} write(s) failed ({type(err).__name__}: {err}); "
                    "they are not durable: check the storage disk"
                )
                code = getattr(err, "errno", None)
                raise (FlushError(code, why) if code else FlushError(why)) from err

    def _join(self, files: Iterable[Path], dirs: Iterable[Path]) -> _Batch:
        if not self._queue or self._queue[-1].writers >= self.max_batch:
            self._queue.append(_Batch(threading.Condition(self._lock)))
        batch = self._queue[-1]
        batch.files.update(dict.fromkeys(files))
        batch.dirs.update(dict.fromkeys(dirs))
        batch.writers += 1
        if self._gatherer:
            self._gathering.notify()  # the leader counts us
        return batch

    def _lead(self) -> None:
        """Flush the oldest batch (called with the lock held; released during the flush)."""
        self._flushing = True
        head = self._queue[0]
        try:
            target = min(self._last_writers, self.max_batch)
            if head.writers < target and self.max_delay > 0:
                deadline = time.monotonic() + min(self.max_delay, self._last_seconds)
                self._gatherer = True
                try:
                    while head.writers < target and (left := deadline - time.monotonic()) > 0:
                        self._gathering.wait(left)
                finally:
                    self._gatherer = False
            self._queue.popleft()  # from here on, new writers join a new batch
            self._lock.release()
            t0 = time.monotonic()
            try:
                self._flush(list(head.files), list(head.dirs))
            except BaseException as exc:  # every writer of the batch must hear of it
                head.error = exc
            finally:
                self._last_seconds = time.monotonic() - t0
                self._lock.acquire()
        finally:
            head.done = True
            self._last_writers = head.writers
            self.flushes += 1
            self.failures += head.error is not None
            self._flushing = False
            head.ready.notify_all()
            if self._queue:  # every writer of the next batch is waiting: one of them leads
                self._queue[0].ready.notify()


__all__ = ["FlushError", "FlushFunction", "GroupCommit", "fsync_paths"]
