"""Guests in a visit: their links, slots and standing consent; guests' notifications.

`visit_guests` holds each guest (an interpreter, a caregiver, a colleague) with a link of their
own; a partial unique index over (appointment, slot) of the guests not removed lets the
database refuse a third. Consent records name a guest as `<role>:<id>` (wider column), and
notifications may be a guest's (`participant_id`, kind `guest_invitation`), each guest's kept
unique apart from the patient's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("removed_at IS NULL")
_KINDS = "'invitation', 'rescheduled', 'cancelled', 'reminder'"
_NOTIFICATIONS_ONCE = ("appointment_id", "kind", "channel", "hours", "sequence")


def _sqlite_triggers(table: str) -> list[str]:
    """The CREATE TRIGGER statements of `table`: a batch copy drops them, so they are made again."""
    rows = op.get_bind().execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :table"),
        {"table": table},
    )
    return [row[0] for row in rows]


def _participant_length(length: int) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # varchar(32) to varchar(64) needs no rewrite; no UPDATE trigger fires.
        op.alter_column(
            "consent_records",
            "participant",
            type_=sa.String(length=length),
            existing_nullable=False,
        )
        return
    # SQLite: a batch copy of the table; its append-only triggers are made again after it.
    triggers = _sqlite_triggers("consent_records")
    for name in ("consent_records_no_update", "consent_records_no_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("consent_records", recreate="always") as batch:
        batch.alter_column("participant", type_=sa.String(length=length), existing_nullable=False)
    for sql in triggers:
        op.execute(sql)


def upgrade() -> None:
    op.create_table(
        "visit_guests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("link_salt", sa.LargeBinary(length=32), nullable=False),
        sa.Column("link_hash", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("presence", sa.String(length=16), nullable=True),
        sa.Column("process", sa.String(length=32), nullable=True),
        sa.Column("connection", sa.String(length=32), nullable=True),
        sa.Column("presence_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consent", sa.String(length=64), server_default="", nullable=False),
        sa.Column("consent_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role IN ('interpreter', 'caregiver', 'clinician')", name=op.f("ck_visit_guests_role")
        ),
        sa.CheckConstraint(
            "status IN ('invited', 'waiting', 'in_call', 'left', 'removed')",
            name=op.f("ck_visit_guests_status"),
        ),
        sa.CheckConstraint("slot IN (1, 2)", name=op.f("ck_visit_guests_slot")),
        sa.CheckConstraint(
            "length(name) BETWEEN 1 AND 200", name=op.f("ck_visit_guests_name_length")
        ),
        sa.CheckConstraint(
            "(status = 'removed' AND removed_at IS NOT NULL)"
            " OR (status <> 'removed' AND removed_at IS NULL)",
            name=op.f("ck_visit_guests_removed"),
        ),
        sa.CheckConstraint(
            "presence IS NULL OR presence IN ('connected', 'reconnecting')",
            name=op.f("ck_visit_guests_presence"),
        ),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_visit_guests_appointment_id_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_visit_guests_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visit_guests")),
        sa.UniqueConstraint("link_hash", name=op.f("uq_visit_guests_link_hash")),
    )
    op.create_index(op.f("ix_visit_guests_appointment_id"), "visit_guests", ["appointment_id"])
    op.create_index(op.f("ix_visit_guests_process"), "visit_guests", ["process"])
    # At most two active guests per appointment, whatever requests race.
    op.create_index(
        "uq_visit_guests_active_slot",
        "visit_guests",
        ["appointment_id", "slot"],
        unique=True,
        postgresql_where=_ACTIVE,
        sqlite_where=_ACTIVE,
    )

    _participant_length(64)

    # Notifications: a guest's are theirs (participant_id), unique per guest; the patient's keep
    # the old key. Two partial unique indexes, because NULLs never collide in a unique key.
    with op.batch_alter_table("notifications", recreate="auto") as batch:
        batch.add_column(sa.Column("participant_id", sa.Uuid(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_notifications_participant_id_visit_guests"),
            "visit_guests",
            ["participant_id"],
            ["id"],
        )
        batch.drop_constraint("uq_notifications_once", type_="unique")
        batch.drop_constraint(op.f("ck_notifications_kind"), type_="check")
        batch.create_check_constraint(
            op.f("ck_notifications_kind"), sa.text(f"kind IN ({_KINDS}, 'guest_invitation')")
        )
    op.create_index(
        "uq_notifications_once",
        "notifications",
        list(_NOTIFICATIONS_ONCE),
        unique=True,
        postgresql_where=sa.text("participant_id IS NULL"),
        sqlite_where=sa.text("participant_id IS NULL"),
    )
    op.create_index(
        "uq_notifications_guest_once",
        "notifications",
        ["participant_id", "kind", "channel", "hours", "sequence"],
        unique=True,
        postgresql_where=sa.text("participant_id IS NOT NULL"),
        sqlite_where=sa.text("participant_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE participant_id IS NOT NULL")
    op.drop_index("uq_notifications_guest_once", table_name="notifications")
    op.drop_index("uq_notifications_once", table_name="notifications")
    with op.batch_alter_table("notifications", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_notifications_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_notifications_kind"), sa.text(f"kind IN ({_KINDS})"))
        batch.create_unique_constraint("uq_notifications_once", list(_NOTIFICATIONS_ONCE))
        batch.drop_constraint(
            op.f("fk_notifications_participant_id_visit_guests"), type_="foreignkey"
        )
        batch.drop_column("participant_id")
    _participant_length(32)
    op.drop_index("uq_visit_guests_active_slot", table_name="visit_guests")
    op.drop_index(op.f("ix_visit_guests_process"), table_name="visit_guests")
    op.drop_index(op.f("ix_visit_guests_appointment_id"), table_name="visit_guests")
    op.drop_table("visit_guests")
