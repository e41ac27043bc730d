"""The slot listing cache: exact whoever changes the data, and bounded."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import httpx
from sqlalchemy import update

from app.db import Database
from scheduling import visits
from scheduling.models import Appointment, Status
from scheduling.slot_cache import RenderedDay, SlotCache
from tests.factories import Staff, local_instant, next_weekday, rfc3339, set_hours

NY = "America/New_York"


async def offered(client: httpx.AsyncClient, staff: Staff, day: dt.date) -> list[str]:
    begin = local_instant(day, "00:00", NY)
    response = await client.get(
        f"/api/v1/clinicians/{staff.clinician.id}/slots",
        params={"start": rfc3339(begin), "end": rfc3339(begin + dt.timedelta(days=1))},
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 200
    return [slot["start"] for slot in response.json()["slots"]]


async def insert_behind_the_apis_back(db: Database, staff: Staff, start: dt.datetime) -> uuid.UUID:
    appointment_id = uuid.uuid4()
    salt = visits.new_salt()
    now = dt.datetime.now(dt.UTC)
    async with db.session(write=True) as session:
        session.add(
            Appointment(
                id=appointment_id,
                clinician_id=staff.clinician.id,
                start_at=start,
                end_at=start + dt.timedelta(minutes=20),
                status=Status.BOOKED.value,
                patient_name="Direct",
                link_salt=salt,
                link_hash=salt.hex(),
                sequence=0,
                created_by_id=staff.scheduler.id,
                created_at=now,
                updated_at=now,
            )
        )
    return appointment_id


class TestListingStaysExact:
    async def test_a_booking_written_by_another_tool_shows_at_once(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        day = next_weekday(25)
        start = local_instant(day, "11:00", NY)
        assert rfc3339(start) in await offered(client, staff, day)  # now cached
        appointment_id = await insert_behind_the_apis_back(db, staff, start)
        assert rfc3339(start) not in await offered(client, staff, day)
        async with db.session(write=True) as session:
            await session.execute(
                update(Appointment)
                .where(Appointment.id == appointment_id)
                .values(status=Status.CANCELLED.value)
            )
        assert rfc3339(start) in await offered(client, staff, day)

    async def test_cancel_and_reschedule_through_the_api_show_at_once(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(26)
        first, second = local_instant(day, "13:00", NY), local_instant(day, "14:00", NY)
        booked = await client.post(
            "/api/v1/appointments",
            json={
                "clinician_id": str(staff.clinician.id),
                "start": rfc3339(first),
                "patient": {"name": "Cache Test"},
            },
            headers=staff.scheduler.headers,
        )
        assert rfc3339(first) not in await offered(client, staff, day)
        await client.post(
            f"/api/v1/appointments/{booked.json()['id']}/reschedule",
            json={"start": rfc3339(second)},
            headers=staff.scheduler.headers,
        )
        after_move = await offered(client, staff, day)
        assert rfc3339(first) in after_move
        assert rfc3339(second) not in after_move
        await client.post(
            f"/api/v1/appointments/{booked.json()['id']}/cancel", headers=staff.scheduler.headers
        )
        assert rfc3339(second) in await offered(client, staff, day)

    async def test_new_hours_show_at_once(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        day = next_weekday(27)
        assert len(await offered(client, staff, day)) == 24
        await set_hours(db, staff.clinician.id, timezone=NY, slot_minutes=30)
        assert len(await offered(client, staff, day)) == 16

    async def test_notice_is_applied_at_serving_time(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        all_day = [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)]
        await set_hours(
            db, staff.clinician.id, timezone="UTC", weekly=all_day, min_notice_minutes=180
        )
        now = dt.datetime.now(dt.UTC)
        for _ in range(2):  # the second answer comes from the cache
            response = await client.get(
                f"/api/v1/clinicians/{staff.clinician.id}/slots",
                params={"start": rfc3339(now), "end": rfc3339(now + dt.timedelta(days=1))},
                headers=staff.scheduler.headers,
            )
            first = dt.datetime.fromisoformat(response.json()["slots"][0]["start"])
            assert now + dt.timedelta(minutes=180) < first <= now + dt.timedelta(minutes=200)

    async def test_ranges_inside_a_cached_range_are_cut_exactly(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        day = next_weekday(28)
        whole = await offered(client, staff, day)
        response = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/slots",
            params={
                "start": rfc3339(local_instant(day, "10:00", NY) + dt.timedelta(seconds=1)),
                "end": rfc3339(local_instant(day, "11:00", NY)),
            },
            headers=staff.scheduler.headers,
        )
        inner = [slot["start"] for slot in response.json()["slots"]]
        assert inner == [rfc3339(local_instant(day, c, NY)) for c in ("10:20", "10:40")]
        assert set(inner) <= set(whole)


class TestRenderedDay:
    def test_between_is_inclusive_and_valid_json(self) -> None:
        slots = [(600 * i, 600 * i + 600) for i in range(10)]
        day = RenderedDay.render(slots, {})
        text = day.between(1200, 3000)
        parsed = json.loads(b"[" + text + b"]")
        assert [s["start"] for s in parsed] == [
            "1970-01-01T00:20:00Z",
            "1970-01-01T00:30:00Z",
            "1970-01-01T00:40:00Z",
            "1970-01-01T00:50:00Z",
        ]
        assert day.between(6000, 9000) == b""
        assert RenderedDay.render([], {}).between(0, 10**9) == b""

    def test_seconds_that_are_not_whole_minutes_are_rendered_too(self) -> None:
        day = RenderedDay.render([(30, 90)], {})
        assert json.loads(b"[" + day.between(0, 100) + b"]") == [
            {"start": "1970-01-01T00:00:30Z", "end": "1970-01-01T00:01:30Z"}
        ]


class TestSlotCache:
    def test_version_change_misses_and_lru_evicts(self) -> None:
        cache = SlotCache(max_clinicians=2)
        a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        day = RenderedDay.render([(0, 60)], {})
        cache.put(a, ("t1", 1), {0: day})
        assert cache.get(a, ("t1", 1), 0, 0) == [day]
        assert cache.get(a, ("t1", 2), 0, 0) is None
        assert cache.get(a, ("t1", 1), 0, 1) is None  # a day not rendered yet
        cache.put(b, ("t", 0), {0: day})
        cache.put(c, ("t", 0), {0: day})
        assert len(cache) == 2
        assert cache.get(a, ("t1", 1), 0, 0) is None
