"""What the node writes to disk holds patient data: result objects and the SQLite database (and its
WAL) are the node user's alone (0600), in folders the node creates 0700, whatever the umask; and
a failing SQL statement's exception text does not carry the values bound to it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from dicomnode.config import Settings
from dicomnode.delivery import result_file
from dicomnode.storage import write_atomic
from dicomnode.store.db import Store
from dicomnode.store.models import Study


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common default umask (022), which would leave new files readable by every local user."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_result_file_and_the_folders_made_for_it_are_owner_only(tmp_path: Path) -> None:
    settings = Settings(storage_dir=tmp_path / "node")
    path = result_file(settings, "1.2.3", "1.2.3.4")
    write_atomic(path, b"DICM result with a patient name", sync=False)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700  # results/<study>
    assert _mode(settings.results_dir) == 0o700


def test_the_sqlite_database_its_wal_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "state" / "dicomnode.sqlite3"
    store = Store(f"sqlite:///{db}")
    try:
        with store.session() as s:  # a write keeps the WAL file while the connection is pooled
            s.add(Study(study_uid="1.2.3", accession_number="ACC1"))
        wal = db.with_name(db.name + "-wal")
        assert _mode(db) == 0o600
        assert wal.exists() and _mode(wal) == 0o600
        assert _mode(db.parent) == 0o700
    finally:
        store.dispose()


def test_an_existing_world_readable_sqlite_database_is_made_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "dicomnode.sqlite3"
    Store(f"sqlite:///{db}").dispose()
    db.chmod(0o644)  # as an earlier version left it
    store = Store(f"sqlite:///{db}")
    try:
        assert _mode(db) == 0o600
        with store.session() as s:
            assert s.scalar(select(Study.id)) is None  # still the same, usable database
    finally:
        store.dispose()


def test_a_failing_statement_does_not_show_its_parameters(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        with store.session() as s:
            s.add(Study(study_uid="1.2.3", accession_number="ACC1"))
        with pytest.raises(IntegrityError) as err, store.session() as s:
            s.add(Study(study_uid="1.2.3", accession_number="SECRET-ACC-77"))
        text = str(err.value)
        assert "UNIQUE constraint failed" in text  # what went wrong is still there
        assert "SECRET-ACC-77" not in text and "1.2.3'" not in text
        assert "hidden due to hide_parameters" in text
    finally:
        store.dispose()
