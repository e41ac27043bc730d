"""The verdict of the patient's connection test, shown in the clinician's queue.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    op.add_column(
        "appointments", sa.Column("connection_check", sa.String(length=16), nullable=True)
    )


def downgrade() -> None:
    op.execute("ALTER TABLE appointments DROP COLUMN connection_check")
