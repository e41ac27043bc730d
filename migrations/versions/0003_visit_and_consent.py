"""The visit: check-in and call times on appointments; consent records, append-only and chained.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64
NEW_COLUMNS = [
    ("checked_in_at", sa.DateTime(timezone=True)),
    ("call_started_at", sa.DateTime(timezone=True)),
    ("call_ended_at", sa.DateTime(timezone=True)),
    ("end_reason", sa.String(length=32)),
]


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    # Plain ALTER TABLE, never a batch copy: copying `appointments` on SQLite would drop its
    # triggers (the overlap check and the bookings version).
    for name, kind in NEW_COLUMNS:
        op.add_column("appointments", sa.Column(name, kind, nullable=True))

    op.create_table(
        "consent_records",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("participant", sa.String(length=32), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("scopes", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", _timestamp(), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint(
            "decision IN ('granted', 'declined', 'withdrawn')",
            name=op.f("ck_consent_records_decision"),
        ),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["appointments.id"],
            name=op.f("fk_consent_records_appointment_id_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["version"],
            ["consent_texts.version"],
            name=op.f("fk_consent_records_version_consent_texts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
        sa.UniqueConstraint("seq", name=op.f("uq_consent_records_seq")),
    )
    op.create_index("ix_consent_records_appointment", "consent_records", ["appointment_id", "seq"])
    chain = op.create_table(
        "consent_chain",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_consent_chain_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_chain")),
    )
    op.bulk_insert(chain, [{"id": 1, "seq": 0, "hash": GENESIS}])

    if dialect == "postgresql":
        # televisit_append_only() comes from revision 0001.
        op.execute(
            "CREATE TRIGGER consent_records_append_only BEFORE UPDATE OR DELETE ON consent_records "
            "FOR EACH ROW EXECUTE FUNCTION televisit_append_only()"
        )
        op.execute(
            "CREATE TRIGGER consent_records_no_truncate BEFORE TRUNCATE ON consent_records "
            "FOR EACH STATEMENT EXECUTE FUNCTION televisit_append_only()"
        )
        # Texts once published are what records point at: immutable too.
        op.execute(
            "CREATE TRIGGER consent_texts_append_only BEFORE UPDATE OR DELETE ON consent_texts "
            "FOR EACH ROW EXECUTE FUNCTION televisit_append_only()"
        )
    else:
        for table in ("consent_records", "consent_texts"):
            for event in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{event.lower()} BEFORE {event} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, 'table {table} is append-only'); END"
                )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER consent_texts_append_only ON consent_texts")
    else:
        op.execute("DROP TRIGGER consent_texts_no_update")
        op.execute("DROP TRIGGER consent_texts_no_delete")
    op.drop_table("consent_chain")
    op.drop_index("ix_consent_records_appointment", table_name="consent_records")
    op.drop_table("consent_records")
    for name, _kind in reversed(NEW_COLUMNS):
        # SQLite 3.35+ drops a column in place, keeping the table's triggers.
        op.execute(f"ALTER TABLE appointments DROP COLUMN {name}")
