"""A clinician's bookings version, raised by the database on every booking change.

Slot listings are cached per clinician and keyed by (availability updated_at, bookings_version):
the version comes back with the availability in the listing's one query, and triggers keep it
exact whoever writes the appointment (any process, any tool).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_TRIGGER = """
CREATE TRIGGER appointments_bump_version_{name} AFTER {event} ON appointments
BEGIN
    UPDATE availabilities SET bookings_version = bookings_version + 1
    WHERE clinician_id IN ({clinicians});
END
"""


def upgrade() -> None:
    op.add_column(
        "availabilities",
        sa.Column("bookings_version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION televisit_bump_bookings_version() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE availabilities SET bookings_version = bookings_version + 1
                WHERE clinician_id = NEW.clinician_id
                   OR (TG_OP = 'UPDATE' AND clinician_id = OLD.clinician_id);
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            "CREATE TRIGGER appointments_bump_version AFTER INSERT OR UPDATE OF "
            "clinician_id, start_at, end_at, status ON appointments "
            "FOR EACH ROW EXECUTE FUNCTION televisit_bump_bookings_version()"
        )
    else:
        op.execute(
            _SQLITE_TRIGGER.format(name="insert", event="INSERT", clinicians="NEW.clinician_id")
        )
        op.execute(
            _SQLITE_TRIGGER.format(
                name="update",
                event="UPDATE OF clinician_id, start_at, end_at, status",
                clinicians="NEW.clinician_id, OLD.clinician_id",
            )
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER appointments_bump_version ON appointments")
        op.execute("DROP FUNCTION televisit_bump_bookings_version()")
    else:
        op.execute("DROP TRIGGER appointments_bump_version_insert")
        op.execute("DROP TRIGGER appointments_bump_version_update")
    op.execute("ALTER TABLE availabilities DROP COLUMN bookings_version")
