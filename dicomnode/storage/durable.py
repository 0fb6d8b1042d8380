"""Durable writes: the bytes the sender sent, written atomically, never decoded.

A write goes to a temporary file in the destination folder, is fsynced, renamed into place and
the folder fsynced, so after a crash a file is either whole or absent; a leftover ``.tmp`` file is
never a stored instance and :func:`sweep_partial_writes` removes them at start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dicomnode.storage.group_commit import GroupCommit, fsync_paths

TMP_SUFFIX = ".tmp"
#: Files and folders the node writes hold patient data (names, IDs, images): owner only, whatever
#: the umask. Received instances are created 0600 as well (:mod:`dicomnode.storage.incoming`).
FILE_MODE = 0o600
DIR_MODE = 0o700
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


@dataclass(frozen=True)
class StoredFile:
    """Where an instance landed and what was written."""

    path: Path
    size_bytes: int
    sha256: str | None  # None when the bytes were not hashed on the way (see dicomnode.receive.fingerprint)


def _make_dirs(path: Path) -> list[Path]:
    """Create ``path`` and missing parents (owner only, :data:`DIR_MODE`); returns the folders whose
    entries changed (each new folder's parent), which a durable write must fsync too, or a power
    cut could lose a whole new series. A folder another association made a moment ago counts as
    well: its maker may not have flushed it yet."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    changed = []
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            pass
        changed.append(folder.parent)
    return changed


def write_atomic(path: Path, data: bytes | memoryview, *, sync: bool = True) -> StoredFile:
    """Write ``data`` to ``path`` durably (owner only, :data:`FILE_MODE`): temp file, fsync, rename,
    fsync the folder.

    ``sync=False`` skips both fsyncs (the file is whole after a process crash, not after a power cut)."""
    new_dirs = _make_dirs(path.parent)
    if sync:
        fsync_paths([], new_dirs)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data)}{TMP_SUFFIX}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with open(os.open(tmp, _NEW_FILE, FILE_MODE), "wb") as fh:
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync:
        fsync_paths([], [path.parent])
    return StoredFile(path, len(data), digest)


def move_atomic(src: Path, path: Path, *, sync: bool = True, commit: GroupCommit | None = None) -> StoredFile:
    """Durably move a received temp file (same filesystem) to ``path``.

    The data is fsynced before the rename, so ``path`` is either absent or whole after a power cut,
    and the folder after it (with the parents of any folder made for it), so the name survives one;
    ``sync=False`` skips the fsyncs. ``commit`` shares both flushes with the writes of concurrent
    associations (:class:`dicomnode.storage.GroupCommit`); it raises
    :class:`dicomnode.storage.FlushError` when the flush covering this move failed. The file is
    not read (its SHA-256 is taken later, off the receiving path: :mod:`dicomnode.receive.fingerprint`)."""
    flush = (fsync_paths if commit is None else commit.sync) if sync else None
    size = os.stat(src).st_size
    if flush is not None:
        flush([src], [])  # the data before the name
    new_dirs: list[Path] = []
    try:
        try:
            os.replace(src, path)
        except FileNotFoundError:  # the first instance of its series: make the folders
            new_dirs = _make_dirs(path.parent)
            os.replace(src, path)
    except OSError:  # another filesystem: copy to a temp file beside the target, then rename
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(src, "rb") as fin, open(os.open(tmp, _NEW_FILE, FILE_MODE), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            if flush is not None:
                flush([tmp], [])
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        Path(src).unlink(missing_ok=True)
    if flush is not None:
        flush([], [path.parent, *new_dirs])
    return StoredFile(path, size, None)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a stored file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sweep_partial_writes(root: Path) -> int:
    """Remove temp files left by an interrupted write; returns how many were removed."""
    if not root.exists():
        return 0
    removed = 0
    for p in root.rglob(f"*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        removed += 1
    return removed


__all__ = ["TMP_SUFFIX", "StoredFile", "move_atomic", "sha256_of", "sweep_partial_writes", "write_atomic"]
