"""Users, availability, appointments (never double-booked), consent texts, audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import datetime
import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSENT_V1 = """\
Consent to a video visit

Your clinician will see and hear you over a secure video connection instead of in person. \
Video and sound travel encrypted through this practice's own server and nowhere else. \
A video visit has limits: your clinician cannot examine you physically, and a poor connection \
may interrupt the visit. If that happens, your clinician will call you back or arrange another visit.

The visit is not recorded unless you separately agree to a recording, and you may refuse. \
You may withdraw your consent at any time, during the visit too: the call then ends at once.

In an emergency, do not wait for this visit: call your local emergency number.
"""

_SQLITE_OVERLAP = """
CREATE TRIGGER appointments_no_overlap_{name} BEFORE {event} ON appointments
WHEN NEW.status <> 'cancelled'
BEGIN
    SELECT RAISE(ABORT, 'appointment_overlap')
    WHERE EXISTS (
        SELECT 1 FROM appointments AS a
        WHERE a.clinician_id = NEW.clinician_id
          AND a.id <> NEW.id
          AND a.status <> 'cancelled'
          AND a.start_at < NEW.end_at
          AND a.end_at > NEW.start_at
    );
END
"""


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # Lets a GiST index take uuid equality beside range overlap (trusted since PostgreSQL 13).
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.CheckConstraint(
            "role IN ('admin', 'scheduler', 'clinician')", name=op.f("ck_users_role")
        ),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_users_email_lowercase")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )

    op.create_table(
        "availabilities",
        sa.Column("clinician_id", sa.Uuid(), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.Column("min_notice_minutes", sa.Integer(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=True),
        sa.Column("weekly", sa.JSON(), nullable=False),
        sa.Column("exceptions", sa.JSON(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.CheckConstraint(
            "horizon_days IS NULL OR horizon_days >= 1", name=op.f("ck_availabilities_horizon")
        ),
        sa.CheckConstraint("min_notice_minutes >= 0", name=op.f("ck_availabilities_min_notice")),
        sa.CheckConstraint(
            "slot_minutes BETWEEN 5 AND 480", name=op.f("ck_availabilities_slot_minutes")
        ),
        sa.ForeignKeyConstraint(
            ["clinician_id"],
            ["users.id"],
            name=op.f("fk_availabilities_clinician_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("clinician_id", name=op.f("pk_availabilities")),
    )

    overlap = (
        [
            postgresql.ExcludeConstraint(
                (sa.text("clinician_id"), "="),
                (sa.text("tstzrange(start_at, end_at, '[)')"), "&&"),
                where=sa.text("status <> 'cancelled'"),
                using="gist",
                name="ex_appointments_no_overlap",
            )
        ]
        if dialect == "postgresql"
        else []
    )
    op.create_table(
        "appointments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("clinician_id", sa.Uuid(), nullable=False),
        sa.Column("start_at", _timestamp(), nullable=False),
        sa.Column("end_at", _timestamp(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("patient_name", sa.String(length=200), nullable=False),
        sa.Column("patient_email", sa.String(length=320), nullable=True),
        sa.Column("patient_phone", sa.String(length=16), nullable=True),
        sa.Column("patient_birth_date", sa.Date(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("link_salt", sa.LargeBinary(length=32), nullable=False),
        sa.Column("link_hash", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("cancelled_at", _timestamp(), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        *overlap,
        sa.CheckConstraint(
            "status IN ('booked', 'waiting', 'in_call', 'completed', 'cancelled', 'no_show')",
            name=op.f("ck_appointments_status"),
        ),
        sa.CheckConstraint("end_at > start_at", name=op.f("ck_appointments_positive_duration")),
        sa.ForeignKeyConstraint(
            ["clinician_id"], ["users.id"], name=op.f("fk_appointments_clinician_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_appointments_created_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
        sa.UniqueConstraint("created_by_id", "idempotency_key", name="uq_appointments_idempotency"),
        sa.UniqueConstraint("link_hash", name=op.f("uq_appointments_link_hash")),
    )
    op.create_index("ix_appointments_clinician_start", "appointments", ["clinician_id", "start_at"])
    if dialect == "sqlite":
        op.execute(_SQLITE_OVERLAP.format(name="insert", event="INSERT"))
        op.execute(
            _SQLITE_OVERLAP.format(
                name="update", event="UPDATE OF clinician_id, start_at, end_at, status"
            )
        )

    consent_texts = op.create_table(
        "consent_texts",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("published_at", _timestamp(), nullable=False),
        sa.Column("published_by_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["published_by_id"], ["users.id"], name=op.f("fk_consent_texts_published_by_id_users")
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_consent_texts")),
    )
    op.bulk_insert(
        consent_texts,
        [
            {
                "version": 1,
                "text": CONSENT_V1,
                "sha256": hashlib.sha256(CONSENT_V1.encode()).hexdigest(),
                "published_at": datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC),
                "published_by_id": None,
            }
        ],
    )

    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", _timestamp(), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("actor_role", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=32), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_resource_id"), "audit_events", ["resource_id"])
    _append_only("audit_events", dialect)


def _append_only(table: str, dialect: str) -> None:
    """Refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) of a table's rows."""
    if dialect == "postgresql":
        op.execute(
            """
            CREATE OR REPLACE FUNCTION televisit_append_only() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END
            $$
            """
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION televisit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION televisit_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only'); END"
            )


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("consent_texts")
    op.drop_table("appointments")
    op.drop_table("availabilities")
    op.drop_table("users")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS televisit_append_only()")
