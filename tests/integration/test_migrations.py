"""Alembic migrations on real SQLite and the real PostgreSQL at 127.0.0.1:5432."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

TABLES = {"studies", "instances", "analyses", "delivery_attempts", "events"}


def test_upgrade_creates_the_model_schema_and_downgrade_removes_it(db_url: str) -> None:
    migrate(db_url)
    engine = create_engine(db_url)
    try:
        insp = inspect(engine)
        assert TABLES <= set(insp.get_table_names())
        for table in Base.metadata.sorted_tables:
            cols = {c["name"] for c in insp.get_columns(table.name)}
            assert cols == {c.name for c in table.columns}, table.name
        downgrade(db_url, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        migrate(db_url)  # and up again
        assert TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
