"""Engine, sessions and schema migrations (alembic) for the node's SQL store.

The rows hold accession numbers and, in the SQLite file, everything the node records about a
study, so the engines never print statement parameters into exception text (and so into logs),
and a SQLite file and its folder are the node user's alone, like the received instances.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent
#: A SQLite database and the folders made for it: owner only, whatever the umask.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Files SQLite keeps beside the database.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def _private_sqlite_file(path: Path) -> None:
    """Create the SQLite file ``path`` (and missing folders) owner-only before SQLite opens it,
    and take group and other access away from an existing one and its side files."""
    missing = []
    folder = path.parent
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(mode=DIR_MODE, exist_ok=True)
    try:  # an empty file is an empty database; SQLite gives its -wal and -shm files the same mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    for p in (path, *(path.with_name(path.name + side) for side in _SQLITE_SIDE_FILES)):
        try:
            if p.stat().st_mode & 0o077:
                p.chmod(FILE_MODE)
        except OSError:  # absent, or another user's file (a read-only audit): leave it as it is
            continue


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so the SCP, the tracker and
    in-process workers (threads or processes) can write concurrently.

    ``hide_parameters``: a failing statement's exception (and so a logged error) shows the SQL, not
    the accession numbers and UIDs bound to it."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            _private_sqlite_file(Path(path))
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def alembic_config(url: str) -> Any:
    """An alembic Config pointing at our migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (the node does this at every start)."""
    from alembic import command

    if url.startswith("sqlite"):
        make_engine(url).dispose()  # creates the parent folder
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Move the database at ``url`` down to ``revision`` (e.g. ``base``)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


class Store:
    """The node's handle on its database: an engine plus a session factory."""

    def __init__(self, url: str, *, run_migrations: bool = True) -> None:
        if run_migrations:
            migrate(url)
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
