"""Revision 0006 (storage commitment rows) up and down on real SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

COLUMNS = {
    "id",
    "analysis_id",
    "destination",
    "transaction_uid",
    "sop_instance_uid",
    "requested_at",
    "committed_at",
    "failed_at",
    "failed_reason",
}


def test_0006_adds_the_commitments_table_and_downgrades(db_url: str) -> None:
    migrate(db_url, "0005")
    engine = create_engine(db_url)
    try:
        assert "commitments" not in inspect(engine).get_table_names()
        migrate(db_url, "0006")
        insp = inspect(engine)
        assert {c["name"] for c in insp.get_columns("commitments")} == COLUMNS
        assert {i["name"] for i in insp.get_indexes("commitments")} == {
            "ix_commitments_analysis_id",
            "ix_commitments_transaction_uid",
        }
        downgrade(db_url, "0005")
        assert "commitments" not in inspect(engine).get_table_names()
        migrate(db_url)
        with engine.connect() as c:  # at head, the models and the migrated schema agree
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    finally:
        engine.dispose()
