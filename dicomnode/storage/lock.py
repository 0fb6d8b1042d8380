"""One node per storage folder: an exclusive ``flock`` on ``<storage_dir>/dicomnode.lock``.

Two ``dicomnode serve`` on one folder would both sweep ``incoming/``, rescan and migrate, and then
both write the same files. The lock is taken before any of that and held for the life of the
process; the kernel drops it when the process ends, however it ends, so a crash leaves no stale
lock. The file holds the holder's PID so the refusal can name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from dicomnode.storage.durable import DIR_MODE

LOCK_NAME = "dicomnode.lock"


class StorageLockedError(RuntimeError):
    """Another process holds the storage folder's lock."""

    def __init__(self, storage_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"another dicomnode serve holds {storage_dir} ({who}); stop it first, or give this "
            "node its own DICOMNODE_STORAGE_DIR"
        )
        self.storage_dir = storage_dir
        self.pid = pid


class StorageLock:
    """The held lock; :meth:`release` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StorageLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def lock_storage(storage_dir: Path) -> StorageLock:
    """Take the storage folder's lock (creating the folder owner-only), or raise
    :class:`StorageLockedError` naming the holder's PID; never waits."""
    storage_dir = storage_dir.resolve()
    storage_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path = storage_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise StorageLockedError(storage_dir, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return StorageLock(path, fd)


__all__ = ["LOCK_NAME", "StorageLock", "StorageLockedError", "lock_storage"]
