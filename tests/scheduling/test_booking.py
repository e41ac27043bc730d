"""Booking, idempotency, cancel, reschedule, the status state machine, visit links, invites."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from typing import Any

import httpx
import pytest
from icalendar import Calendar
from sqlalchemy import select, text

from app.db import Database
from scheduling import consent, service
from scheduling.models import Appointment, Status
from tests.factories import Staff, booking_body, local_instant, next_weekday, rfc3339, set_hours

NY = "America/New_York"


def slot(clock: str = "10:00", days_ahead: int = 7) -> dt.datetime:
    return local_instant(next_weekday(days_ahead), clock, NY)


async def book(
    client: httpx.AsyncClient, staff: Staff, start: dt.datetime, **extra: Any
) -> httpx.Response:
    headers = {**staff.scheduler.headers, **extra.pop("headers", {})}
    return await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, start, **extra),
        headers=headers,
    )


async def free_starts(
    client: httpx.AsyncClient, staff: Staff, day: dt.date, clinician: Any = None
) -> list[str]:
    begin = local_instant(day, "00:00", NY)
    response = await client.get(
        f"/api/v1/clinicians/{(clinician or staff.clinician).id}/slots",
        params={"start": rfc3339(begin), "end": rfc3339(begin + dt.timedelta(days=1))},
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 200, response.text
    return [item["start"] for item in response.json()["slots"]]


class TestBook:
    async def test_books_a_free_slot(self, client: httpx.AsyncClient, staff: Staff) -> None:
        start = slot()
        response = await book(client, staff, start, email="pat@example.org", phone="+14155550100")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "booked"
        assert body["clinician_id"] == str(staff.clinician.id)
        assert body["start"] == rfc3339(start)
        assert body["end"] == rfc3339(start + dt.timedelta(minutes=20))
        assert body["patient"] == {
            "name": "Pat Example",
            "email": "pat@example.org",
            "phone": "+14155550100",
            "birth_date": None,
            "timezone": None,
        }
        assert body["reason"] == "Follow-up"
        assert body["visit_url"].startswith("http://testserver/visit/")

    async def test_slot_taken_returns_409(self, client: httpx.AsyncClient, staff: Staff) -> None:
        start = slot("11:00")
        assert (await book(client, staff, start)).status_code == 201
        again = await book(client, staff, start, name="Someone Else")
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "slot_unavailable"

    @pytest.mark.parametrize(
        "clock",
        ["08:40", "10:10", "17:00", "16:50"],
        ids=["before-hours", "off-grid", "at-closing", "runs-past-closing"],
    )
    async def test_instant_not_offered_returns_409(
        self, client: httpx.AsyncClient, staff: Staff, clock: str
    ) -> None:
        response = await book(client, staff, slot(clock))
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "slot_unavailable"

    async def test_past_slot_returns_409(self, client: httpx.AsyncClient, staff: Staff) -> None:
        past = local_instant(next_weekday(-21), "10:00", NY)
        response = await book(client, staff, past)
        assert response.status_code == 409

    async def test_weekend_returns_409(self, client: httpx.AsyncClient, staff: Staff) -> None:
        saturday = local_instant(next_weekday(7, weekday=5), "10:00", NY)
        assert (await book(client, staff, saturday)).status_code == 409

    async def test_fractional_second_is_not_a_slot_start(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot() + dt.timedelta(milliseconds=500)
        assert (await book(client, staff, start)).status_code == 409

    async def test_start_in_another_offset_is_the_same_instant(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("13:00")
        body = booking_body(staff.clinician.id, start)
        body["start"] = start.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["start"] == rfc3339(start)

    async def test_back_to_back_visits_are_allowed(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        assert (await book(client, staff, slot("09:00"))).status_code == 201
        assert (await book(client, staff, slot("09:20"))).status_code == 201
        assert (await book(client, staff, slot("09:40"))).status_code == 201

    async def test_booked_slot_disappears_from_the_offer(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(8, weekday=3)
        offered = await free_starts(client, staff, day)
        assert len(offered) == 24  # 09:00-17:00 in 20-minute slots
        start = local_instant(day, "12:00", NY)
        assert (await book(client, staff, start)).status_code == 201
        assert rfc3339(start) not in await free_starts(client, staff, day)
        assert len(await free_starts(client, staff, day)) == 23

    async def test_every_offered_slot_of_a_day_is_bookable_then_none_is_left(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(9, weekday=4)
        for start in await free_starts(client, staff, day):
            response = await client.post(
                "/api/v1/appointments",
                json={
                    "clinician_id": str(staff.clinician.id),
                    "start": start,
                    "patient": {"name": "Many"},
                },
                headers=staff.scheduler.headers,
            )
            assert response.status_code == 201, response.text
        assert await free_starts(client, staff, day) == []

    async def test_admin_may_book_clinician_may_not(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("14:00")
        denied = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, start),
            headers=staff.clinician.headers,
        )
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "forbidden"
        allowed = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, start),
            headers=staff.admin.headers,
        )
        assert allowed.status_code == 201

    async def test_unknown_clinician_returns_404(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        body = booking_body(staff.scheduler.id, slot())  # a user, but not a clinician
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        assert response.status_code == 404


class TestIdempotency:
    async def test_same_key_same_body_answers_the_first_answer(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        start = slot("15:00")
        first = await book(client, staff, start, headers={"Idempotency-Key": "k-1"})
        again = await book(client, staff, start, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        async with db.session(write=False) as session:
            count = await session.scalar(
                select(text("count(*)"))
                .select_from(Appointment)
                .where(
                    Appointment.clinician_id == staff.clinician.id,
                    Appointment.start_at == start,
                )
            )
        assert count == 1

    async def test_same_key_other_body_returns_422(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        first = await book(client, staff, slot("15:20"), headers={"Idempotency-Key": "k-2"})
        assert first.status_code == 201
        other = await book(client, staff, slot("15:40"), headers={"Idempotency-Key": "k-2"})
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"

    async def test_keys_are_scoped_per_user(self, client: httpx.AsyncClient, staff: Staff) -> None:
        first = await book(client, staff, slot("16:00"), headers={"Idempotency-Key": "shared"})
        assert first.status_code == 201
        by_admin = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, slot("16:20")),
            headers={**staff.admin.headers, "Idempotency-Key": "shared"},
        )
        assert by_admin.status_code == 201
        assert by_admin.json()["id"] != first.json()["id"]

    async def test_replay_still_answers_after_the_slot_is_taken_by_itself(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("16:40")
        first = await book(client, staff, start, headers={"Idempotency-Key": "k-3"})
        replay = await book(client, staff, start, headers={"Idempotency-Key": "k-3"})
        other_key = await book(client, staff, start, headers={"Idempotency-Key": "k-4"})
        assert replay.json()["id"] == first.json()["id"]
        assert other_key.status_code == 409


class TestCancel:
    async def test_cancel_frees_the_slot_and_closes_the_link(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("10:20", days_ahead=10)
        booked = (await book(client, staff, start)).json()
        token = booked["visit_url"].rsplit("/", 1)[1]
        assert (await client.get(f"/api/v1/visits/{token}")).status_code == 200

        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/cancel",
            json={"reason": "Patient called"},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert response.json()["cancel_reason"] == "Patient called"

        closed = await client.get(f"/api/v1/visits/{token}")
        assert closed.status_code == 410
        assert closed.json()["error"]["code"] == "visit_closed"
        rebook = await book(client, staff, start, name="Next Patient")
        assert rebook.status_code == 201

    async def test_cancel_twice_returns_409(self, client: httpx.AsyncClient, staff: Staff) -> None:
        booked = (await book(client, staff, slot("10:40", days_ahead=10))).json()
        url = f"/api/v1/appointments/{booked['id']}/cancel"
        assert (await client.post(url, headers=staff.scheduler.headers)).status_code == 200
        again = await client.post(url, headers=staff.scheduler.headers)
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "invalid_transition"


class TestReschedule:
    async def test_keeps_id_and_link_and_frees_the_old_slot(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        old, new = slot("11:20", days_ahead=11), slot("14:20", days_ahead=11)
        booked = (await book(client, staff, old)).json()
        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": rfc3339(new)},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 200, response.text
        moved = response.json()
        assert moved["id"] == booked["id"]
        assert moved["visit_url"] == booked["visit_url"]
        assert moved["start"] == rfc3339(new)
        token = booked["visit_url"].rsplit("/", 1)[1]
        visit = (await client.get(f"/api/v1/visits/{token}")).json()
        assert visit["start"] == rfc3339(new)
        assert (await book(client, staff, old, name="Takes Old")).status_code == 201

    async def test_onto_a_taken_slot_returns_409_and_changes_nothing(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        first = (await book(client, staff, slot("12:20", days_ahead=11))).json()
        second = (await book(client, staff, slot("12:40", days_ahead=11))).json()
        response = await client.post(
            f"/api/v1/appointments/{second['id']}/reschedule",
            json={"start": first["start"]},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "slot_unavailable"
        unchanged = await client.get(
            f"/api/v1/appointments/{second['id']}", headers=staff.scheduler.headers
        )
        assert unchanged.json()["start"] == second["start"]

    async def test_onto_an_unoffered_time_returns_409(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        booked = (await book(client, staff, slot("13:20", days_ahead=11))).json()
        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": rfc3339(slot("20:00", days_ahead=11))},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 409

    async def test_calendar_uid_is_stable_and_sequence_rises(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        booked = (await book(client, staff, slot("09:00", days_ahead=12))).json()
        url = f"/api/v1/appointments/{booked['id']}/calendar.ics"
        before = Calendar.from_ical((await client.get(url, headers=staff.scheduler.headers)).text)
        await client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": rfc3339(slot("09:20", days_ahead=12))},
            headers=staff.scheduler.headers,
        )
        after = Calendar.from_ical((await client.get(url, headers=staff.scheduler.headers)).text)
        event_before, event_after = before.walk("VEVENT")[0], after.walk("VEVENT")[0]
        assert event_after["UID"] == event_before["UID"]
        assert event_after.decoded("SEQUENCE") == event_before.decoded("SEQUENCE") + 1
        assert event_after.decoded("DTSTART") == slot("09:20", days_ahead=12)


class TestCalendar:
    async def test_invite_carries_the_link_and_no_reason(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("09:40", days_ahead=12)
        body = booking_body(staff.clinician.id, start)
        body["reason"] = "Suspected migraine"
        booked = (
            await client.post("/api/v1/appointments", json=body, headers=staff.scheduler.headers)
        ).json()
        response = await client.get(
            f"/api/v1/appointments/{booked['id']}/calendar.ics", headers=staff.scheduler.headers
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/calendar")
        assert "migraine" not in response.text.lower()
        calendar = Calendar.from_ical(response.text)
        assert calendar["VERSION"] == "2.0"
        event = calendar.walk("VEVENT")[0]
        assert str(event["URL"]) == booked["visit_url"]
        assert str(event["LOCATION"]) == booked["visit_url"]
        assert event.decoded("DTSTART") == start
        assert event.decoded("DTEND") == start + dt.timedelta(minutes=20)
        assert "Dr. Ada Test" in str(event["SUMMARY"])

    async def test_cancelled_invite_says_so(self, client: httpx.AsyncClient, staff: Staff) -> None:
        booked = (await book(client, staff, slot("10:00", days_ahead=12))).json()
        await client.post(
            f"/api/v1/appointments/{booked['id']}/cancel", headers=staff.scheduler.headers
        )
        response = await client.get(
            f"/api/v1/appointments/{booked['id']}/calendar.ics", headers=staff.scheduler.headers
        )
        calendar = Calendar.from_ical(response.text)
        assert calendar["METHOD"] == "CANCEL"
        event = calendar.walk("VEVENT")[0]
        assert event["STATUS"] == "CANCELLED"
        assert event.decoded("SEQUENCE") == 1


class TestStateMachine:
    async def _appointment(self, db: Database, appointment_id: str) -> Appointment:
        async with db.session(write=False) as session:
            found = await session.get(Appointment, uuid.UUID(appointment_id))
            assert found is not None
            return found

    async def _consented(self, db: Database, appointment_id: str) -> Appointment:
        """The booked appointment, its patient having consented (check-in and admission need it)."""
        async with db.session(write=True) as session:
            await consent.record(
                session,
                appointment_id=uuid.UUID(appointment_id),
                participant=consent.PATIENT,
                decision="granted",
                scopes=["video_visit"],
                version=(await consent.current_text(session)).version,
                ip=None,
                user_agent=None,
                now=dt.datetime.now(dt.UTC),
            )
        return await self._appointment(db, appointment_id)

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ([Status.WAITING, Status.IN_CALL, Status.COMPLETED], Status.COMPLETED),
            ([Status.WAITING, Status.BOOKED, Status.WAITING], Status.WAITING),
            ([Status.NO_SHOW], Status.NO_SHOW),
            ([Status.WAITING, Status.NO_SHOW], Status.NO_SHOW),
            ([Status.WAITING, Status.CANCELLED], Status.CANCELLED),
        ],
    )
    async def test_allowed_paths(
        self,
        client: httpx.AsyncClient,
        staff: Staff,
        db: Database,
        path: list[Status],
        expected: Status,
    ) -> None:
        booked = (await book(client, staff, slot("11:00", days_ahead=13))).json()
        appointment = await self._consented(db, booked["id"])
        for target in path:
            async with db.session(write=True) as session:
                appointment = await service.transition(session, appointment, target)
        assert appointment.status == expected

    @pytest.mark.parametrize(
        ("path", "refused"),
        [
            ([], Status.IN_CALL),
            ([], Status.COMPLETED),
            ([Status.WAITING, Status.IN_CALL], Status.CANCELLED),
            ([Status.WAITING, Status.IN_CALL, Status.COMPLETED], Status.WAITING),
            ([Status.CANCELLED], Status.BOOKED),
            ([Status.NO_SHOW], Status.WAITING),
        ],
    )
    async def test_refused_transitions_raise_409(
        self,
        client: httpx.AsyncClient,
        staff: Staff,
        db: Database,
        path: list[Status],
        refused: Status,
    ) -> None:
        booked = (await book(client, staff, slot("11:20", days_ahead=13))).json()
        appointment = await self._consented(db, booked["id"])
        for target in path:
            async with db.session(write=True) as session:
                appointment = await service.transition(session, appointment, target)
        with pytest.raises(service.InvalidTransition):
            async with db.session(write=True) as session:
                await service.transition(session, appointment, refused)
        assert (await self._appointment(db, booked["id"])).status == appointment.status

    async def test_reschedule_after_check_in_returns_409(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        booked = (await book(client, staff, slot("11:40", days_ahead=13))).json()
        appointment = await self._consented(db, booked["id"])
        async with db.session(write=True) as session:
            await service.transition(session, appointment, Status.WAITING)
        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": rfc3339(slot("12:00", days_ahead=13))},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "invalid_transition"


class TestVisitLink:
    async def test_visit_shows_clinician_time_and_consent(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = slot("14:40", days_ahead=10)
        booked = (await book(client, staff, start)).json()
        token = booked["visit_url"].rsplit("/", 1)[1]
        response = await client.get(f"/api/v1/visits/{token}")
        assert response.status_code == 200
        visit = response.json()
        assert visit["appointment_id"] == booked["id"]
        assert visit["clinician"] == {"name": "Dr. Ada Test"}
        assert visit["start"] == rfc3339(start)
        assert visit["status"] == "booked"
        assert visit["consent"]["version"] >= 1
        assert visit["consent"]["scopes"] == ["video_visit", "recording"]
        assert visit["consented"] is False

    async def test_token_has_256_bits_and_only_its_hash_is_stored(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        booked = (await book(client, staff, slot("15:00", days_ahead=10))).json()
        token = booked["visit_url"].rsplit("/", 1)[1]
        assert len(token) >= 43  # base64url of 32 bytes
        async with db.session(write=False) as session:
            row = (
                await session.execute(
                    text("SELECT * FROM appointments WHERE link_hash = :h"),
                    {"h": hashlib.sha256(token.encode()).hexdigest()},
                )
            ).one()
        dump = repr(tuple(row))
        assert token not in dump

    async def test_unknown_token_returns_404(self, client: httpx.AsyncClient, staff: Staff) -> None:
        response = await client.get("/api/v1/visits/" + "A" * 43)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "visit_not_found"

    async def test_link_closes_24_hours_after_the_end(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        booked = (await book(client, staff, slot("15:20", days_ahead=10))).json()
        token = booked["visit_url"].rsplit("/", 1)[1]
        async with db.session(write=True) as session:
            appointment = await session.get(Appointment, uuid.UUID(booked["id"]))
            assert appointment is not None
            # Move the visit into the past behind the API's back: 24 h and a minute ago.
            ended = dt.datetime.now(dt.UTC) - dt.timedelta(hours=24, minutes=1)
            appointment.start_at = ended - dt.timedelta(minutes=20)
            appointment.end_at = ended
        response = await client.get(f"/api/v1/visits/{token}")
        assert response.status_code == 410

    async def test_reading_a_visit_changes_nothing(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        booked = (await book(client, staff, slot("15:40", days_ahead=10))).json()
        token = booked["visit_url"].rsplit("/", 1)[1]
        for _ in range(3):
            await client.get(f"/api/v1/visits/{token}")
        after = await client.get(
            f"/api/v1/appointments/{booked['id']}", headers=staff.scheduler.headers
        )
        assert after.json()["status"] == "booked"
        assert after.json()["updated_at"] == booked["updated_at"]


class TestAvailability:
    async def test_put_then_get_answers_the_same(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        document = {
            "timezone": "Europe/Berlin",
            "slot_minutes": 30,
            "weekly": [
                {"weekday": 0, "start": "09:00", "end": "12:00"},
                {"weekday": 0, "start": "13:00", "end": "17:30"},
                {"weekday": 5, "start": "20:00", "end": "24:00"},
            ],
            "exceptions": [
                {"date": "2026-12-24", "start": None, "end": None},
                {"date": "2026-12-31", "start": "09:00", "end": "11:00"},
            ],
            "min_notice_minutes": 60,
            "horizon_days": 90,
        }
        url = f"/api/v1/clinicians/{staff.other_clinician.id}/availability"
        put = await client.put(url, json=document, headers=staff.scheduler.headers)
        assert put.status_code == 200, put.text
        assert put.json() == document
        got = await client.get(url, headers=staff.other_clinician.headers)
        assert got.json() == document

    async def test_contract_example_defaults(self, client: httpx.AsyncClient, staff: Staff) -> None:
        url = f"/api/v1/clinicians/{staff.clinician.id}/availability"
        put = await client.put(
            url,
            json={
                "timezone": NY,
                "slot_minutes": 20,
                "weekly": [{"weekday": 0, "start": "09:00", "end": "12:00"}],
                "exceptions": [{"date": "2026-12-24", "start": None, "end": None}],
            },
            headers=staff.clinician.headers,
        )
        assert put.status_code == 200, put.text
        assert put.json()["min_notice_minutes"] == 0
        assert put.json()["horizon_days"] is None

    async def test_exception_changes_the_offer(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        day = next_weekday(15, weekday=1)
        await set_hours(
            db,
            staff.clinician.id,
            timezone=NY,
            exceptions=[{"date": day.isoformat(), "start": "13:00", "end": "14:00"}],
        )
        assert await free_starts(client, staff, day) == [
            rfc3339(local_instant(day, clock, NY)) for clock in ("13:00", "13:20", "13:40")
        ]
        await set_hours(
            db,
            staff.clinician.id,
            timezone=NY,
            exceptions=[{"date": day.isoformat(), "start": None, "end": None}],
        )
        assert await free_starts(client, staff, day) == []

    @pytest.mark.parametrize(
        "weekly",
        [
            [{"weekday": 7, "start": "09:00", "end": "10:00"}],
            [{"weekday": 0, "start": "10:00", "end": "09:00"}],
            [{"weekday": 0, "start": "9:00", "end": "10:00"}],
            [{"weekday": 0, "start": "24:00", "end": "24:00"}],
            [
                {"weekday": 0, "start": "09:00", "end": "11:00"},
                {"weekday": 0, "start": "10:00", "end": "12:00"},
            ],
        ],
        ids=["weekday-7", "end-before-start", "one-digit-hour", "start-24", "overlap"],
    )
    async def test_bad_hours_return_422_and_keep_the_stored_ones(
        self, client: httpx.AsyncClient, staff: Staff, weekly: list[dict[str, Any]]
    ) -> None:
        url = f"/api/v1/clinicians/{staff.clinician.id}/availability"
        before = (await client.get(url, headers=staff.scheduler.headers)).json()
        response = await client.put(
            url,
            json={"timezone": NY, "slot_minutes": 20, "weekly": weekly},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"
        assert (await client.get(url, headers=staff.scheduler.headers)).json() == before


class TestSlotsEndpoint:
    async def test_range_over_62_days_returns_422(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
        response = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/slots",
            params={"start": rfc3339(start), "end": rfc3339(start + dt.timedelta(days=63))},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 422

    async def test_end_before_start_returns_422(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
        response = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/slots",
            params={"start": rfc3339(start), "end": rfc3339(start - dt.timedelta(hours=1))},
            headers=staff.scheduler.headers,
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"

    async def test_same_slots_whatever_the_offset_of_the_range(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(20)
        start = local_instant(day, "00:00", NY)
        answers = []
        for offset in (dt.timedelta(0), dt.timedelta(hours=-8), dt.timedelta(hours=9, minutes=30)):
            zone = dt.timezone(offset)
            response = await client.get(
                f"/api/v1/clinicians/{staff.clinician.id}/slots",
                params={
                    "start": start.astimezone(zone).isoformat(),
                    "end": (start + dt.timedelta(days=2)).astimezone(zone).isoformat(),
                },
                headers=staff.scheduler.headers,
            )
            answers.append(response.json())
        assert answers[0] == answers[1] == answers[2]
        assert len(answers[0]["slots"]) == 48

    async def test_only_slots_wholly_inside_the_range(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(20)
        response = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/slots",
            params={
                "start": rfc3339(local_instant(day, "09:10", NY)),
                "end": rfc3339(local_instant(day, "10:10", NY)),
            },
            headers=staff.scheduler.headers,
        )
        starts = [s["start"] for s in response.json()["slots"]]
        assert starts == [rfc3339(local_instant(day, c, NY)) for c in ("09:20", "09:40")]
