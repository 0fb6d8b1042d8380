"""storage commitment: one row per result object in a commitment request to a destination

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 14:05:00

A destination with storage commitment on (``DICOMNODE_STORAGE_COMMITMENT``) is asked, after the
C-STORE, to take responsibility for the results (PS3.4 J.3). ``delivery_attempts`` says an object
was delivered; ``commitments`` says whether the destination committed to it (``committed_at``) or
not (``failed_reason``: its report's failure reason, or no report in time), for ``dicomnode audit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "commitments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=128), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_commitments_analysis_id"), "commitments", ["analysis_id"])
    op.create_index(op.f("ix_commitments_transaction_uid"), "commitments", ["transaction_uid"])


def downgrade() -> None:
    op.drop_index(op.f("ix_commitments_transaction_uid"), table_name="commitments")
    op.drop_index(op.f("ix_commitments_analysis_id"), table_name="commitments")
    op.drop_table("commitments")
