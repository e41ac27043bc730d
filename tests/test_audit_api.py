"""`GET /api/v1/audit-events`: admins read the trail in pages or export it as CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid

import httpx
import pytest

from app import audit_router
from tests.factories import Staff, booking_body, local_instant, next_weekday

URL = "/api/v1/audit-events"


async def _book(client: httpx.AsyncClient, staff: Staff, clock: str) -> str:
    start = local_instant(next_weekday(80), clock, "America/New_York")
    response = await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, start),
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 201
    appointment_id: str = response.json()["id"]
    return appointment_id


async def _read_n_times(
    client: httpx.AsyncClient, staff: Staff, appointment_id: str, times: int
) -> None:
    for _ in range(times):
        response = await client.get(
            f"/api/v1/appointments/{appointment_id}", headers=staff.clinician.headers
        )
        assert response.status_code == 200


class TestPages:
    async def test_filters_and_pages_cover_every_event_once(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment_id = await _book(client, staff, "09:00")
        await _read_n_times(client, staff, appointment_id, 6)

        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, str | int] = {"record_id": appointment_id, "limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            response = await client.get(URL, params=params, headers=staff.admin.headers)
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-store"
            body = response.json()
            seen += [item["id"] for item in body["items"]]
            assert all(item["resource_id"] == appointment_id for item in body["items"])
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        # One booking and six reads, newest first, over three pages, none twice.
        assert pages == 3
        assert len(seen) == 7 == len(set(seen))
        assert seen == sorted(seen, reverse=True)

        by_actor = await client.get(
            URL,
            params={"record_id": appointment_id, "actor_id": str(staff.scheduler.id)},
            headers=staff.admin.headers,
        )
        assert [item["action"] for item in by_actor.json()["items"]] == ["appointment.create"]

    async def test_time_range(self, client: httpx.AsyncClient, staff: Staff) -> None:
        appointment_id = await _book(client, staff, "09:20")
        now = dt.datetime.now(dt.UTC)
        params = {"record_id": appointment_id}
        later = await client.get(
            URL,
            params={**params, "start": (now + dt.timedelta(minutes=1)).isoformat()},
            headers=staff.admin.headers,
        )
        earlier = await client.get(
            URL,
            params={
                **params,
                "start": (now - dt.timedelta(minutes=5)).isoformat(),
                "end": (now + dt.timedelta(minutes=1)).isoformat(),
            },
            headers=staff.admin.headers,
        )
        assert later.json()["items"] == []
        assert [item["action"] for item in earlier.json()["items"]] == ["appointment.create"]

    async def test_reading_the_trail_is_recorded(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        await client.get(URL, params={"limit": 1}, headers=staff.admin.headers)
        mine = await client.get(
            URL, params={"actor_id": str(staff.admin.id), "limit": 5}, headers=staff.admin.headers
        )
        actions = [item["action"] for item in mine.json()["items"]]
        assert "audit.list" in actions


class TestCsv:
    async def test_export_holds_every_matching_event(
        self, client: httpx.AsyncClient, staff: Staff, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Batches of two: the export walks three batches (2, 1, then none).
        monkeypatch.setattr(audit_router, "EXPORT_BATCH", 2)
        appointment_id = await _book(client, staff, "09:40")
        await _read_n_times(client, staff, appointment_id, 2)
        response = await client.get(
            URL,
            params={"record_id": appointment_id},
            headers={**staff.admin.headers, "Accept": "text/csv"},
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        assert response.headers["cache-control"] == "no-store"
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [row["action"] for row in rows] == [
            "appointment.read",
            "appointment.read",
            "appointment.create",
        ]
        assert rows[-1]["actor_id"] == str(staff.scheduler.id)
        assert rows[-1]["at"].endswith("Z")

    async def test_a_formula_is_never_a_formula(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment_id = await _book(client, staff, "10:00")
        await client.get(
            f"/api/v1/appointments/{appointment_id}",
            headers={**staff.clinician.headers, "User-Agent": "=HYPERLINK(1)"},
        )
        response = await client.get(
            URL,
            params={"record_id": appointment_id},
            headers={**staff.admin.headers, "Accept": "text/csv"},
        )
        agents = [row["user_agent"] for row in csv.DictReader(io.StringIO(response.text))]
        assert "'=HYPERLINK(1)" in agents
        assert "=HYPERLINK(1)" not in agents


class TestRefused:
    @pytest.mark.parametrize("role", ["scheduler", "clinician"])
    async def test_staff_other_than_admins(
        self, client: httpx.AsyncClient, staff: Staff, role: str
    ) -> None:
        response = await client.get(URL, headers=getattr(staff, role).headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"

    async def test_no_credentials(self, client: httpx.AsyncClient) -> None:
        response = await client.get(URL)
        assert response.status_code == 401

    @pytest.mark.parametrize(
        "params",
        [
            {"cursor": "not-a-cursor"},
            {"cursor": "YTE6LTE"},  # "a1:-1"
            {"cursor": "eDo1"},  # "x:5"
            {"actor_id": "nope"},
            {"limit": "0"},
            {"limit": "501"},
            {"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
            {"start": "yesterday"},
            {"record_id": "x" * 65},
        ],
    )
    async def test_bad_queries_are_422(
        self, client: httpx.AsyncClient, staff: Staff, params: dict[str, str]
    ) -> None:
        response = await client.get(URL, params=params, headers=staff.admin.headers)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "validation_error"

    async def test_unknown_actor_is_an_empty_page(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        response = await client.get(
            URL, params={"actor_id": str(uuid.uuid4())}, headers=staff.admin.headers
        )
        assert response.json() == {"items": [], "next_cursor": None}
