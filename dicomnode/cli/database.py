"""The node's database, for commands that read (or add to) what ``dicomnode serve`` recorded.

``Store(url)`` creates and migrates a database that is not there, which is right for ``serve`` and
``migrate`` and wrong for ``results``, ``audit`` and the like: run in the wrong folder or with a
missing setting they would make an empty ``./dicomnode-data`` and report nothing, as if the node
had received nothing. :func:`open_existing_store` refuses instead: a SQLite file must exist, and
any database must hold the schema (alembic's ``alembic_version`` table).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dicomnode.cli.errors import EXIT_USAGE, CommandError
from dicomnode.config import Settings
from dicomnode.store.db import Store

_HINT = "run `dicomnode serve` first or set DICOMNODE_STORAGE_DIR/DICOMNODE_DATABASE_URL"


def _shown(url: str) -> str:
    """The URL as we may print it: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the DICOMNODE_DATABASE_URL given"


def database_location(url: str) -> str:
    """Where the database is, for messages: the SQLite file's path, else the URL sans password."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return u.database
    return _shown(url)


def check_database(url: str) -> None:
    """Raise :class:`CommandError` unless ``url`` names an existing, migrated dicomnode database;
    creates nothing."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise CommandError(
            "DICOMNODE_DATABASE_URL is not a database URL; use e.g. "
            "postgresql+psycopg://user@db/dicomnode, or leave it unset for SQLite under the storage dir",
            EXIT_USAGE,
        ) from None
    where = database_location(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        if not Path(u.database).is_file():  # connecting would create it
            raise CommandError(f"no database at {where}; {_HINT}", EXIT_USAGE)
    engine = create_engine(url, hide_parameters=True)
    try:
        migrated = inspect(engine).has_table("alembic_version")
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc.__class__.__name__).strip().splitlines()[0]
        raise CommandError(
            f"cannot read the database at {where} ({reason}); check DICOMNODE_DATABASE_URL and that "
            "the database server runs",
            EXIT_USAGE,
        ) from None
    finally:
        engine.dispose()
    if not migrated:
        raise CommandError(f"no database at {where} (no dicomnode schema there); {_HINT}", EXIT_USAGE)


def open_existing_store(settings: Settings) -> Store:
    """The node's :class:`Store`, after :func:`check_database`: never a new, empty one."""
    url = settings.effective_database_url
    check_database(url)
    return Store(url)


__all__ = ["check_database", "database_location", "open_existing_store"]
