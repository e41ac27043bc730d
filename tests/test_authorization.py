"""Object-level authorization: every endpoint with an id, called by every non-owner role."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tests.factories import Staff, booking_body, local_instant, next_weekday, rfc3339


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: dict[str, object] | None = None


def _calls(clinician_id: uuid.UUID | str, appointment_id: str) -> list[Call]:
    day = next_weekday(30)
    start = local_instant(day, "00:00", "UTC")
    hours = {"timezone": "UTC", "slot_minutes": 20, "weekly": []}
    return [
        Call("GET", f"/api/v1/clinicians/{clinician_id}/availability"),
        Call("PUT", f"/api/v1/clinicians/{clinician_id}/availability", hours),
        Call(
            "GET",
            f"/api/v1/clinicians/{clinician_id}/slots?start={rfc3339(start).replace('+', '%2B')}"
            f"&end={rfc3339(start + dt.timedelta(days=1))}",
        ),
        Call("GET", f"/api/v1/appointments?clinician_id={clinician_id}"),
        Call("GET", f"/api/v1/appointments/{appointment_id}"),
        Call("POST", f"/api/v1/appointments/{appointment_id}/cancel", {"reason": "x"}),
        Call(
            "POST",
            f"/api/v1/appointments/{appointment_id}/reschedule",
            {"start": rfc3339(local_instant(next_weekday(31), "10:00", "America/New_York"))},
        ),
        Call("GET", f"/api/v1/appointments/{appointment_id}/calendar.ics"),
    ]


async def _appointment(client: httpx.AsyncClient, staff: Staff) -> str:
    start = local_instant(next_weekday(30), "10:00", "America/New_York")
    response = await client.post(
        "/api/v1/appointments",
        json=booking_body(staff.clinician.id, start),
        headers=staff.scheduler.headers,
    )
    assert response.status_code == 201, response.text
    appointment_id: str = response.json()["id"]
    return appointment_id


NON_OWNERS: dict[str, Callable[[Staff], dict[str, str]]] = {
    "other_clinician": lambda s: s.other_clinician.headers,
    "anonymous": lambda s: {},
    "bad_token": lambda s: {"Authorization": "Bearer nonsense"},
}


class TestObjectLevelAuthorization:
    @pytest.mark.parametrize("who", sorted(NON_OWNERS))
    async def test_non_owners_never_get_a_2xx(
        self, client: httpx.AsyncClient, staff: Staff, who: str
    ) -> None:
        appointment_id = await _appointment(client, staff)
        headers = NON_OWNERS[who](staff)
        for call in _calls(staff.clinician.id, appointment_id):
            response = await client.request(call.method, call.path, json=call.json, headers=headers)
            assert not response.is_success, (who, call)
            expected = {404} if who == "other_clinician" else {401}
            if who == "other_clinician" and call.path.endswith(("/cancel", "/reschedule")):
                expected = {403}  # clinicians may not cancel or move any appointment
            assert response.status_code in expected, (who, call, response.text)
            assert set(response.json()["error"]) >= {"code", "message"}
        # Nothing changed for the owner.
        owner = await client.get(
            f"/api/v1/appointments/{appointment_id}", headers=staff.clinician.headers
        )
        assert owner.json()["status"] == "booked"

    @pytest.mark.parametrize("unknown", ["well-formed", "malformed"])
    async def test_unknown_ids_answer_404_for_every_role(
        self, client: httpx.AsyncClient, staff: Staff, unknown: str
    ) -> None:
        some_id = str(uuid.uuid4()) if unknown == "well-formed" else "not-a-uuid"
        calls = [c for c in _calls(some_id, some_id) if "?clinician_id=" not in c.path]
        for person in (staff.admin, staff.scheduler, staff.clinician):
            for call in calls:
                response = await client.request(
                    call.method, call.path, json=call.json, headers=person.headers
                )
                if person is staff.clinician and call.path.endswith(("/cancel", "/reschedule")):
                    assert response.status_code == 403  # the role, whatever the id
                    continue
                assert response.status_code == 404, (person.user.role, call, response.text)
                assert response.json()["error"]["code"] == "not_found"

    async def test_filtering_on_another_clinician_answers_404_to_a_clinician(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        response = await client.get(
            f"/api/v1/appointments?clinician_id={staff.clinician.id}",
            headers=staff.other_clinician.headers,
        )
        assert response.status_code == 404

    async def test_clinician_lists_only_their_own_appointments(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        appointment_id = await _appointment(client, staff)
        own = await client.get("/api/v1/appointments", headers=staff.clinician.headers)
        assert appointment_id in {item["id"] for item in own.json()["items"]}
        other = await client.get("/api/v1/appointments", headers=staff.other_clinician.headers)
        assert appointment_id not in {item["id"] for item in other.json()["items"]}
        assert all(
            item["clinician_id"] == str(staff.other_clinician.id) for item in other.json()["items"]
        )

    async def test_patient_token_is_not_a_staff_credential(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        start = local_instant(next_weekday(30), "11:00", "America/New_York")
        booked = await client.post(
            "/api/v1/appointments",
            json=booking_body(staff.clinician.id, start),
            headers=staff.scheduler.headers,
        )
        token = booked.json()["visit_url"].rsplit("/", 1)[1]
        response = await client.get(
            f"/api/v1/appointments/{booked.json()['id']}",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 401
