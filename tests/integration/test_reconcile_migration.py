"""Revision 0004 (the reconciler's columns) up and down on real SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from dicomnode.store.db import downgrade, migrate
from dicomnode.store.models import Base

COLUMNS = {"claimed_at", "analysis_attempts", "delivery_due_at"}


def _columns(engine: object) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("studies")}  # type: ignore[arg-type]


def test_0004_adds_the_reconciler_columns_marks_waiting_rounds_due_and_downgrades(db_url: str) -> None:
    migrate(db_url, "0003")
    engine = create_engine(db_url)
    try:
        insert = text(
            "INSERT INTO studies (study_uid, state, state_reason, instance_count, first_received_at, "
            "last_received_at, updated_at) VALUES (:uid, :state, :reason, 1, '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
        )
        with engine.begin() as c:
            c.execute(
                insert, {"uid": "1.2.3", "state": "analysed", "reason": "delivery retry scheduled in 60 s"}
            )
            c.execute(insert, {"uid": "1.2.4", "state": "delivered", "reason": None})
        assert not COLUMNS & _columns(engine)

        migrate(db_url, "0004")
        assert COLUMNS <= _columns(engine)
        with engine.connect() as c:
            rows = {
                uid: (attempts, due is not None)
                for uid, attempts, due in c.execute(
                    text("SELECT study_uid, analysis_attempts, delivery_due_at FROM studies")
                )
            }
        # the round a previous version scheduled is due now: the reconciler runs it
        assert rows == {"1.2.3": (0, True), "1.2.4": (0, False)}

        downgrade(db_url, "0003")
        assert not COLUMNS & _columns(engine)
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM studies")).scalar_one() == 2
        migrate(db_url)  # and up again, to head
        assert COLUMNS <= _columns(engine)
        # at head, the models and the migrated schema agree
        with engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
