"""The fingerprint thread: SHA-256 of stored instances, taken only once the senders are quiet."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.receive.fingerprint import Fingerprinter
from dicomnode.storage import sha256_of
from dicomnode.store.db import Store
from dicomnode.store.queries import instance_by_sop_uid
from dicomnode.store.records import InstanceRecord, record_instance
from tests.support import wait_until


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.dispose()


def _stored(store: Store, folder: Path, n: int) -> dict[str, Path]:
    out = {}
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.10.1.{os.getpid()}.{time.monotonic_ns()}.{i}"
        path = folder / f"{i}.dcm"
        path.write_bytes(os.urandom(3000 + i))
        record_instance(
            store,
            InstanceRecord(
                "1.2.3",
                "1.2.3.4",
                uid,
                "1.2.840.10008.5.1.4.1.1.1",
                "1.2.840.10008.1.2.1",
                "CR",
                str(path),
                path.stat().st_size,
                None,
                "MODALITY",
            ),
        )
        out[uid] = path
    return out


def _sha(store: Store, uid: str) -> str | None:
    row = instance_by_sop_uid(store, uid)
    assert row is not None
    return row.sha256


def test_fingerprints_wait_for_quiet_then_match_the_files(store: Store, tmp_path: Path) -> None:
    files = _stored(store, tmp_path, 5)
    busy_until = [time.monotonic() + 1.5]  # a sender keeps storing for 1.5 s
    fp = Fingerprinter(
        store, last_activity=lambda: min(time.monotonic(), busy_until[0]), quiet_seconds=0.5, batch=2
    ).start()
    try:
        time.sleep(1.0)
        assert [_sha(store, uid) for uid in files] == [None] * 5, "hashed while the sender was busy"
        wait_until(lambda: all(_sha(store, uid) is not None for uid in files), 10, "fingerprints")
        assert {uid: _sha(store, uid) for uid in files} == {uid: sha256_of(p) for uid, p in files.items()}
    finally:
        fp.stop()


def test_continuous_traffic_still_gets_fingerprints_after_the_maximum_delay(
    store: Store, tmp_path: Path
) -> None:
    files = _stored(store, tmp_path, 3)
    fp = Fingerprinter(store, last_activity=time.monotonic, quiet_seconds=0.5, max_delay_seconds=1.0)
    fp.start()
    try:
        wait_until(lambda: all(_sha(store, uid) is not None for uid in files), 10, "fingerprints under load")
    finally:
        fp.stop()


def test_missing_file_is_skipped_and_an_overwritten_row_is_not_given_a_stale_hash(
    store: Store, tmp_path: Path
) -> None:
    files = _stored(store, tmp_path, 2)
    gone, kept = list(files)
    files[gone].unlink()
    fp = Fingerprinter(store, last_activity=lambda: 0.0)
    assert fp.run_once() == 2
    assert _sha(store, gone) is None and _sha(store, kept) == sha256_of(files[kept])
    assert fp.run_once() == 0  # the unreadable row is not read again and again

    # the instance is overwritten (new bytes, same path): the row's fingerprint is cleared and retaken
    files[kept].write_bytes(b"second version")
    record_instance(
        store,
        InstanceRecord(
            "1.2.3",
            "1.2.3.4",
            kept,
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1",
            "CR",
            str(files[kept]),
            14,
            None,
            "MODALITY",
        ),
    )
    assert _sha(store, kept) is None
    assert fp.run_once() == 1
    assert _sha(store, kept) == sha256_of(files[kept])
