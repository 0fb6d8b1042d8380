"""Revision 0007 (urgent-finding notifications) up and down on real SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

COLUMNS = {
    "id",
    "analysis_id",
    "study_uid",
    "url",
    "payload",
    "state",
    "attempts",
    "created_at",
    "next_attempt_at",
    "first_attempt_at",
    "last_attempt_at",
    "delivered_at",
    "failed_at",
    "last_error",
}


def test_0007_adds_the_notifications_table_and_downgrades(db_url: str) -> None:
    migrate(db_url, "0006")
    engine = create_engine(db_url)
    try:
        assert "notifications" not in inspect(engine).get_table_names()
        migrate(db_url, "0007")
        insp = inspect(engine)
        assert {c["name"] for c in insp.get_columns("notifications")} == COLUMNS
        assert {i["name"] for i in insp.get_indexes("notifications")} >= {
            "ix_notifications_analysis_id",
            "ix_notifications_study_uid",
            "ix_notifications_state_next_attempt_at",
        }
        assert [u["column_names"] for u in insp.get_unique_constraints("notifications")] == [
            ["analysis_id", "url"]
        ]
        downgrade(db_url, "0006")
        assert "notifications" not in inspect(engine).get_table_names()
        migrate(db_url)
        with engine.connect() as c:  # at head, the models and the migrated schema agree
            assert compare_metadata(MigrationContext.configure(c), Base.metadata) == []
    finally:
        engine.dispose()
