"""One node per storage folder (issue 18.3): the flock that `dicomnode serve` takes first.

flock locks belong to an open file description, so a second :func:`lock_storage` in this same
process conflicts exactly as a second process would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomnode.storage.lock import LOCK_NAME, StorageLockedError, lock_storage


def test_second_lock_on_a_folder_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with lock_storage(tmp_path / "data"):
        with pytest.raises(StorageLockedError) as refused:
            lock_storage(tmp_path / "data")
    assert refused.value.pid == os.getpid()
    assert str(refused.value).startswith(
        f"another dicomnode serve holds {tmp_path / 'data'} (pid {os.getpid()})"
    )


def test_lock_is_free_again_once_released(tmp_path: Path) -> None:
    lock = lock_storage(tmp_path)
    lock.release()
    lock_storage(tmp_path).release()  # no error: the kernel dropped the first lock
    lock.release()  # twice is harmless


def test_lock_file_is_owner_only_and_holds_the_pid(tmp_path: Path) -> None:
    with lock_storage(tmp_path / "new" / "data") as lock:
        assert lock.path == (tmp_path / "new" / "data" / LOCK_NAME)
        assert lock.path.read_text().strip() == str(os.getpid())
        assert lock.path.stat().st_mode & 0o777 == 0o600
        assert lock.path.parent.stat().st_mode & 0o077 == 0


def test_other_folders_are_not_locked(tmp_path: Path) -> None:
    with lock_storage(tmp_path / "a"), lock_storage(tmp_path / "b"):
        pass
