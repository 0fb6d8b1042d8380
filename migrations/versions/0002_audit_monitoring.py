"""ground truth table; indexes for audit, monitoring and the /metrics scrape

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:00:00

The indexes keep the questions of ``dicomnode audit`` and ``dicomnode monitor`` and the SQL behind
``/metrics`` answered from index ranges rather than table scans at a million studies
(``bench/audit_queries.py`` times each one).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, index name, columns)
INDEXES: tuple[tuple[str, str, list[str]], ...] = (
    ("studies", "ix_studies_accession_number", ["accession_number"]),
    ("studies", "ix_studies_calling_ae_first_received_at", ["calling_ae", "first_received_at"]),
    ("studies", "ix_studies_state_first_received_at", ["state", "first_received_at"]),
    ("analyses", "ix_analyses_study_id_id", ["study_id", "id"]),
    ("analyses", "ix_analyses_finished_at", ["finished_at"]),
    ("analyses", "ix_analyses_model_version_finished_at", ["model_version", "finished_at"]),
    ("delivery_attempts", "ix_delivery_attempts_success_attempted_at", ["success", "attempted_at"]),
    ("events", "ix_events_kind_at", ["kind", "at"]),
)


def upgrade() -> None:
    op.create_table(
        "ground_truth",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.Boolean(), nullable=False),
        sa.Column("reader", sa.String(length=64), nullable=True),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ground_truth_study_id", "ground_truth", ["study_id"], unique=False)
    # plain CREATE INDEX (no batch copy): SQLite builds these in place
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for table, name, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    op.drop_index("ix_ground_truth_study_id", table_name="ground_truth")
    op.drop_table("ground_truth")
