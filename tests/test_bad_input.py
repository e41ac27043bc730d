"""Bad input of every kind: the contract's 4xx error shape, never a 500, nothing stored lost."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.db import Database
from scheduling.models import Appointment
from tests.factories import Staff, booking_body, local_instant, next_weekday

START = local_instant(next_weekday(40), "10:00", "America/New_York")
TOMORROW = (dt.date.today() + dt.timedelta(days=2)).isoformat()


def _with(path: tuple[str, ...], value: Any) -> Any:
    def build(body: dict[str, Any]) -> dict[str, Any]:
        target = body
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return body

    return build


_DELETE = object()
BAD_BOOKINGS = {
    "name-missing": _with(("patient", "name"), _DELETE),
    "name-empty": _with(("patient", "name"), ""),
    "name-blank": _with(("patient", "name"), "   "),
    "name-too-long": _with(("patient", "name"), "n" * 201),
    "name-not-a-string": _with(("patient", "name"), 12345),
    "email-invalid": _with(("patient", "email"), "not-an-email"),
    "phone-no-plus": _with(("patient", "phone"), "14155550100"),
    "phone-letters": _with(("patient", "phone"), "+1415CALLME"),
    "phone-too-long": _with(("patient", "phone"), "+1234567890123456"),
    "birth-date-future": _with(("patient", "birth_date"), TOMORROW),
    "birth-date-garbage": _with(("patient", "birth_date"), "05/06/1987"),
    "birth-date-ancient": _with(("patient", "birth_date"), "1700-01-01"),
    "reason-too-long": _with(("reason",), "r" * 1001),
    "start-naive": _with(("start",), START.replace(tzinfo=None).isoformat()),
    "start-garbage": _with(("start",), "next tuesday"),
    "start-missing": _with(("start",), _DELETE),
    "clinician-not-uuid": _with(("clinician_id",), "dr-who"),
    "clinician-missing": _with(("clinician_id",), _DELETE),
    "patient-missing": _with(("patient",), _DELETE),
    "patient-not-object": _with(("patient",), "Pat"),
    "unknown-field": _with(("surprise",), True),
}


async def _count(db: Database) -> int:
    async with db.session(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(Appointment)) or 0)


def _assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    if code:
        assert error["code"] == code


class TestBookingBodies:
    @pytest.mark.parametrize("case", sorted(BAD_BOOKINGS))
    async def test_returns_422_and_stores_nothing(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, case: str
    ) -> None:
        before = await _count(db)
        body = BAD_BOOKINGS[case](booking_body(staff.clinician.id, START))
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        _assert_error_shape(response, 422, "validation_error")
        assert response.json()["error"]["details"]
        assert await _count(db) == before

    @pytest.mark.parametrize(
        ("content", "content_type"),
        [
            (b"{not json", "application/json"),
            (b"[1, 2, 3]", "application/json"),
            (b"", "application/json"),
            (b"null", "application/json"),
            ("\u00ff\u00fe".encode("latin-1"), "application/json"),
            (b"clinician_id=1", "application/x-www-form-urlencoded"),
        ],
        ids=["broken", "array", "empty", "null", "not-utf8", "form"],
    )
    async def test_unparseable_bodies_return_422(
        self, client: httpx.AsyncClient, staff: Staff, content: bytes, content_type: str
    ) -> None:
        response = await client.post(
            "/api/v1/appointments",
            content=content,
            headers={**staff.scheduler.headers, "Content-Type": content_type},
        )
        _assert_error_shape(response, 422, "validation_error")

    async def test_oversized_body_returns_413(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        body = booking_body(staff.clinician.id, START)
        body["reason"] = "x" * (2 * 1024 * 1024)
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        _assert_error_shape(response, 413, "payload_too_large")

    @pytest.mark.parametrize("key", ["", "k" * 256, "with space", "caf\u00e9"])
    async def test_bad_idempotency_keys_return_422(
        self, client: httpx.AsyncClient, staff: Staff, key: str
    ) -> None:
        # Sent as raw UTF-8 bytes: a header is bytes on the wire, whatever clients mean by it.
        response = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, START),
            headers=[
                *(
                    (name.encode(), value.encode())
                    for name, value in staff.scheduler.headers.items()
                ),
                (b"Idempotency-Key", key.encode()),
            ],
        )
        _assert_error_shape(response, 422, "validation_error")


class TestOtherBodies:
    @pytest.mark.parametrize(
        "document",
        [
            {"timezone": "Mars/Olympus", "slot_minutes": 20, "weekly": []},
            {"timezone": "UTC", "slot_minutes": 0, "weekly": []},
            {"timezone": "UTC", "slot_minutes": 481, "weekly": []},
            {"timezone": "UTC", "slot_minutes": 20},
            {"timezone": "UTC", "slot_minutes": 20, "weekly": [], "min_notice_minutes": -1},
            {"timezone": "UTC", "slot_minutes": 20, "weekly": [], "horizon_days": 0},
            {
                "timezone": "UTC",
                "slot_minutes": 20,
                "weekly": [],
                "exceptions": [{"date": "2026-12-24", "start": "09:00", "end": None}],
            },
            {
                "timezone": "UTC",
                "slot_minutes": 20,
                "weekly": [],
                "exceptions": [
                    {"date": "2026-12-24", "start": None, "end": None},
                    {"date": "2026-12-24", "start": "09:00", "end": "10:00"},
                ],
            },
            {
                "timezone": "UTC",
                "slot_minutes": 20,
                "weekly": [],
                "exceptions": [{"date": "2026-02-30"}],
            },
        ],
        ids=[
            "zone",
            "slot-0",
            "slot-481",
            "weekly-missing",
            "notice-negative",
            "horizon-0",
            "half-times",
            "off-and-hours",
            "no-such-date",
        ],
    )
    async def test_bad_availability_returns_422(
        self, client: httpx.AsyncClient, staff: Staff, document: dict[str, Any]
    ) -> None:
        response = await client.put(
            f"/api/v1/clinicians/{staff.clinician.id}/availability",
            json=document,
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "user",
        [
            {"email": "x", "password": "long enough pw", "role": "admin", "name": "X"},
            {"email": "a@example.org", "password": "short", "role": "admin", "name": "X"},
            {"email": "a@example.org", "password": "long enough pw", "role": "root", "name": "X"},
            {"email": "a@example.org", "password": "long enough pw", "role": "admin", "name": ""},
            {
                "email": "a@example.org",
                "password": "long enough pw",
                "role": "admin",
                "name": "X",
                "timezone": "Nowhere/City",
            },
        ],
        ids=["email", "password", "role", "name", "timezone"],
    )
    async def test_bad_users_return_422(
        self, client: httpx.AsyncClient, staff: Staff, user: dict[str, Any]
    ) -> None:
        response = await client.post("/api/v1/users", json=user, headers=staff.admin.headers)
        _assert_error_shape(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "params",
        [
            {},
            {"start": "2027-01-01T00:00:00Z"},
            {"start": "yesterday", "end": "2027-01-01T00:00:00Z"},
            {"start": "2027-01-01T00:00:00", "end": "2027-01-02T00:00:00"},
        ],
        ids=["none", "end-missing", "garbage", "naive"],
    )
    async def test_bad_slot_queries_return_422(
        self, client: httpx.AsyncClient, staff: Staff, params: dict[str, str]
    ) -> None:
        response = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/slots",
            params=params,
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")

    @pytest.mark.parametrize(
        "params",
        [{"status": "happy"}, {"limit": "0"}, {"limit": "100000"}, {"start": "soon"}],
    )
    async def test_bad_list_queries_return_422(
        self, client: httpx.AsyncClient, staff: Staff, params: dict[str, str]
    ) -> None:
        response = await client.get(
            "/api/v1/appointments", params=params, headers=staff.scheduler.headers
        )
        _assert_error_shape(response, 422, "validation_error")

    async def test_login_without_fields_returns_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/auth/token", data={})
        _assert_error_shape(response, 422, "validation_error")

    async def test_reschedule_and_cancel_bodies(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        booked = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, START + dt.timedelta(minutes=20)),
            headers=staff.scheduler.headers,
        )
        appointment = booked.json()["id"]
        for path, body in (
            ("reschedule", {}),
            ("reschedule", {"start": "soon"}),
            ("cancel", {"reason": "r" * 1001}),
            ("cancel", {"why": "x"}),
        ):
            response = await client.post(
                f"/api/v1/appointments/{appointment}/{path}",
                json=body,
                headers=staff.scheduler.headers,
            )
            _assert_error_shape(response, 422, "validation_error")
        after = await client.get(
            f"/api/v1/appointments/{appointment}", headers=staff.scheduler.headers
        )
        assert after.json()["status"] == "booked"


class TestRouting:
    async def test_unknown_route_and_method(self, client: httpx.AsyncClient) -> None:
        _assert_error_shape(await client.get("/api/v1/nothing-here"), 404, "not_found")
        _assert_error_shape(await client.delete("/api/v1/me"), 405, "method_not_allowed")


# The calendar's edges and NUL characters: each once answered 500 (issue 12) -----------------

EDGE_RANGES = [
    ("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z"),
    ("9999-12-20T00:00:00Z", "9999-12-31T23:59:59.999999Z"),
    ("9999-12-31T23:00:00-05:00", "9999-12-31T23:59:59-05:00"),
    ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z"),
    ("0001-01-01T00:30:00+01:00", "0001-01-01T05:00:00Z"),
    ("2027-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
]
EDGE_STARTS = [
    "9999-12-31T23:40:00Z",
    "9999-12-30T15:00:00Z",
    "9999-12-31T23:00:00-05:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
]


async def _booked(client: httpx.AsyncClient, staff: Staff, minutes: int) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, START + dt.timedelta(minutes=minutes)),
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 201, response.text
    booked: dict[str, Any] = response.json()
    return booked


async def _unchanged(
    client: httpx.AsyncClient, staff: Staff, db: Database, booked: dict[str, Any], count: int
) -> None:
    """Nothing stored was lost or changed by the refused request."""
    assert await _count(db) == count
    again = await client.get(
        f"/api/v1/appointments/{booked['id']}", headers=staff.scheduler.headers
    )
    assert again.status_code == 200
    assert {k: again.json()[k] for k in ("status", "start", "patient")} == {
        k: booked[k] for k in ("status", "start", "patient")
    }


class TestCalendarEdges:
    @pytest.mark.parametrize(("start", "end"), EDGE_RANGES)
    async def test_slot_and_list_queries_return_422(
        self, client: httpx.AsyncClient, staff: Staff, start: str, end: str
    ) -> None:
        for path in (f"/api/v1/clinicians/{staff.clinician.id}/slots", "/api/v1/appointments"):
            response = await client.get(
                path, params={"start": start, "end": end}, headers=staff.scheduler.headers
            )
            _assert_error_shape(response, 422, "validation_error")

    async def test_slots_at_the_edge_with_hours_every_day_return_422(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        # Hours around the clock in the zones furthest from UTC: a window reaching past the day.
        for zone in ("Pacific/Kiritimati", "Etc/GMT+12"):
            await set_availability(
                client,
                staff,
                {
                    "timezone": zone,
                    "slot_minutes": 20,
                    "weekly": [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)],
                },
            )
            for start, end in EDGE_RANGES:
                response = await client.get(
                    f"/api/v1/clinicians/{staff.clinician.id}/slots",
                    params={"start": start, "end": end},
                    headers=staff.scheduler.headers,
                )
                _assert_error_shape(response, 422, "validation_error")

    @pytest.mark.parametrize("start", EDGE_STARTS)
    async def test_bookings_and_reschedules_return_422(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, start: str
    ) -> None:
        booked = await _booked(client, staff, 40)
        count = await _count(db)
        body = booking_body(staff.clinician.id, START)
        body["start"] = start
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        _assert_error_shape(response, 422, "validation_error")
        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": start},
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")
        await _unchanged(client, staff, db, booked, count)

    @pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
    async def test_availability_exceptions_return_422(
        self, client: httpx.AsyncClient, staff: Staff, day: str
    ) -> None:
        before = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/availability",
            headers=staff.scheduler.headers,
        )
        response = await client.put(
            f"/api/v1/clinicians/{staff.clinician.id}/availability",
            json={
                "timezone": "UTC",
                "slot_minutes": 20,
                "weekly": [],
                "exceptions": [{"date": day, "start": "00:00", "end": "24:00"}],
            },
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")
        after = await client.get(
            f"/api/v1/clinicians/{staff.clinician.id}/availability",
            headers=staff.scheduler.headers,
        )
        assert after.json() == before.json()


async def set_availability(
    client: httpx.AsyncClient, staff: Staff, document: dict[str, Any]
) -> None:
    response = await client.put(
        f"/api/v1/clinicians/{staff.clinician.id}/availability",
        json=document,
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 200, response.text


NUL = "\x00"
NUL_BOOKINGS = {
    "name": _with(("patient", "name"), f"Pat{NUL}Example"),
    "name-only-nul": _with(("patient", "name"), NUL),
    "email": _with(("patient", "email"), f"pat{NUL}@example.org"),
    "reason": _with(("reason",), f"Follow{NUL}up"),
}


class TestNulCharacters:
    """PostgreSQL refuses NUL in text; both databases answer 422 before any query."""

    @pytest.mark.parametrize("case", sorted(NUL_BOOKINGS))
    async def test_booking_fields(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, case: str
    ) -> None:
        booked = await _booked(client, staff, 60)
        count = await _count(db)
        body = NUL_BOOKINGS[case](booking_body(staff.clinician.id, START + dt.timedelta(hours=1)))
        response = await client.post(
            "/api/v1/appointments", json=body, headers=staff.scheduler.headers
        )
        _assert_error_shape(response, 422, "validation_error")
        response = await client.post(
            f"/api/v1/appointments/{booked['id']}/cancel",
            json={"reason": f"ill{NUL}"},
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")
        await _unchanged(client, staff, db, booked, count)

    @pytest.mark.parametrize(
        "form",
        [
            {"username": f"a{NUL}@example.org", "password": "whatever pw"},
            {"username": "a@example.org", "password": f"what{NUL}ever"},
            {"username": NUL, "password": NUL},
        ],
        ids=["username", "password", "both"],
    )
    async def test_login_form_unauthenticated(
        self, client: httpx.AsyncClient, form: dict[str, str]
    ) -> None:
        response = await client.post("/api/v1/auth/token", data=form)
        _assert_error_shape(response, 422, "validation_error")

    async def test_staff_bodies(self, client: httpx.AsyncClient, staff: Staff) -> None:
        current = await client.get("/api/v1/consent-texts/current", headers=staff.admin.headers)
        for path, body, headers in (
            ("/api/v1/consent-texts", {"text": "I agree to a video visit." + NUL}, staff.admin),
            (
                "/api/v1/users",
                {
                    "email": "n@example.org",
                    "password": "long enough pw",
                    "role": "admin",
                    "name": f"N{NUL}",
                },
                staff.admin,
            ),
        ):
            response = await client.post(path, json=body, headers=headers.headers)
            _assert_error_shape(response, 422, "validation_error")
        response = await client.put(
            f"/api/v1/clinicians/{staff.clinician.id}/availability",
            json={"timezone": f"UTC{NUL}", "slot_minutes": 20, "weekly": []},
            headers=staff.scheduler.headers,
        )
        _assert_error_shape(response, 422, "validation_error")
        after = await client.get("/api/v1/consent-texts/current", headers=staff.admin.headers)
        assert after.json() == current.json()

    @pytest.mark.parametrize(
        ("params", "headers"),
        [
            ({"status": f"booked{NUL}"}, {}),
            ({"start": f"2027-01-01T00:00:00Z{NUL}"}, {}),
            ({f"x{NUL}": "1"}, {}),
            ({}, {"User-Agent": f"agent{NUL}"}),
            ({}, {"X-Anything": NUL}),
        ],
        ids=["status", "start", "key", "user-agent", "other-header"],
    )
    async def test_query_strings_and_headers(
        self,
        client: httpx.AsyncClient,
        staff: Staff,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        response = await client.get(
            "/api/v1/appointments",
            params=params,
            headers=[
                *((k.encode(), v.encode()) for k, v in staff.scheduler.headers.items()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        )
        _assert_error_shape(response, 422, "validation_error")

    async def test_idempotency_key(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        count = await _count(db)
        response = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, START + dt.timedelta(hours=2)),
            headers=[
                *((k.encode(), v.encode()) for k, v in staff.scheduler.headers.items()),
                (b"Idempotency-Key", b"key\x00one"),
            ],
        )
        _assert_error_shape(response, 422, "validation_error")
        assert await _count(db) == count

    async def test_patient_routes(self, client: httpx.AsyncClient, staff: Staff) -> None:
        booked = await _booked(client, staff, 80)
        token = booked["visit_url"].rsplit("/", 1)[1]
        # A token with a NUL is an unknown token, as the contract answers any unknown one.
        unknown = await client.get(f"/api/v1/visits/{token}%00")
        _assert_error_shape(unknown, 404, "visit_not_found")
        for method, path, body in (
            ("POST", f"/api/v1/visits/{token}/connection-test", {"sdp": f"v=0{NUL}"}),
            (
                "POST",
                f"/api/v1/visits/{token}/consent",
                {"version": 1, "decision": f"granted{NUL}", "scopes": ["video_visit"]},
            ),
        ):
            response = await client.request(method, path, json=body)
            _assert_error_shape(response, 422, "validation_error")
        visit = await client.get(f"/api/v1/visits/{token}")
        assert visit.status_code == 200
        assert visit.json()["consented"] is False
