"""Where a patient's socket is (process, or a deadline to come back) and a call's relay host.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_COLUMNS = [
    ("patient_presence", sa.String(length=16)),
    ("patient_process", sa.String(length=32)),
    ("presence_deadline", sa.DateTime(timezone=True)),
    ("call_host", sa.String(length=32)),
]
CHECK = "patient_presence IS NULL OR patient_presence IN ('connected', 'reconnecting')"


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    for name, kind in NEW_COLUMNS:
        op.add_column("appointments", sa.Column(name, kind, nullable=True))
    op.create_index(
        op.f("ix_appointments_presence_deadline"), "appointments", ["presence_deadline"]
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_check_constraint(op.f("ck_appointments_presence"), "appointments", CHECK)
    else:
        # SQLite cannot add a constraint to a table; these triggers check the same.
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER appointments_presence_{event.lower()} BEFORE {event} "
                f"ON appointments WHEN NOT ({CHECK.replace('patient_presence', 'NEW.patient_presence')}) "
                "BEGIN SELECT RAISE(ABORT, 'ck_appointments_presence'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_appointments_presence"), "appointments", type_="check")
    else:
        op.execute("DROP TRIGGER appointments_presence_insert")
        op.execute("DROP TRIGGER appointments_presence_update")
    op.drop_index(op.f("ix_appointments_presence_deadline"), table_name="appointments")
    for name, _kind in reversed(NEW_COLUMNS):
        op.execute(f"ALTER TABLE appointments DROP COLUMN {name}")
