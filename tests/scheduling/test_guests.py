"""Guests of a visit: at most two per appointment (the database decides), their links, their
consent."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app import participants
from app.audit import AuditEvent
from app.db import Database
from scheduling import consent, guests, service, visits
from scheduling.models import Appointment, GuestStatus, VisitGuest
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


async def add_guest_in(
    session: AsyncSession,
    app: FastAPI,
    staff: Staff,
    appointment_id: str,
    role: str = "interpreter",
) -> tuple[VisitGuest, str]:
    """A guest added through the service; their token, derived as the API derives it."""
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


async def add_guest(
    db: Database, app: FastAPI, staff: Staff, appointment_id: str, role: str = "interpreter"
) -> tuple[VisitGuest, str]:
    async with db.session(write=True) as session:
        return await add_guest_in(session, app, staff, appointment_id, role)


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


class TestGuestStatus:
    async def test_admit_only_a_waiting_guest_and_audit_it(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        guest, _ = await add_guest(db, app, staff, appointment["id"])
        async with db.session(write=True) as session:
            assert not await guests.admit(session, guest.id, now=now())  # invited, not waiting
            assert await guests.set_status(
                session, guest.id, to=GuestStatus.WAITING, among=[GuestStatus.INVITED.value]
            )
            assert await guests.admit(session, guest.id, now=now())
            assert not await guests.admit(session, guest.id, now=now())  # in the call already
            await guests.record_admitted(
                session,
                actor_id=staff.clinician.id,
                actor_role="clinician",
                appointment_id=guest.appointment_id,
                guest_id=guest.id,
                role=guest.role,
            )
        async with db.session(write=False) as session:
            row = await session.get(VisitGuest, guest.id)
            assert row is not None
            assert row.status == "in_call"
            assert row.admitted_at is not None
            listed = await guests.of_appointments(session, [guest.appointment_id])
        assert [g.id for g in listed[guest.appointment_id]] == [guest.id]
        [event] = await audit_of(db, str(guest.id))
        assert (event.action, event.actor_id) == ("guest.admit", staff.clinician.id)
        assert event.details == {"appointment_id": appointment["id"], "role": "interpreter"}
        # A removed guest is admitted no more.
        async with db.session(write=True) as session:
            await guests.remove(
                session, appointment_id=guest.appointment_id, guest_id=guest.id, now=now()
            )
            assert not await guests.set_status(
                session, guest.id, to=GuestStatus.WAITING, among=[GuestStatus.REMOVED.value]
            )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
class TestRacingAdds:
    """On PostgreSQL, two transactions adding at once: the second waits on the first's slot in
    the unique index, then (its savepoint undone) takes the other slot or none. Not on SQLite,
    whose write transactions are serial: there is no race to have."""

    async def _racing(
        self, db: Database, app: FastAPI, staff: Staff, appointment_id: str
    ) -> tuple[VisitGuest, VisitGuest | guests.ParticipantLimit]:
        second_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def second() -> VisitGuest | guests.ParticipantLimit:
            async with db.session(write=True) as session:
                second_pid.set_result(await session.scalar(text("SELECT pg_backend_pid()")))
                try:
                    return (await add_guest_in(session, app, staff, appointment_id))[0]
                except guests.ParticipantLimit as exc:
                    return exc

        async with db.session(write=True) as session:
            first, _ = await add_guest_in(session, app, staff, appointment_id)
            racer = asyncio.create_task(second())
            pid = await second_pid
            # Until the second waits for this transaction (or, were the index missing, is done).
            while not racer.done():
                async with db.session(write=False) as probe:
                    waiting = await probe.scalar(
                        text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"),
                        {"pid": pid},
                    )
                if waiting:
                    break
                await asyncio.sleep(0.01)
        return first, await racer

    async def test_a_racing_add_takes_the_other_slot(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        first, second = await self._racing(db, app, staff, appointment["id"])
        assert isinstance(second, VisitGuest)
        assert (first.slot, second.slot) == (1, 2)

    async def test_of_two_racing_for_the_last_slot_exactly_one_wins(
        self, client: httpx.AsyncClient, app: FastAPI, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        await add_guest(db, app, staff, appointment["id"])
        first, second = await self._racing(db, app, staff, appointment["id"])
        assert first.slot == 2
        assert isinstance(second, guests.ParticipantLimit)
        async with db.session(write=False) as session:
            active = await guests.list_guests(session, uuid.UUID(appointment["id"]))
        assert len(active) == participants.MAX_GUESTS


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
            found = await consent.of_calls(session, [guest.appointment_id])
        assert found[guest.appointment_id].guests[key].granted == {"recording", "video_visit"}


# Over HTTP -----------------------------------------------------------------------------------

INTERPRETER = {"role": "interpreter", "name": "Ina Terpreter"}


def participants_path(appointment_id: str) -> str:
    return f"/api/v1/appointments/{appointment_id}/participants"


def token_in(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def invite(
    client: httpx.AsyncClient, headers: dict[str, str], appointment_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        participants_path(appointment_id), json={**INTERPRETER, **body}, headers=headers
    )


async def invited(
    client: httpx.AsyncClient, staff: Staff
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A booked appointment and an interpreter the scheduler invited to it: the appointment, the
    guest (as the API answered) and the guest's token."""
    appointment = await booked(client, staff)
    response = await invite(client, staff.scheduler.headers, appointment["id"])
    assert response.status_code == 201, response.text
    guest: dict[str, Any] = response.json()
    return appointment, guest, token_in(guest["visit_url"])


