"""Group commit on the receive path: four modalities sending at once over real associations share
their flushes, every instance answered Success is on disk with the bytes sent, and a failed flush
answers 0xA700 to every instance it covered and keeps none of them.

The node's C-STORE handler and listener, on SQLite, given a group commit (``dicomnode serve``
leaves it off unless DICOMNODE_GROUP_COMMIT is set: on ext4 the journal already merges the fsyncs of concurrent associations,
docs/sizing.md) over a disk that takes 20 ms per flush (real fsyncs plus a sleep, as on a busy or
networked disk), so the four senders certainly overlap in their waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicomnode.delivery.push import PushResult, push_files
from dicomnode.net import Listener, ListenerConfig, status
from dicomnode.receive.handler import ReceivedInstance, StoreHandler
from dicomnode.storage import GroupCommit, fsync_paths, read_file_meta, stored_files
from dicomnode.store.db import Store
from dicomnode.testing.phantoms import make_phantom

SENDERS, PER_SENDER = 4, 10
FLUSH_SECONDS = 0.02


class SlowDisk:
    """Real fsyncs that take at least ``FLUSH_SECONDS`` each; raise EIO while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = threading.Event()

    def __call__(self, files: Sequence[Path], dirs: Sequence[Path]) -> None:
        time.sleep(FLUSH_SECONDS)
        if self.broken.is_set():
            raise OSError(5, "Input/output error")
        fsync_paths(files, dirs)


@dataclass
class Scp:
    port: int
    handler: StoreHandler
    commit: GroupCommit
    disk: SlowDisk
    instances_dir: Path


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    store = Store(f"sqlite:///{tmp_path / 'node.db'}")
    disk = SlowDisk()
    commit = GroupCommit(disk)
    stored: list[ReceivedInstance] = []
    handler = StoreHandler(
        store, tmp_path / "instances", stored.append, fsync=True, group_commit=commit
    ).start()
    listener = Listener(ListenerConfig(ae_title="DICOMNODE"), handler, incoming_dir=tmp_path / "incoming")
    listener.start("127.0.0.1", 0)
    try:
        yield Scp(listener.server_address[1], handler, commit, disk, tmp_path / "instances")
    finally:
        listener.shutdown()
        handler.stop()
        store.dispose()


def _studies(folder: Path, senders: int, per_sender: int, seed: int) -> list[list[Path]]:
    """One study per sender, ``per_sender`` small DX images each, written as Part 10 files."""
    rng = np.random.default_rng(seed)
    batches = []
    for s in range(senders):
        study_uid, batch = generate_uid(), []
        for _ in range(per_sender):
            ds = make_phantom(rng, False, study_uid=study_uid, size=64)
            f = folder / f"s{s}" / f"{ds.SOPInstanceUID}.dcm"
            f.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(f, enforce_file_format=True)
            batch.append(f)
        batches.append(batch)
    return batches


def _send_at_once(port: int, batches: list[list[Path]]) -> list[PushResult]:
    """Each batch over its own association, all started together."""
    results: list[list[PushResult]] = [[] for _ in batches]
    start = threading.Barrier(len(batches))

    def send(i: int) -> None:
        start.wait()
        results[i] = push_files(batches[i], "127.0.0.1", port, calling_ae=f"MOD{i:02d}")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [r for rs in results for r in rs]


def _data_set(path: Path) -> bytes:
    """The bytes after the File Meta Information: what the sender sent, as the node must keep it."""
    with open(path, "rb") as fh:
        meta = read_file_meta(fh)
        assert meta.MediaStorageSOPInstanceUID == path.stem
        return fh.read()


def test_concurrent_associations_share_flushes_and_every_success_is_stored_whole(
    scp: Scp, tmp_path: Path
) -> None:
    batches = _studies(tmp_path / "in", SENDERS, PER_SENDER, seed=16)
    results = _send_at_once(scp.port, batches)
    total = SENDERS * PER_SENDER
    assert [r.status for r in results] == [status.SUCCESS] * total
    stored = {p.stem: p for p in stored_files(scp.instances_dir)}
    assert len(stored) == total
    for f in (f for batch in batches for f in batch):
        assert _data_set(stored[f.stem]) == _data_set(f)
    # two flushes per instance (data before the rename, folder after), shared between senders
    assert scp.commit.writes == 2 * total
    assert scp.commit.failures == 0
    assert scp.commit.flushes < total, f"{scp.commit.flushes} flushes for {total} instances"


def test_a_failed_flush_answers_out_of_resources_to_every_instance_it_covered(
    scp: Scp, tmp_path: Path
) -> None:
    batches = _studies(tmp_path / "in", SENDERS, 2, seed=17)
    scp.disk.broken.set()
    failed = _send_at_once(scp.port, batches)
    assert [r.status for r in failed] == [status.OUT_OF_RESOURCES] * (2 * SENDERS)
    assert list(stored_files(scp.instances_dir)) == []  # no file answered 0xA700 kept under its name
    assert scp.commit.failures == scp.commit.flushes > 0
    scp.disk.broken.clear()  # the disk is back: the senders' retries are stored
    again = _send_at_once(scp.port, batches)
    assert [r.status for r in again] == [status.SUCCESS] * (2 * SENDERS)
    assert len(list(stored_files(scp.instances_dir))) == 2 * SENDERS
