"""instances.sha256 may be empty until the fingerprint is taken after receipt

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 12:00:00

The SCP no longer hashes an instance before answering the C-STORE (it cost about as much CPU as
receiving it); :mod:`dicomnode.receive.fingerprint` fills the column once the sender has gone quiet.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    # rows still waiting for their fingerprint get an empty one rather than blocking the downgrade
    op.execute(sa.text("UPDATE instances SET sha256 = '' WHERE sha256 IS NULL"))
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=False)
