"""A canary patient's data and visit token never reach a log line."""

from __future__ import annotations

import logging

import httpx
import pytest

from tests.factories import Staff, booking_body, local_instant, next_weekday, rfc3339
from tests.live import LiveServer

CANARY = {
    "name": "Zelda Qanary-Vexworth",
    "email": "zelda.qanary.vexworth@example.org",
    "phone": "+15550009876",
    "birth_date": "1987-06-05",
}
REASON = "Canary reason: persistent quoxalgia"


def _secrets_in(text: str, tokens: str) -> list[str]:
    needles = [*CANARY.values(), REASON, *tokens.split(), "Qanary", "quoxalgia", "5550009876"]
    needles += [GUEST["name"], GUEST["email"], GUEST["phone"], "Guestcanary", "5550004321"]
    return [needle for needle in needles if needle in text]


async def _exercise(http: httpx.AsyncClient, staff: Staff) -> str:
    """Every path patient data travels: booking, reads, lists, changes, errors, the visit link."""
    start = local_instant(next_weekday(60), "10:00", "America/New_York")
    body = booking_body(staff.clinician.id, start, **CANARY)
    body["reason"] = REASON
    booked = await http.post(
        "/api/v1/appointments",
        json=body,
        headers={**staff.scheduler.headers, "Idempotency-Key": "canary-key"},
    )
    assert booked.status_code == 201, booked.text
    appointment = booked.json()
    token = appointment["visit_url"].rsplit("/", 1)[1]
    headers = staff.scheduler.headers
    await http.post("/api/v1/appointments", json=body, headers=headers)  # 409, slot taken
    bad = dict(body, patient={**CANARY, "birth_date": "2999-01-01"})
    assert (await http.post("/api/v1/appointments", json=bad, headers=headers)).status_code == 422
    bad_phone = dict(body, patient={**CANARY, "phone": CANARY["name"]})
    await http.post("/api/v1/appointments", json=bad_phone, headers=headers)
    await http.get(f"/api/v1/appointments/{appointment['id']}", headers=headers)
    await http.get("/api/v1/appointments", headers=headers)
    await http.get(f"/api/v1/appointments/{appointment['id']}/calendar.ics", headers=headers)
    await http.get(f"/api/v1/visits/{token}")
    await http.get(f"/api/v1/visits/{token}x")
    await http.get(f"/visit/{token}")
    guest_token = await _guest(http, staff, appointment["id"])
    await http.post(
        f"/api/v1/appointments/{appointment['id']}/reschedule",
        json={"start": rfc3339(local_instant(next_weekday(60), "10:20", "America/New_York"))},
        headers=headers,
    )
    await http.post(
        f"/api/v1/appointments/{appointment['id']}/cancel",
        json={"reason": REASON},
        headers=headers,
    )
    await http.get(f"/api/v1/visits/{token}")  # 410 now
    await http.post(
        "/api/v1/auth/token", data={"username": CANARY["email"], "password": CANARY["name"]}
    )
    return f"{token} {guest_token}"


GUEST = {
    "role": "interpreter",
    "name": "Quentin Guestcanary",
    "email": "quentin.guestcanary@example.org",
    "phone": "+15550004321",
}


async def _guest(http: httpx.AsyncClient, staff: Staff, appointment_id: str) -> str:
    """A guest with canary data: invited (and refused once), their link, consent, removal."""
    path = f"/api/v1/appointments/{appointment_id}/participants"
    headers = staff.clinician.headers
    added = await http.post(path, json=GUEST, headers=headers)
    assert added.status_code == 201, added.text
    guest = added.json()
    await http.post(path, json={**GUEST, "phone": GUEST["name"]}, headers=headers)  # 422
    await http.post(path, json=GUEST, headers=staff.other_clinician.headers)  # 404
    await http.get(path, headers=headers)
    token = guest["visit_url"].rsplit("/", 1)[1]
    version = (await http.get(f"/api/v1/visits/{token}")).json()["consent"]["version"]
    await http.post(
        f"/api/v1/visits/{token}/consent",
        json={"version": version, "decision": "granted", "scopes": ["video_visit"]},
    )
    await http.delete(f"{path}/{guest['id']}", headers=headers)
    await http.get(f"/api/v1/visits/{token}")  # 410 now
    return str(token)


class TestNoPatientDataInLogs:
    async def test_server_process_logs(self, live_server: LiveServer, staff: Staff) -> None:
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            token = await _exercise(http, staff)
        live_server.stop()
        logs = live_server.logs()
        assert '"route": "/api/v1/appointments"' in logs  # the log is really captured
        assert _secrets_in(logs, token) == []

    async def test_in_process_log_records(
        self, client: httpx.AsyncClient, staff: Staff, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        token = await _exercise(client, staff)
        # The test's own HTTP client (httpx, httpcore) logs the URLs it calls; the server's
        # records are everything else.
        server_records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
        assert any(r.name == "televisit.http" for r in server_records)
        text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in server_records)
        assert _secrets_in(text, token) == []