async def remove(
    client: httpx.AsyncClient, headers: dict[str, str], appointment: dict[str, Any], guest_id: str
) -> httpx.Response:
    path = f"{participants_path(appointment['id'])}/{guest_id}"
    return await client.delete(path, headers=headers)


async def audit_of(db: Database, resource_id: str) -> list[AuditEvent]:
    async with db.session(write=False) as session:
        result = await session.execute(
            select(AuditEvent).where(AuditEvent.resource_id == resource_id).order_by(AuditEvent.id)
        )
        return list(result.scalars())


class TestParticipantsApi:
    async def test_add_list_and_remove(
        self, client: httpx.AsyncClient, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        headers = staff.scheduler.headers
        response = await invite(
            client, headers, appointment["id"], email="ina@example.org", phone="+14155550123"
        )
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        guest = response.json()
        assert guest["role"] == "interpreter"
        assert guest["name"] == "Ina Terpreter"
        assert guest["status"] == "invited"
        assert guest["appointment_id"] == appointment["id"]
        assert guest["visit_url"].startswith("http://testserver/visit/")
        assert guest["visit_url"] != appointment["visit_url"]
        # Never stored in clear: the row keeps the salt and the token's hash only.
        token = token_in(guest["visit_url"])
        async with db.session(write=False) as session:
            row = await session.get(VisitGuest, uuid.UUID(guest["id"]))
        assert row is not None
        assert row.link_hash == visits.token_hash(token)
        assert token.encode() not in row.link_salt

        listed = await client.get(participants_path(appointment["id"]), headers=headers)
        assert listed.status_code == 200
        assert listed.json()["items"] == [guest]

        removed = await remove(client, headers, appointment, guest["id"])
        assert removed.status_code == 204
        listed = await client.get(participants_path(appointment["id"]), headers=headers)
        assert listed.json()["items"] == []
        every = await client.get(
            participants_path(appointment["id"]),
            params={"include_removed": "true"},
            headers=headers,
        )
        [gone] = every.json()["items"]
        assert gone["status"] == "removed"
        assert gone["visit_url"] is None
        again = await remove(client, headers, appointment, guest["id"])
        assert again.status_code == 404
        # Audited: added and removed, with the appointment and role, never the name.
        events = await audit_of(db, guest["id"])
        assert [(e.action, e.outcome) for e in events] == [
            ("guest.add", "success"),
            ("guest.remove", "success"),
            ("guest.remove", "not_found"),
        ]
        assert events[0].details == {"appointment_id": appointment["id"], "role": "interpreter"}
        assert "Ina" not in str([e.details for e in events])

    async def test_the_clinician_and_admins_may_others_may_not(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        path = participants_path(appointment["id"])
        by_clinician = await invite(client, staff.clinician.headers, appointment["id"])
        assert by_clinician.status_code == 201, by_clinician.text
        by_admin = await invite(client, staff.admin.headers, appointment["id"], role="caregiver")
        assert by_admin.status_code == 201, by_admin.text
        guest_id = by_clinician.json()["id"]
        other = staff.other_clinician.headers
        # Another clinician's appointment is not theirs to know of: 404, never 403.
        for response in (
            await invite(client, other, appointment["id"]),
            await client.get(path, headers=other),
            await client.delete(f"{path}/{guest_id}", headers=other),
            await invite(client, staff.admin.headers, str(uuid.uuid4())),
            await client.delete(f"{path}/{uuid.uuid4()}", headers=staff.admin.headers),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "not_found"
        for response in (
            await client.post(path, json=INTERPRETER),
            await client.get(path),
            await client.delete(f"{path}/{guest_id}"),
        ):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "not_authenticated"
        # A guest of one appointment cannot be removed through another.
        elsewhere = await booked(client, staff, "11:00")
        response = await client.delete(
            f"{participants_path(elsewhere['id'])}/{guest_id}", headers=staff.admin.headers
        )
        assert response.status_code == 404
        listed = await client.get(path, headers=staff.clinician.headers)
        assert [g["role"] for g in listed.json()["items"]] == ["interpreter", "caregiver"]

    async def test_a_third_guest_is_refused(self, client: httpx.AsyncClient, staff: Staff) -> None:
        appointment = await booked(client, staff)
        headers = staff.scheduler.headers
        for role in ("interpreter", "caregiver"):
            assert (await invite(client, headers, appointment["id"], role=role)).status_code == 201
        third = await invite(client, headers, appointment["id"], role="clinician")
        assert third.status_code == 409
        assert third.json()["error"]["code"] == "participant_limit"

    @pytest.mark.parametrize(
        "body",
        [
            {"role": "uncle"},
            {"role": "patient"},
            {"role": None},
            {"name": ""},
            {"name": "   "},
            {"name": "x" * 201},
            {"name": "Nul\u0000Name"},
            {"email": "not-an-email"},
            {"phone": "0415 555 0123"},
            {"phone": "+0123456789"},
            {"extra": "field"},
        ],
    )
    async def test_bad_bodies_are_422(
        self, client: httpx.AsyncClient, staff: Staff, body: dict[str, Any]
    ) -> None:
        appointment = await booked(client, staff)
        response = await invite(client, staff.scheduler.headers, appointment["id"], **body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"

    async def test_bad_queries_and_bodies_are_422(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        path, headers = participants_path(appointment["id"]), staff.scheduler.headers
        # A malformed id in the path names nothing: 404, as an unknown one (app.errors).
        for response in (
            await client.delete(f"{path}/not-a-uuid", headers=headers),
            await client.get("/api/v1/appointments/nope/participants", headers=headers),
        ):
            assert response.status_code == 404, response.text
        for response in (
            await client.get(path, params={"include_removed": "perhaps"}, headers=headers),
            await client.post(path, content=b"{not json", headers=headers),
            await client.post(path, json=["interpreter"], headers=headers),
        ):
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "validation_error"

    async def test_no_guests_once_the_visit_is_cancelled(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment, _, token = await invited(client, staff)
        headers = staff.scheduler.headers
        cancelled = await client.post(
            f"/api/v1/appointments/{appointment['id']}/cancel", json={}, headers=headers
        )
        assert cancelled.status_code == 200
        response = await invite(client, headers, appointment["id"], role="caregiver")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "visit_closed"
        # The guest's link closes with the visit.
        visit = await client.get(f"/api/v1/visits/{token}")
        assert visit.status_code == 410
        assert visit.json()["error"]["code"] == "visit_closed"

    async def test_concurrent_adds_fill_the_two_slots_and_no_more(
        self, client: httpx.AsyncClient, db: Database, staff: Staff
    ) -> None:
        appointment = await booked(client, staff)
        headers = staff.scheduler.headers
        codes = await asyncio.gather(
            *(invite(client, headers, appointment["id"]) for _ in range(6))
        )
        assert sorted(r.status_code for r in codes) == [201, 201, 409, 409, 409, 409]
        async with db.session(write=False) as session:
            active = await guests.list_guests(session, uuid.UUID(appointment["id"]))
        assert sorted(g.slot for g in active) == [1, 2]


class TestGuestVisit:
    async def test_the_guest_page_names_the_guest_and_their_role(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment, guest, token = await invited(client, staff)
        response = await client.get(f"/api/v1/visits/{token}")
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        visit = response.json()
        assert visit["participant"] == {
            "id": guest["id"],
            "role": "interpreter",
            "name": "Ina Terpreter",
        }
        assert visit["appointment_id"] == appointment["id"]
        assert visit["consented"] is False
        assert visit["birth_date_check"] is False
        patient = (await client.get(f"/api/v1/visits/{token_in(appointment['visit_url'])}")).json()
        assert patient["participant"] == {"role": "patient"}
        assert visit["consent"]["text"] == (
            "You are joining this visit as the interpreter.\n\n" + patient["consent"]["text"]
        )
        assert visit["consent"]["version"] == patient["consent"]["version"]

    async def test_a_guest_consent_is_the_guests_own(
        self, client: httpx.AsyncClient, db: Database, staff: Staff
    ) -> None:
        appointment, guest, token = await invited(client, staff)
        version = (await client.get(f"/api/v1/visits/{token}")).json()["consent"]["version"]
        decided = await client.post(
            f"/api/v1/visits/{token}/consent",
            json={"version": version, "decision": "granted", "scopes": ["video_visit"]},
        )
        assert decided.status_code == 201, decided.text
        assert (await client.get(f"/api/v1/visits/{token}")).json()["consented"] is True
        patient_token = token_in(appointment["visit_url"])
        assert (await client.get(f"/api/v1/visits/{patient_token}")).json()["consented"] is False
        records = await client.get(
            f"/api/v1/appointments/{appointment['id']}/consents", headers=staff.clinician.headers
        )
        [record] = records.json()["items"]
        assert record["participant"] == f"interpreter:{guest['id']}"
        assert record["id"] == decided.json()["id"]
        async with db.session(write=False) as session:
            row = await session.get(VisitGuest, uuid.UUID(guest["id"]))
        assert row is not None
        assert row.consent == "video_visit"
        # Waiting, then withdrawn: out of the waiting room, back to invited.
        async with db.session(write=True) as session:
            assert await guests.set_status(
                session, row.id, to=GuestStatus.WAITING, among=[GuestStatus.INVITED.value]
            )
        withdrawn = await client.post(
            f"/api/v1/visits/{token}/consent",
            json={"version": version, "decision": "withdrawn", "scopes": ["video_visit"]},
        )
        assert withdrawn.status_code == 201
        async with db.session(write=False) as session:
            row = await session.get(VisitGuest, uuid.UUID(guest["id"]))
            visit = await session.get(Appointment, uuid.UUID(appointment["id"]))
        assert row is not None
        assert visit is not None
        assert (row.status, row.consent) == ("invited", "")
        assert visit.status == "booked"  # the patient's visit goes on

    async def test_a_removed_guests_link_is_gone(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment, guest, token = await invited(client, staff)
        assert (await client.get(f"/api/v1/visits/{token}")).status_code == 200
        removed = await remove(client, staff.clinician.headers, appointment, guest["id"])
        assert removed.status_code == 204
        for response in (
            await client.get(f"/api/v1/visits/{token}"),
            await client.post(
                f"/api/v1/visits/{token}/consent",
                json={"version": 1, "decision": "granted", "scopes": ["video_visit"]},
            ),
        ):
            assert response.status_code == 410
            assert response.json()["error"]["code"] == "visit_closed"
        # The patient's link is untouched.
        patient = await client.get(f"/api/v1/visits/{token_in(appointment['visit_url'])}")
        assert patient.status_code == 200
