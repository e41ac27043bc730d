"""Presence per connection (the socket that is the patient's presence) and the serving processes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    op.add_column(
        "appointments", sa.Column("patient_connection", sa.String(length=32), nullable=True)
    )
    op.create_index(op.f("ix_appointments_patient_process"), "appointments", ["patient_process"])
    op.create_table(
        "server_processes",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("fanout", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_processes")),
    )
    op.create_index(op.f("ix_server_processes_heartbeat_at"), "server_processes", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_server_processes_heartbeat_at"), table_name="server_processes")
    op.drop_table("server_processes")
    op.drop_index(op.f("ix_appointments_patient_process"), table_name="appointments")
    op.execute("ALTER TABLE appointments DROP COLUMN patient_connection")
