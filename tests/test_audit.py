"""The audit trail: every staff read or change of patient data, append-only."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from app.audit import AuditEvent
from app.db import Database
from tests.factories import Staff, booking_body, local_instant, next_weekday


async def _events(db: Database, resource_id: str) -> list[AuditEvent]:
    async with db.session(write=False) as session:
        result = await session.execute(
            select(AuditEvent).where(AuditEvent.resource_id == resource_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


async def _book(client: httpx.AsyncClient, staff: Staff, clock: str = "10:00") -> dict[str, str]:
    start = local_instant(next_weekday(70), clock, "America/New_York")
    response = await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, start),
        headers={**staff.scheduler.headers, "User-Agent": "audit-test/1.0"},
    )
    assert response.status_code == 201
    body: dict[str, str] = response.json()
    return body


class TestAuditTrail:
    async def test_booking_read_and_cancel_are_recorded(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        appointment = await _book(client, staff)
        await client.get(
            f"/api/v1/appointments/{appointment['id']}", headers=staff.clinician.headers
        )
        await client.post(
            f"/api/v1/appointments/{appointment['id']}/cancel", headers=staff.admin.headers
        )
        events = await _events(db, appointment["id"])
        assert [(e.action, e.actor_role, e.outcome) for e in events] == [
            ("appointment.create", "scheduler", "success"),
            ("appointment.read", "clinician", "success"),
            ("appointment.cancel", "admin", "success"),
        ]
        first = events[0]
        assert first.actor_id == staff.scheduler.id
        assert first.resource_type == "appointment"
        assert first.ip == "127.0.0.1"
        assert first.user_agent == "audit-test/1.0"
        assert first.request_id
        assert first.at is not None

    async def test_denied_read_is_recorded_with_its_outcome(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        appointment = await _book(client, staff, "10:20")
        response = await client.get(
            f"/api/v1/appointments/{appointment['id']}", headers=staff.other_clinician.headers
        )
        assert response.status_code == 404
        events = await _events(db, appointment["id"])
        assert (events[-1].action, events[-1].actor_id, events[-1].outcome) == (
            "appointment.read",
            staff.other_clinician.id,
            "not_found",
        )

    async def test_failed_change_is_recorded_and_rolled_back(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        appointment = await _book(client, staff, "10:40")
        url = f"/api/v1/appointments/{appointment['id']}/cancel"
        await client.post(url, headers=staff.scheduler.headers)
        again = await client.post(url, headers=staff.scheduler.headers)
        assert again.status_code == 409
        outcomes = [e.outcome for e in await _events(db, appointment["id"])]
        assert outcomes[-2:] == ["success", "invalid_transition"]

    async def test_list_reads_record_which_records(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        appointment = await _book(client, staff, "11:00")
        await client.get("/api/v1/appointments", headers=staff.clinician.headers)
        async with db.session(write=False) as session:
            event = (
                await session.execute(
                    select(AuditEvent)
                    .where(
                        AuditEvent.action == "appointment.list",
                        AuditEvent.actor_id == staff.clinician.id,
                    )
                    .order_by(AuditEvent.id.desc())
                    .limit(1)
                )
            ).scalar_one()
        assert event.details is not None
        assert appointment["id"] in event.details["ids"]

    @pytest.mark.parametrize("statement", ["update", "delete"])
    async def test_rows_cannot_be_changed_or_removed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, statement: str
    ) -> None:
        appointment = await _book(client, staff, "11:20")
        query = (
            update(AuditEvent).values(outcome="forged")
            if statement == "update"
            else delete(AuditEvent)
        ).where(AuditEvent.resource_id == appointment["id"])
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.session(write=True) as session:
                await session.execute(query)
        assert [e.outcome for e in await _events(db, appointment["id"])] == ["success"]

    async def test_emptying_the_table_is_refused(self, db: Database) -> None:
        # SQLite has no TRUNCATE; its whole-table DELETE (the "truncate optimization") is the same.
        sql = "DELETE FROM audit_events" if db.is_sqlite else "TRUNCATE audit_events"
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.session(write=True) as session:
                await session.execute(text(sql))

    async def test_patient_visit_reads_are_not_staff_events(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        appointment = await _book(client, staff, "11:40")
        token = appointment["visit_url"].rsplit("/", 1)[1]
        await client.get(f"/api/v1/visits/{token}")
        assert [e.action for e in await _events(db, appointment["id"])] == ["appointment.create"]
        assert uuid.UUID(appointment["id"])
