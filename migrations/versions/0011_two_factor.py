"""Two-factor sign-in: each user's sealed TOTP secret, whether it is enabled, the last step used.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    op.add_column("users", sa.Column("otp_secret", sa.String(length=255), nullable=True))
    op.add_column(
        "users",
        sa.Column("otp_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("users", sa.Column("otp_last_step", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN otp_last_step")
    op.execute("ALTER TABLE users DROP COLUMN otp_enabled")
    op.execute("ALTER TABLE users DROP COLUMN otp_secret")
