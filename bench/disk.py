"""What a durable write costs on this disk: the node's own write path against page-cache-only writes.

    .venv/bin/python bench/disk.py                          # a folder in the system temp dir
    .venv/bin/python bench/disk.py --dir /srv/dicomnode     # the filesystem the node will store on

No network and no DICOM parsing: just the bytes of the ingest workload (``bench/ingest.py``:
200 x 512 KiB CT, 50 x 8 MiB DX) written one file after another, as a sender that waits for each
C-STORE response makes the node write them. Ways of writing, each timed in the same run:

- ``page cache only``: create, write, close; what DCMTK storescp does by default. After a power cut
  such files may be empty or cut short, although the sender was told Success.
- ``fsync file``: the same plus fsync of the file: data on disk, but the file's name is not, and a
  crash mid-write leaves a partial file under the final name.
- ``dicomnode``: the node's own path (``dicomnode.storage.IncomingFile`` with its early writeback,
  then ``dicomnode.storage.move_atomic``): write to the incoming folder, fsync, rename into the
  series folder, fsync the folder. After a power cut each file is whole or absent.

The ratio column is page cache only / that way: what durability alone leaves of the page-cache
rate on this disk. It bounds what any durable receiver can reach against storescp on small
instances, where the disk write cannot overlap the transfer of the next one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.storage import IncomingFile, move_atomic  # noqa: E402  (the node's receive-side write path)

CHUNK = 75_000  # about what one socket read hands the listener


def _write_chunks(fd: int, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        os.write(fd, view[start : start + CHUNK])


def page_cache(root: Path, i: int, data: bytes) -> None:
    fd = os.open(root / f"{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _write_chunks(fd, data)
    os.close(fd)


def fsync_file(root: Path, i: int, data: bytes) -> None:
    fd = os.open(root / f"{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _write_chunks(fd, data)
    os.fsync(fd)
    os.close(fd)


def dicomnode(root: Path, i: int, data: bytes) -> None:
    incoming = IncomingFile(str(root / "incoming"), b"", early_writeback=True)
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        incoming.write(view[start : start + CHUNK])
    incoming.close()
    move_atomic(incoming.path, root / "study" / "series" / f"{i}.dcm", sync=True)


WAYS: dict[str, Callable[[Path, int, bytes], None]] = {
    "page cache only": page_cache,
    "fsync file": fsync_file,
    "dicomnode": dicomnode,
}


def run(base: Path, label: str, count: int, size: int, reps: int) -> None:
    data = os.urandom(size)
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for rep in range(reps):
        names = list(WAYS)
        names = names[rep % len(names) :] + names[: rep % len(names)]  # rotated, as bench/ingest.py
        for name in names:
            root = base / "run"
            shutil.rmtree(root, ignore_errors=True)
            (root / "incoming").mkdir(parents=True)
            (root / "study" / "series").mkdir(parents=True)
            os.sync()  # nobody pays for the previous way's dirty pages
            t0 = time.perf_counter()
            for i in range(count):
                WAYS[name](root, i, data)
            times[name].append(time.perf_counter() - t0)
    shutil.rmtree(base / "run", ignore_errors=True)
    mb = count * size / 1e6
    print(f"\n[{label}] {count} files x {size // 1024} KiB, {mb:.0f} MB, median of {reps}")
    print(f"{'way':<18} {'median s':>9} {'ms/file':>8} {'MB/s':>8} {'vs page cache':>14}   runs (s)")
    print("-" * 80)
    ref = statistics.median(times["page cache only"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:<18} {med:>9.3f} {1000 * med / count:>8.2f} {mb / med:>8.0f} {ref / med:>13.2f}x   "
            + " ".join(f"{t:.3f}" for t in ts)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="a folder on the filesystem to measure (default: temp dir)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dicomnode-disk-", dir=args.dir))
    try:
        print(f"measuring in {base}")
        run(base, "CT-sized", 200, 512 * 1024, args.reps)
        run(base, "DX-sized", 50, 8 * 1024 * 1024, args.reps)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
