"""The receive file: one data set being written into ``<incoming>/rx-*.dcm`` as it arrives.

The listener streams each data set fragment straight into such a file (preamble, file meta, then
the fragments as they came off the socket); the C-STORE handler later moves the whole file into
place with :func:`dicomnode.storage.move_atomic`. On Linux the disk is asked to start writing
every :data:`WRITEBACK_EVERY` bytes while the rest still arrives, so the fsync before Success has
less left to do (docs/sizing.md).

A data set that cannot be kept (the disk or quota is full, or it grows past ``max_bytes``) is
deleted at once and the rest of it is read and dropped (:attr:`IncomingFile.refused` says why), so
the association can answer 0xA700 (out of resources) and go on rather than abort.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
from pathlib import Path
from typing import Any

try:  # Linux: start writeback of a file range without waiting for it (sync_file_range(2))
    _libc = ctypes.CDLL(None, use_errno=True)
    _sync_file_range: Any = _libc.sync_file_range
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _sync_file_range = None
_SYNC_FILE_RANGE_WRITE = 2

#: How much of the start of each data set :attr:`IncomingFile.head` keeps: enough for the header
#: parse to reach the Series Instance UID without reading the file back.
HEAD_BYTES = 1 << 16
#: Start the disk writing after every this many bytes (and once more when the data set is complete).
WRITEBACK_EVERY = 1 << 20


class IncomingFile:
    """One data set being received into ``<incoming>/rx-*.dcm``: preamble, file meta, fragments.

    ``meta`` is written first (see :func:`dicomnode.storage.encode_file_meta`); ``created`` is a
    file already made by :func:`create_incoming_file` (the association's spare). With
    ``early_writeback`` (and on Linux) the disk starts writing while the data set still arrives.
    ``max_bytes`` (0: no limit) bounds the data set, file meta not counted."""

    def __init__(
        self,
        directory: str,
        meta: bytes,
        early_writeback: bool,
        created: tuple[int, str] | None = None,
        *,
        max_bytes: int = 0,
    ) -> None:
        fd, name = created or create_incoming_file(directory)
        self.fd, self.path = fd, Path(name)
        self.size = 0
        self._meta_size = len(meta)
        self._limit = len(meta) + max_bytes if max_bytes > 0 else 0
        self.head = bytearray()  # the first HEAD_BYTES of the data set, kept for the header parse
        self._flushed = 0
        self._early = early_writeback and _sync_file_range is not None
        #: why the data set is not kept (the file is already gone; what follows is dropped), or None
        self.refused: str | None = None
        self.received = 0  # bytes that arrived, kept or not
        self.write(memoryview(meta))

    def write(self, data: memoryview) -> None:
        """Append ``data`` (a fragment as it came off the socket); drop it once the data set is refused."""
        self.received += len(data)
        if self.refused is not None:
            return
        if self._limit and self.received > self._limit:
            self._refuse("data set larger than DICOMNODE_MAX_DATASET_BYTES")
            return
        if self.size >= self._meta_size and len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
                self.size += n
        except OSError as exc:  # ENOSPC, EDQUOT, EFBIG (RLIMIT_FSIZE), EIO: our disk, not the sender
            self._refuse(f"cannot write the receive file: {errno.errorcode.get(exc.errno or 0, type(exc).__name__)}")
            return
        if self._early and self.size - self._flushed >= WRITEBACK_EVERY:
            _sync_file_range(self.fd, self._flushed, self.size - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self.size

    def _refuse(self, why: str) -> None:
        self.refused = why
        self.head.clear()
        self.discard()

    def close(self) -> None:
        """The data set is complete: close the file (it stays at :attr:`path`)."""
        if self.fd >= 0:
            if self._early and self.size > self._flushed:
                # start the disk on the rest now: it works while the header is parsed, the fsync
                # before Success then waits for less
                _sync_file_range(self.fd, self._flushed, 0, _SYNC_FILE_RANGE_WRITE)
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        """The data set will never be complete: close and delete the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


_names = itertools.count()


def create_incoming_file(directory: str) -> tuple[int, str]:
    """A new file of our own in ``directory``, open for writing, as (descriptor, path).

    Cheaper than tempfile's random names: the counter and the process ID are unique already;
    O_EXCL still guards against a leftover."""
    while True:
        name = os.path.join(directory, f"rx-{os.getpid()}-{next(_names)}.dcm")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name  # patient data
        except FileExistsError:
            continue


def sweep_incoming(incoming_dir: Path) -> int:
    """Remove receive buffers of associations that never finished (call before the SCP listens)."""
    if not incoming_dir.is_dir():
        return 0
    removed = 0
    for p in incoming_dir.iterdir():
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


__all__ = ["HEAD_BYTES", "WRITEBACK_EVERY", "IncomingFile", "create_incoming_file", "sweep_incoming"]
