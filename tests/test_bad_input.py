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
