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


def _make_dirs(path: Path, *, sync: bool) -> None:
    """Create ``path`` and missing parents (owner only, :data:`DIR_MODE`); with ``sync``, each new
    folder's entry in its parent is made durable too (fsync of the parent), or a power cut could
    lose a whole new series."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:  # another association made it a moment ago
            continue
        if sync:
            _fsync_dir(folder.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, *, sync: bool = True) -> StoredFile:
    """Write ``data`` to ``path`` durably (owner only, :data:`FILE_MODE`): temp file, fsync, rename,
    fsync the folder.

    ``sync=False`` skips both fsyncs (the file is whole after a process crash, not after a power cut)."""
    _make_dirs(path.parent, sync=sync)
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
        _fsync_dir(path.parent)
    return StoredFile(path, len(data), digest)


def move_atomic(src: Path, path: Path, *, sync: bool = True) -> StoredFile:
    """Durably move a received temp file (same filesystem) to ``path``.

    The data is fsynced before the rename and the folder after it, so ``path`` is either absent or
    whole after a power cut; ``sync=False`` skips the fsyncs. The file is not read (its SHA-256 is
    taken later, off the receiving path: :mod:`dicomnode.receive.fingerprint`)."""
    if sync:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    else:
        size = os.stat(src).st_size
    try:
        try:
            os.replace(src, path)
        except FileNotFoundError:  # the first instance of its series: make the folders
            _make_dirs(path.parent, sync=sync)
            os.replace(src, path)
    except OSError:  # another filesystem: copy to a temp file beside the target, then rename
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(src, "rb") as fin, open(os.open(tmp, _NEW_FILE, FILE_MODE), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            if sync:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        Path(src).unlink(missing_ok=True)
    if sync:
        _fsync_dir(path.parent)
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
