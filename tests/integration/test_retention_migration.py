"""Revision 0005 (retention marks) up and down on real SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

ADDED = {
    "studies": {"purged_at"},
    "instances": {"purged_at", "missing_at"},
    "analyses": {"results_purged_at"},
}


def _added(engine: object) -> dict[str, set[str]]:
    insp = inspect(engine)  # type: ignore[arg-type]
    return {t: {c["name"] for c in insp.get_columns(t)} & cols for t, cols in ADDED.items()}


def test_0005_adds_the_retention_columns_and_downgrades(db_url: str) -> None:
    migrate(db_url, "0004")
    engine = create_engine(db_url)
    try:
        assert _added(engine) == {t: set() for t in ADDED}
        migrate(db_url, "0005")
        assert _added(engine) == ADDED
        downgrade(db_url, "0004")
        assert _added(engine) == {t: set() for t in ADDED}
        migrate(db_url)
        with engine.connect() as c:  # at head, the models and the migrated schema agree
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    finally:
        engine.dispose()
