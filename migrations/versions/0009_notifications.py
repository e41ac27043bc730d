"""The notifications outbox, and the patient's time zone on the appointment.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    op.add_column(
        "appointments", sa.Column("patient_timezone", sa.String(length=64), nullable=True)
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("hours", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('invitation', 'rescheduled', 'cancelled', 'reminder')",
            name=op.f("ck_notifications_kind"),
        ),
        sa.CheckConstraint("channel IN ('email', 'sms')", name=op.f("ck_notifications_channel")),
        sa.CheckConstraint(
            "status IN ('queued', 'claimed', 'sending', 'sent', 'failed', 'cancelled')",
            name=op.f("ck_notifications_status"),
        ),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_notifications_appointment_id_appointments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        # At most one of each notification: the structural half of "at most once".
        sa.UniqueConstraint(
            "appointment_id", "kind", "channel", "hours", "sequence", name="uq_notifications_once"
        ),
    )
    op.create_index(op.f("ix_notifications_appointment_id"), "notifications", ["appointment_id"])
    op.create_index("ix_notifications_due", "notifications", ["status", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_notifications_due", table_name="notifications")
    op.drop_index(op.f("ix_notifications_appointment_id"), table_name="notifications")
    op.drop_table("notifications")
    op.execute("ALTER TABLE appointments DROP COLUMN patient_timezone")
