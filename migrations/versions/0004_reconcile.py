"""studies: a dispatch stamp, an analysis attempt counter and when the next delivery round is due

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 12:00:00

The node's reconciler (:mod:`dicomnode.receive.reconcile`) picks up studies that were handed on
but never analysed or delivered. ``claimed_at`` is its lease: a study is dispatched again only by
the one conditional UPDATE that moves the stamp on. ``analysis_attempts`` counts analyses started
without finishing, so a study that kills its worker fails instead of looping. ``delivery_due_at``
says when the next delivery round should run, so a round lost with its timer or its broker
message is run again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("analysis_attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("delivery_due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_studies_delivery_due_at", "studies", ["delivery_due_at"])
    # /metrics reads the time to notification by delivery, which now follows the analysis
    op.create_index("ix_analyses_delivered_at", "analyses", ["delivered_at"])
    # studies a previous version left waiting for a scheduled delivery round: due now
    op.execute(
        sa.text(
            "UPDATE studies SET delivery_due_at = updated_at "
            "WHERE state = 'analysed' AND state_reason LIKE 'delivery retry scheduled%'"
        )
    )


def downgrade() -> None:
    op.drop_index("ix_analyses_delivered_at", table_name="analyses")
    op.drop_index("ix_studies_delivery_due_at", table_name="studies")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("delivery_due_at")
        batch.drop_column("analysis_attempts")
        batch.drop_column("claimed_at")
