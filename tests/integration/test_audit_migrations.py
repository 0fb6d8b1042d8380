"""Revisions 0002 (ground truth, audit indexes) and 0003 (fingerprint after receipt) up and down on
real SQLite and PostgreSQL."""

from __future__ import annotations

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
        downgrade(db_url, "0001")
        assert "ground_truth" not in inspect(engine).get_table_names()
        for table, names in NEW_INDEXES.items():
            assert not names & _indexes(engine, table), table
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM studies")).scalar_one() == 1
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"

        migrate(db_url)  # and up again
        assert "ground_truth" in inspect(engine).get_table_names()
        # at head, the models and the migrated schema agree (nothing for autogenerate to add or drop)
        with engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def _sha256_nullable(engine: object) -> bool:
    [col] = [c for c in inspect(engine).get_columns("instances") if c["name"] == "sha256"]  # type: ignore[arg-type]
    return bool(col["nullable"])


def test_0003_lets_sha256_wait_and_downgrade_fills_the_gaps(db_url: str) -> None:
    migrate(db_url, "0002")
    engine = create_engine(db_url)
    insert_instance = text(
        "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, series_uid, "
        "transfer_syntax_uid, path, size_bytes, sha256, received_at) VALUES (:sid, :uid, '1.2', "
        "'1.3', '1.2.840.10008.1.2.1', :path, 10, :sha, '2026-01-01 00:00:00')"
    )
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO studies (study_uid, state, instance_count, first_received_at, "
                    "last_received_at, updated_at) VALUES ('1.2.3', 'receiving', 2, "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
            sid = c.execute(text("SELECT id FROM studies")).scalar_one()
            c.execute(insert_instance, {"sid": sid, "uid": "1.2.3.1", "path": "/a", "sha": "a" * 64})
        assert not _sha256_nullable(engine)

        migrate(db_url, "0003")
        assert _sha256_nullable(engine)
        with engine.begin() as c:
            c.execute(insert_instance, {"sid": sid, "uid": "1.2.3.2", "path": "/b", "sha": None})

        downgrade(db_url, "0002")
        assert not _sha256_nullable(engine)
        with engine.connect() as c:
            rows = dict(c.execute(text("SELECT sop_instance_uid, sha256 FROM instances")).all())
        assert rows == {"1.2.3.1": "a" * 64, "1.2.3.2": ""}
    finally:
        engine.dispose()
