"""Guests of a visit: at most two per appointment (the database decides), their links, their
consent."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from app import participants
from app.db import Database
from scheduling import consent, guests, service, visits
from scheduling.models import Appointment, VisitGuest
from tests.factories import Staff, booking_body, local_instant, next_weekday

NY = "America/New_York"
HOURS_AFTER = 24


def slot(clock: str = "10:00", days_ahead: int = 7) -> dt.datetime:
    return local_instant(next_weekday(days_ahead), clock, NY)


async def booked(client: httpx.AsyncClient, staff: Staff, clock: str = "10:00") -> dict[str, Any]:
    response = await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, slot(clock)),
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def add_guest(
    db: Database, app: FastAPI, staff: Staff, appointment_id: str, role: str = "interpreter"
) -> tuple[VisitGuest, str]:
    """A guest added through the service; their token, derived as the API derives it."""
    async with db.session(write=True) as session:
        appointment = await session.get(Appointment, uuid.UUID(appointment_id))
        assert appointment is not None
        guest = await guests.add(
            session,
            appointment=appointment,
            role=role,
            name="Ina Terpreter",
            email=None,
            phone=None,
            actor_id=staff.scheduler.id,
            link_key=app.state.link_key,
            now=now(),
        )
    return guest, guests.token_of(guest, app.state.link_key)


class TestParticipantKeys:
    def test_guest_keys_round_trip(self) -> None:
        guest_id = uuid.uuid4()
        key = participants.guest_key("interpreter", guest_id)
        assert key == f"interpreter:{guest_id}"
        assert participants.parse_key(key) == ("interpreter", guest_id)
        assert participants.parse_key("patient") == ("patient", None)
        assert participants.is_guest(key)
        assert not participants.is_guest("clinician")
        assert not participants.is_guest("doctor:" + str(guest_id))

    @pytest.mark.parametrize("key", ["", "interpreter", "interpreter:", "x:1", "caregiver:nope"])
    def test_bad_keys_are_refused(self, key: str) -> None:
        with pytest.raises(ValueError, match=r"."):
            participants.parse_key(key)


class TestGuestLimit:
    async def test_a_third_active_guest_is_refused_and_a_removal_frees_a_slot(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        first, _ = await add_guest(db, app, staff, appointment["id"])
        second, _ = await add_guest(db, app, staff, appointment["id"], role="caregiver")
        assert {first.slot, second.slot} == {1, 2}
        with pytest.raises(guests.ParticipantLimit):
            await add_guest(db, app, staff, appointment["id"])
        async with db.session(write=True) as session:
            await guests.remove(
                session, appointment_id=first.appointment_id, guest_id=first.id, now=now()
            )
        third, _ = await add_guest(db, app, staff, appointment["id"], role="clinician")
        assert third.slot == first.slot
        async with db.session(write=False) as session:
            active = await guests.list_guests(session, first.appointment_id)
            every = await guests.list_guests(session, first.appointment_id, include_removed=True)
        assert [g.id for g in active] == [second.id, third.id]
        assert len(every) == 3

    async def test_the_database_refuses_a_third_active_guest(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        """Whatever the service reads: a row in a taken slot of the same appointment fails."""
        appointment = await booked(client, staff)
        taken, _ = await add_guest(db, app, staff, appointment["id"])
        row = {
            "id": uuid.uuid4(),
            "appointment_id": taken.appointment_id,
            "role": "caregiver",
            "name": "Cary",
            "link_salt": visits.new_salt(),
            "link_hash": uuid.uuid4().hex,
            "slot": taken.slot,
            "status": "invited",
            "consent": "",
            "consent_seq": 0,
            "created_by_id": staff.scheduler.id,
            "created_at": now(),
        }
        with pytest.raises(IntegrityError):
            async with db.session(write=True) as session:
                await session.execute(insert(VisitGuest), [row])
        with pytest.raises(IntegrityError):  # no third slot either
            async with db.session(write=True) as session:
                await session.execute(insert(VisitGuest), [{**row, "slot": 3}])
        with pytest.raises(IntegrityError):  # nor an unknown role
            async with db.session(write=True) as session:
                await session.execute(insert(VisitGuest), [{**row, "slot": 2, "role": "uncle"}])


class TestGuestLinks:
    async def test_a_guest_link_opens_the_visit_as_that_guest_until_removed(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        guest, token = await add_guest(db, app, staff, appointment["id"])
        async with db.session(write=False) as session:
            link = await service.find_link(session, token=token, now=now(), hours_after=HOURS_AFTER)
            assert link.is_guest
            assert link.appointment.id == guest.appointment_id
            assert link.participant == f"interpreter:{guest.id}"
            # The patient's own resolver does not take a guest's link for the patient's.
            with pytest.raises(service.VisitNotFound):
                await service.find_visit(session, token=token, now=now(), hours_after=24)
            patient_token = appointment["visit_url"].rsplit("/", 1)[1]
            patient = await service.find_link(
                session, token=patient_token, now=now(), hours_after=HOURS_AFTER
            )
            assert not patient.is_guest
            assert patient.participant == "patient"
        async with db.session(write=True) as session:
            await guests.remove(
                session, appointment_id=guest.appointment_id, guest_id=guest.id, now=now()
            )
        async with db.session(write=False) as session:
            with pytest.raises(service.VisitClosed):
                await service.find_link(session, token=token, now=now(), hours_after=24)


class TestGuestConsent:
    async def test_a_guest_decision_is_recorded_as_theirs_and_stands_on_their_row(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        guest, _ = await add_guest(db, app, staff, appointment["id"])
        key = guests.key_of(guest)
        async with db.session(write=True) as session:
            text = await consent.current_text(session)
            entry = await consent.record(
                session,
                appointment_id=guest.appointment_id,
                participant=key,
                decision="granted",
                scopes=["video_visit", "recording"],
                version=text.version,
                ip=None,
                user_agent=None,
                now=now(),
            )
        async with db.session(write=False) as session:
            row = await session.scalar(select(VisitGuest).where(VisitGuest.id == guest.id))
            visit = await session.get(Appointment, guest.appointment_id)
            assert row is not None
            assert visit is not None
            assert row.consent == "recording video_visit"
            assert row.consent_seq == entry.seq
            assert visit.patient_consent == ""  # the patient's consent is the patient's alone
            found = await guests.consents_of(session, [guest.appointment_id])
        assert found[guest.appointment_id][key].granted == {"recording", "video_visit"}
