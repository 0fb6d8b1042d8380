"""Durable instance storage: the receive file, the Part 10 file meta, the layout on disk, atomic writes,
and the one bounded way to open a stored instance that may be deflated.

A leaf room: it imports nothing from :mod:`dicomnode.net` or :mod:`dicomnode.receive`, which
both build on it.
"""

from __future__ import annotations

from dicomnode.storage.durable import (
    DIR_MODE,
    TMP_SUFFIX,
    StoredFile,
    move_atomic,
    sha256_of,
    sweep_partial_writes,
    write_atomic,
)
from dicomnode.storage.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, encode_file_meta
from dicomnode.storage.group_commit import FlushError, FlushFunction, GroupCommit, fsync_paths
from dicomnode.storage.incoming import (
    HEAD_BYTES,
    WRITEBACK_EVERY,
    IncomingFile,
    create_incoming_file,
    sweep_incoming,
)
from dicomnode.storage.inflate import (
    DeflateError,
    InflateLimitError,
    inflate_prefixes,
    inflated_size,
    is_deflated,
    read_file_meta,
    read_instance,
)
from dicomnode.storage.layout import UnsafeUIDError, instance_path, normalise_uid, stored_files

__all__ = [
    "DIR_MODE",
    "DeflateError",
    "FlushError",
    "FlushFunction",
    "GroupCommit",
    "HEAD_BYTES",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "TMP_SUFFIX",
    "WRITEBACK_EVERY",
    "IncomingFile",
    "InflateLimitError",
    "StoredFile",
    "UnsafeUIDError",
    "create_incoming_file",
    "encode_file_meta",
    "fsync_paths",
    "inflate_prefixes",
    "inflated_size",
    "instance_path",
    "is_deflated",
    "move_atomic",
    "normalise_uid",
    "read_file_meta",
    "read_instance",
    "sha256_of",
    "stored_files",
    "sweep_incoming",
    "sweep_partial_writes",
    "write_atomic",
]
