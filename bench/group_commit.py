"""What group commit saves on this disk: concurrent writers, each flush of its own against shared ones.

    .venv/bin/python bench/group_commit.py                       # a folder in the system temp dir
    .venv/bin/python bench/group_commit.py --dir /srv/dicomnode  # the filesystem the node stores on

No network, no DICOM: ``--threads`` writers (as many associations) each write their share of
``--count`` files of ``--size`` bytes the way the node's receive path does
(:class:`dicomnode.storage.IncomingFile` with early writeback, then
:func:`dicomnode.storage.move_atomic` into a series folder). Ways, timed in the same run,
interleaved, order rotated each repetition:

- ``page cache only``: no fsync (what DCMTK storescp does); not durable.
- ``fsync per instance``: each writer fsyncs its file and folder itself, as the node as shipped
  does; the filesystem's journal may merge concurrent fsyncs into one commit (ext4, XFS).
- ``group commit``: writers share flushes through one :class:`dicomnode.storage.GroupCommit`; a
  leader fsyncs every file and folder of its batch (:func:`dicomnode.storage.fsync_paths`).
- ``group commit, syncfs``: the same, each flush one ``syncfs(2)`` of the whole filesystem (Linux).

The ratio column is against ``fsync per instance``; flushes/file counts the group's flushes (each
file needs two: its data before the rename, its folder after).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.storage import FlushFunction, GroupCommit, IncomingFile, move_atomic  # noqa: E402

CHUNK = 75_000  # about what one socket read hands the listener
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs_of(root: Path) -> FlushFunction:
    """A flush that syncs the whole filesystem holding ``root`` (one fd kept open, so writeback
    errors since the previous flush are reported)."""
    fd = os.open(root, os.O_RDONLY)

    def flush(files: Sequence[Path], dirs: Sequence[Path]) -> None:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return flush


def write_all(root: Path, threads: int, count: int, data: bytes, way: str) -> tuple[float, int]:
    """Seconds for ``threads`` writers to store ``count`` files; and the flushes group commit took."""
    (root / "incoming").mkdir(parents=True)
    commit = {
        "group commit": lambda: GroupCommit(),
        "group commit, syncfs": lambda: GroupCommit(syncfs_of(root)),
    }.get(way, lambda: None)()
    start = threading.Barrier(threads + 1)

    def writer(w: int) -> None:
        start.wait()
        view = memoryview(data)
        for i in range(w, count, threads):
            incoming = IncomingFile(str(root / "incoming"), b"", early_writeback=way != "page cache only")
            for at in range(0, len(view), CHUNK):
                incoming.write(view[at : at + CHUNK])
            incoming.close()
            target = root / "study" / f"series{w}" / f"{i}.dcm"
            move_atomic(incoming.path, target, sync=way != "page cache only", commit=commit)

    pool = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, commit.flushes if commit is not None else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--size", type=int, default=512 * 1024, help="bytes per file (default: a CT slice)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dicomnode-group-commit-", dir=args.dir))
    data = os.urandom(args.size)
    ways = ["page cache only", "fsync per instance", "group commit", "group commit, syncfs"]
    try:
        for threads in args.threads:
            times: dict[str, list[float]] = {w: [] for w in ways}
            flushes: dict[str, list[int]] = {w: [] for w in ways}
            for rep in range(args.reps):
                for way in ways[rep % len(ways) :] + ways[: rep % len(ways)]:
                    root = base / f"{threads}-{rep}-{way.replace(' ', '-')}"
                    os.sync()
                    seconds, n = write_all(root, threads, args.count, data, way)
                    times[way].append(seconds)
                    flushes[way].append(n)
                    shutil.rmtree(root)
            print(
                f"\n{threads} writer(s), {args.count} files of {args.size // 1024} KiB, {args.reps} reps, in {base}"
            )
            print(
                f"{'way':<20} {'median s':>9} {'files/s':>9} {'vs fsync per inst.':>19} {'flushes/file':>13}"
            )
            ref = statistics.median(times["fsync per instance"])
            for way in ways:
                med = statistics.median(times[way])
                per_file = f"{statistics.median(flushes[way]) / args.count:.2f}" if "group" in way else "-"
                print(f"{way:<20} {med:>9.3f} {args.count / med:>9.0f} {ref / med:>18.2f}x {per_file:>13}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
