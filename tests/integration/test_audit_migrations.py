"""Revision 0002 (ground truth, audit indexes) up and down on real SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

NEW_INDEXES = {
    "studies": {
        "ix_studies_accession_number",
        "ix_studies_calling_ae_first_received_at",
        "ix_studies_state_first_received_at",
    },
    "analyses": {
        "ix_analyses_study_id_id",
        "ix_analyses_finished_at",
        "ix_analyses_model_version_finished_at",
    },
    "delivery_attempts": {"ix_delivery_attempts_success_attempted_at"},
    "events": {"ix_events_kind_at"},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm2.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


def _indexes(engine: object, table: str) -> set[str]:
    return {ix["name"] for ix in inspect(engine).get_indexes(table)}  # type: ignore[arg-type]


def test_0002_adds_ground_truth_and_indexes_keeps_data_and_downgrades_cleanly(db_url: str) -> None:
    migrate(db_url, "0001")
    engine = create_engine(db_url)
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO studies (study_uid, state, instance_count, first_received_at, "
                    "last_received_at, updated_at) VALUES ('1.2.3', 'delivered', 1, "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
        assert "ground_truth" not in inspect(engine).get_table_names()

        migrate(db_url, "0002")
        insp = inspect(engine)
        assert "ground_truth" in insp.get_table_names()
        for table, names in NEW_INDEXES.items():
            assert names <= _indexes(engine, table), table
        with engine.begin() as c:
            sid = c.execute(text("SELECT id FROM studies WHERE study_uid = '1.2.3'")).scalar_one()
            c.execute(
                text(
                    "INSERT INTO ground_truth (study_id, label, imported_at) VALUES (:sid, true, '2026-01-02 00:00:00')"
                ),
                {"sid": sid},
            )
        # the models and the migrated schema agree (nothing for autogenerate to add or drop)
        with engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diff == []

        downgrade(db_url, "0001")
        assert "ground_truth" not in inspect(engine).get_table_names()
        for table, names in NEW_INDEXES.items():
            assert not names & _indexes(engine, table), table
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM studies")).scalar_one() == 1
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"

        migrate(db_url)  # and up again
        assert "ground_truth" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
