"""Group commit (dicomnode.storage.group_commit): concurrent writers share flushes, every writer
returns only after a flush that started after its write, and a failed flush fails its whole batch.

The flushes are real fsyncs (:func:`dicomnode.storage.fsync_paths`) wrapped by a recorder that notes
what each flush covered; a gate holds the first flush so that writers queue behind it for sure.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from dicomnode.storage import FlushError, GroupCommit, fsync_paths, instance_path, move_atomic
from tests.support import wait_until


class RecordingFlush:
    """A real flush that records what it covered; ``gate`` (when set) holds flushes until opened;
    ``fail_with`` makes the flushes after the first raise it."""

    def __init__(self, *, gated: bool = False, fail_with: OSError | None = None) -> None:
        self.batches: list[tuple[list[Path], list[Path]]] = []
        #: for each folder flushed, the names in it when the flush started
        self.listings: list[tuple[Path, frozenset[str]]] = []
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.fail_with = fail_with
        self._lock = threading.Lock()

    def __call__(self, files: Sequence[Path], dirs: Sequence[Path]) -> None:
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        with self._lock:
            self.batches.append((list(files), list(dirs)))
            self.listings += [(d, frozenset(os.listdir(d))) for d in dirs]
            failing = self.fail_with is not None and len(self.batches) > 1
        if failing:
            assert self.fail_with is not None
            raise self.fail_with
        fsync_paths(files, dirs)


def _start(
    n: int, target: Callable[[int], None]
) -> tuple[list[threading.Thread], list[BaseException | None]]:
    errors: list[BaseException | None] = [None] * n

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, errors


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a writer never returned"


def test_concurrent_writers_return_only_after_their_file_is_whole_and_its_name_flushed(
    tmp_path: Path,
) -> None:
    flush = RecordingFlush()
    commit = GroupCommit(flush)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    writers, per_writer = 6, 15
    checked: list[int] = [0] * writers

    def write(w: int) -> None:
        for i in range(per_writer):
            data = os.urandom(1000 + 97 * i)
            src = incoming / f"rx-{w}-{i}.dcm"
            src.write_bytes(data)
            dst = instance_path(tmp_path / "instances", "1.2.3", f"1.2.3.{w % 2}", f"1.2.3.{w}.{i}")
            move_atomic(src, dst, commit=commit)
            # returned: the bytes are whole under the final name, and a flush of the folder began
            # after the rename (the name was in the folder when that flush started)
            assert dst.read_bytes() == data
            assert any(d == dst.parent and dst.name in names for d, names in flush.listings)
            assert any(src in files for files, _ in flush.batches)  # the data flushed before the rename
            checked[w] += 1

    threads, errors = _start(writers, write)
    _join(threads)
    assert errors == [None] * writers
    assert checked == [per_writer] * writers
    assert commit.writes == 2 * writers * per_writer  # data, then name, for each instance
    assert commit.flushes == len(flush.batches) <= commit.writes and commit.failures == 0
    # each new folder's entry in its parent was flushed as well (study in instances, series in study)
    flushed_dirs = {d for _, dirs in flush.batches for d in dirs}
    assert {tmp_path / "instances", tmp_path / "instances" / "1.2.3"} <= flushed_dirs


def test_writers_queued_behind_a_flush_share_the_next_one(tmp_path: Path) -> None:
    flush = RecordingFlush(gated=True)
    commit = GroupCommit(flush)
    files = [tmp_path / f"f{i}" for i in range(9)]
    for f in files:
        f.write_bytes(b"x")
    first, first_errors = _start(1, lambda i: commit.sync(files=[files[0]]))
    assert flush.entered.wait(30)  # the first writer leads and is inside its flush
    rest, rest_errors = _start(8, lambda i: commit.sync(files=[files[i + 1]], dirs=[tmp_path]))
    wait_until(lambda: commit.waiting == 8, 30, "8 writers queued behind the first flush")
    flush.gate.set()
    _join(first + rest)
    assert first_errors + rest_errors == [None] * 9
    assert commit.flushes == 2 and commit.writes == 9
    assert flush.batches[0] == ([files[0]], [])
    assert sorted(flush.batches[1][0]) == sorted(files[1:])
    assert flush.batches[1][1] == [tmp_path]  # one folder fsync for the eight writers


def test_a_failed_flush_fails_every_writer_of_its_batch_and_the_next_flush_works(tmp_path: Path) -> None:
    flush = RecordingFlush(gated=True, fail_with=OSError(errno.EIO, "Input/output error"))
    commit = GroupCommit(flush)
    (tmp_path / "f").write_bytes(b"x")
    first, first_errors = _start(1, lambda i: commit.sync(files=[tmp_path / "f"]))
    assert flush.entered.wait(30)
    rest, rest_errors = _start(5, lambda i: commit.sync(dirs=[tmp_path]))
    wait_until(lambda: commit.waiting == 5, 30, "5 writers queued behind the first flush")
    flush.gate.set()
    _join(first + rest)
    assert first_errors == [None]
    assert all(isinstance(e, FlushError) for e in rest_errors), rest_errors
    for e in rest_errors:
        assert isinstance(e, FlushError) and e.errno == errno.EIO and isinstance(e.__cause__, OSError)
        assert "5 write(s)" in str(e) and "not durable" in str(e)
    assert commit.failures == 1 and commit.flushes == 2
    flush.fail_with = None
    commit.sync(dirs=[tmp_path])  # a later writer is not stuck behind the failure
    assert commit.flushes == 3


def test_a_failed_data_flush_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    def broken_disk(files: Sequence[Path], dirs: Sequence[Path]) -> None:
        raise OSError(errno.EIO, "Input/output error")

    src = tmp_path / "rx.dcm"
    src.write_bytes(b"DICM")
    dst = tmp_path / "study" / "series" / "x.dcm"
    with pytest.raises(FlushError) as raised:
        move_atomic(src, dst, commit=GroupCommit(broken_disk))
    assert raised.value.errno == errno.EIO
    assert not dst.exists() and src.read_bytes() == b"DICM"  # the sender is told to retry; nothing half-kept


def test_max_batch_bounds_what_one_flush_covers(tmp_path: Path) -> None:
    flush = RecordingFlush(gated=True)
    commit = GroupCommit(flush, max_batch=3)
    first, _ = _start(1, lambda i: commit.sync(dirs=[tmp_path]))
    assert flush.entered.wait(30)
    rest, errors = _start(7, lambda i: commit.sync(dirs=[tmp_path]))
    wait_until(lambda: commit.waiting == 7, 30, "7 writers queued")
    flush.gate.set()
    _join(first + rest)
    assert errors == [None] * 7
    assert commit.flushes == 4  # the first, then 3 + 3 + 1
    assert commit.writes == 8


class SlowFlush(RecordingFlush):
    """A flush that takes ``seconds`` (a slow disk), after a gated first one."""

    def __init__(self, seconds: float) -> None:
        super().__init__(gated=True)
        self.seconds = seconds

    def __call__(self, files: Sequence[Path], dirs: Sequence[Path]) -> None:
        super().__call__(files, dirs)
        time.sleep(self.seconds)


def _four_then_staggered(tmp_path: Path, commit: GroupCommit, flush: SlowFlush) -> None:
    """A flush of four writers, then four writers arriving 10 ms apart."""
    first, _ = _start(1, lambda i: commit.sync(dirs=[tmp_path]))
    assert flush.entered.wait(30)
    four, _ = _start(4, lambda i: commit.sync(dirs=[tmp_path]))
    wait_until(lambda: commit.waiting == 4, 30, "4 writers queued")
    flush.gate.set()
    _join(first + four)
    assert commit.flushes == 2

    def staggered(i: int) -> None:
        time.sleep(0.01 * i)
        commit.sync(dirs=[tmp_path])

    threads, errors = _start(4, staggered)
    _join(threads)
    assert errors == [None] * 4


def test_a_leader_waits_for_as_many_writers_as_the_previous_flush_covered(tmp_path: Path) -> None:
    flush = SlowFlush(0.15)
    commit = GroupCommit(flush, max_delay=1.0)  # the wait is bounded by the last flush's 0.15 s
    _four_then_staggered(tmp_path, commit, flush)
    assert commit.flushes == 3  # the four staggered writers shared one flush


def test_without_a_delay_staggered_writers_miss_the_leaders_flush(tmp_path: Path) -> None:
    flush = SlowFlush(0.15)
    commit = GroupCommit(flush, max_delay=0)
    _four_then_staggered(tmp_path, commit, flush)
    assert commit.flushes == 4  # the first alone, the three that came during its flush together


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_delay": -1.0}])
def test_bad_bounds_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GroupCommit(**kwargs)  # type: ignore[arg-type]
