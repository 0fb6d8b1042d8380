"""urgent-finding notifications: one row per HTTP POST of an urgent analysis to a hook URL

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 16:00:00

With ``DICOMNODE_URGENT_HOOK_URLS`` set, every analysis whose priority is urgent is POSTed to each
URL (:mod:`dicomnode.delivery.hook`). A row says where that notification is (pending with its next
attempt, delivered, failed with the last error) and how many attempts it took; the reconciler reads
the pending ones by ``(state, next_attempt_at)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("analysis_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["analyses.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("analysis_id", "url", name="uq_notifications_analysis_id_url"),
    )
    op.create_index(op.f("ix_notifications_analysis_id"), "notifications", ["analysis_id"])
    op.create_index(op.f("ix_notifications_study_uid"), "notifications", ["study_uid"])
    op.create_index("ix_notifications_state_next_attempt_at", "notifications", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_state_next_attempt_at", table_name="notifications")
    op.drop_index(op.f("ix_notifications_study_uid"), table_name="notifications")
    op.drop_index(op.f("ix_notifications_analysis_id"), table_name="notifications")
    op.drop_table("notifications")
