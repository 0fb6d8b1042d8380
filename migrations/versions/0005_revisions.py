"""retention: when a study's instances, an instance's file and an analysis's results were purged

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 13:30:00

``dicomnode purge`` and the schedule in ``serve`` (:mod:`dicomnode.ops.purge`) delete received
instances some days after delivery and result files some days after they were built; the rows
stay for the audit trail and say when their files went (``purged_at``, ``results_purged_at``).
``instances.missing_at`` is set when the start-up re-scan first finds a row's file gone, so the
re-scan logs it once and then skips it, like a purged row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("missing_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("analyses") as batch:
        batch.add_column(sa.Column("results_purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_studies_purged_at", "studies", ["purged_at"])


def downgrade() -> None:
    op.drop_index("ix_studies_purged_at", table_name="studies")
    with op.batch_alter_table("analyses") as batch:
        batch.drop_column("results_purged_at")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("missing_at")
        batch.drop_column("purged_at")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("purged_at")
