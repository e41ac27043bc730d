"""The patient's standing consent on the appointment row, checked by transitions and the relay.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_records = sa.table(
    "consent_records",
    sa.column("appointment_id", sa.Uuid()),
    sa.column("seq", sa.BigInteger()),
    sa.column("participant", sa.String()),
    sa.column("decision", sa.String()),
    sa.column("scopes", sa.String()),
)
_appointments = sa.table(
    "appointments",
    sa.column("id", sa.Uuid()),
    sa.column("patient_consent", sa.String()),
    sa.column("consent_seq", sa.BigInteger()),
)


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the triggers on SQLite).
    op.add_column(
        "appointments",
        sa.Column("patient_consent", sa.String(length=64), server_default="", nullable=False),
    )
    op.add_column(
        "appointments",
        sa.Column("consent_seq", sa.BigInteger(), server_default="0", nullable=False),
    )
    # What the records already decided: for each scope the patient's latest decision stands.
    bind = op.get_bind()
    standing: dict[object, tuple[set[str], int]] = {}
    rows = bind.execute(sa.select(_records).order_by(_records.c.seq))
    for appointment_id, seq, participant, decision, scopes in rows:
        granted, _ = standing.get(appointment_id, (set(), 0))
        if participant == "patient":
            for scope in scopes.split():
                if decision == "granted":
                    granted.add(scope)
                else:
                    granted.discard(scope)
        standing[appointment_id] = (granted, seq)
    for appointment_id, (granted, seq) in standing.items():
        bind.execute(
            sa.update(_appointments)
            .where(_appointments.c.id == appointment_id)
            .values(patient_consent=" ".join(sorted(granted)), consent_seq=seq)
        )


def downgrade() -> None:
    op.execute("ALTER TABLE appointments DROP COLUMN consent_seq")
    op.execute("ALTER TABLE appointments DROP COLUMN patient_consent")
