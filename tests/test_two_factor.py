"""Two-factor sign-in (TOTP): enrolment, codes at sign-in, wrong and replayed codes, the sealed
secret, admins required to enrol, and no secret or code in the logs. Both databases."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncIterator

import httpx
import pyotp
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from app.auth.models import User
from app.config import Settings
from app.db import Database
from app.main import create_app
from tests.conftest import TEST_SECRET, ServerFactory
from tests.factories import PASSWORD, Person, Staff, make_user
from tests.test_sessions import assert_error


async def sign_in(
    client: httpx.AsyncClient, person: Person, code: str | None = None, **headers: str
) -> httpx.Response:
    fields = {"username": person.user.email, "password": PASSWORD}
    if code is not None:
        fields["otp"] = code
    return await client.post("/api/v1/auth/token", data=fields, headers=headers)


async def enrol(client: httpx.AsyncClient, person: Person) -> pyotp.TOTP:
    """Enrol and confirm; the step after the current one is left for the next sign-in."""
    answer = await client.post("/api/v1/me/otp", headers=person.headers)
    assert answer.status_code == 200, answer.text
    uri = answer.json()["otpauth_uri"]
    parsed = urllib.parse.urlparse(uri)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.scheme == "otpauth"
    assert parsed.netloc == "totp"
    assert query["issuer"] == ["Televisit"]
    assert urllib.parse.quote(person.user.email) in parsed.path or person.user.email in uri
    totp = pyotp.TOTP(query["secret"][0])
    confirmed = await client.post(
        "/api/v1/me/otp/confirm", json={"otp": totp.now()}, headers=person.headers
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json() == {"otp_enabled": True}
    return totp


def next_code(totp: pyotp.TOTP) -> str:
    """The next step's code: accepted (one step of drift) and never used yet."""
    return totp.at(time.time() + 30)


class TestEnrolment:
    async def test_enrol_confirm_then_sign_in_needs_the_code(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        person = staff.scheduler
        before = await client.get("/api/v1/me", headers=person.headers)
        assert before.json()["otp_enabled"] is False
        totp = await enrol(client, person)
        assert (await client.get("/api/v1/me", headers=person.headers)).json()["otp_enabled"]
        assert_error(await sign_in(client, person), 401, "otp_required")
        assert_error(await sign_in(client, person, "000000"), 401, "otp_invalid")
        signed = await sign_in(client, person, next_code(totp))
        assert signed.status_code == 200, signed.text
        assert set(signed.json()) >= {"access_token", "refresh_token"}

    async def test_a_code_is_accepted_once(self, client: httpx.AsyncClient, staff: Staff) -> None:
        totp = await enrol(client, staff.clinician)
        code = next_code(totp)
        assert (await sign_in(client, staff.clinician, code)).status_code == 200
        assert_error(await sign_in(client, staff.clinician, code), 401, "otp_invalid")
        # An earlier step's code, still within the drift, is refused too once a later one served.
        assert_error(
            await sign_in(client, staff.clinician, totp.at(time.time() - 30)), 401, "otp_invalid"
        )

    async def test_the_same_code_from_two_places_signs_in_once(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        totp = await enrol(client, staff.admin)
        code = next_code(totp)
        answers = [
            await sign_in(client, staff.admin, code, **{"X-Forwarded-For": "198.51.100.9"}),
            await sign_in(client, staff.admin, code, **{"X-Forwarded-For": "198.51.100.10"}),
        ]
        assert sorted(a.status_code for a in answers) == [200, 401]

    @pytest.mark.parametrize(
        "code", ["", "12345", "1234567", "abcdef", "\uff11\uff12\uff13\uff14\uff15\uff16", "12 34"]
    )
    async def test_malformed_codes_are_refused(
        self, client: httpx.AsyncClient, staff: Staff, code: str
    ) -> None:
        await enrol(client, staff.scheduler)
        answer = await sign_in(client, staff.scheduler, code)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] in {"otp_required", "otp_invalid"}

    async def test_a_code_too_long_is_422(self, client: httpx.AsyncClient, staff: Staff) -> None:
        assert_error(await sign_in(client, staff.scheduler, "1" * 17), 422, "validation_error")

    async def test_wrong_codes_are_throttled_like_passwords(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        totp = await enrol(client, staff.scheduler)
        codes = [(await sign_in(client, staff.scheduler, "000000")).status_code for _ in range(5)]
        assert codes == [401] * 5
        assert_error(
            await sign_in(client, staff.scheduler, next_code(totp)), 429, "too_many_attempts"
        )

    async def test_confirming_needs_the_right_code(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        headers = staff.clinician.headers
        not_yet = await client.post(
            "/api/v1/me/otp/confirm", json={"otp": "123456"}, headers=headers
        )
        assert_error(not_yet, 409, "otp_not_enrolled")
        assert (await client.post("/api/v1/me/otp", headers=headers)).status_code == 200
        wrong = await client.post("/api/v1/me/otp/confirm", json={"otp": "000000"}, headers=headers)
        assert_error(wrong, 422, "otp_invalid")
        for body in ({}, {"otp": 123456}, {"otp": ""}, {"otp": "1" * 17}, {"otp": "1", "x": 1}):
            bad = await client.post("/api/v1/me/otp/confirm", json=body, headers=headers)
            assert_error(bad, 422, "validation_error")
        # Still off: sign-in needs no code.
        assert (await sign_in(client, staff.clinician)).status_code == 200

    async def test_enrolling_again_once_on_is_refused(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        await enrol(client, staff.clinician)
        again = await client.post("/api/v1/me/otp", headers=staff.clinician.headers)
        assert_error(again, 409, "otp_already_enabled")

    async def test_enrolment_needs_a_session(self, client: httpx.AsyncClient) -> None:
        assert_error(await client.post("/api/v1/me/otp"), 401, "not_authenticated")

    async def test_the_secret_is_stored_sealed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        totp = await enrol(client, staff.scheduler)
        async with db.session(write=False) as session:
            stored = await session.scalar(
                select(User.otp_secret).where(User.id == staff.scheduler.id)
            )
        assert stored is not None
        assert stored.startswith("v1.")
        assert totp.secret not in stored


@pytest.fixture
async def strict_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose admins must sign in with two-factor."""
    app = create_app(settings.model_copy(update={"require_2fa_admins": True}))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


class TestRequiredForAdmins:
    async def test_an_admin_without_it_may_only_enrol(
        self, strict_client: httpx.AsyncClient, db: Database
    ) -> None:
        admin = await make_user(db, secret=TEST_SECRET.encode(), role="admin")
        blocked = await strict_client.get("/api/v1/clinicians", headers=admin.headers)
        assert_error(blocked, 403, "otp_enrolment_required")
        listed = await strict_client.get("/api/v1/users", headers=admin.headers)
        assert listed.status_code in (403, 405)
        me = await strict_client.get("/api/v1/me", headers=admin.headers)
        assert me.status_code == 200
        assert me.json()["otp_enrolment_required"] is True
        # Signing in with the password alone still works, so that they can enrol.
        assert (await sign_in(strict_client, admin)).status_code == 200
        await enrol(strict_client, admin)
        # The same session goes on, now allowed everything.
        assert (await strict_client.get("/api/v1/clinicians", headers=admin.headers)).is_success
        after = await strict_client.get("/api/v1/me", headers=admin.headers)
        assert after.json()["otp_enrolment_required"] is False

    async def test_other_roles_are_not_asked(
        self, strict_client: httpx.AsyncClient, staff: Staff
    ) -> None:
        answer = await strict_client.get("/api/v1/clinicians", headers=staff.scheduler.headers)
        assert answer.status_code == 200


class TestPrivacy:
    async def test_no_secret_or_code_reaches_a_log_line(
        self, live_server_factory: ServerFactory, staff: Staff
    ) -> None:
        server = live_server_factory(log_level="DEBUG")
        async with httpx.AsyncClient(base_url=server.url) as http:
            totp = await enrol(http, staff.clinician)
            code = next_code(totp)
            assert (await sign_in(http, staff.clinician, code)).status_code == 200
            assert (await sign_in(http, staff.clinician, code)).status_code == 401
        server.stop()
        logs = server.logs()
        assert '"route": "/api/v1/me/otp/confirm"' in logs  # the log is really captured
        assert totp.secret not in logs
        assert f"secret={totp.secret}" not in logs
        assert f"otp={code}" not in logs
        assert f'"{code}"' not in logs


class TestLostAuthenticator:
    async def test_an_admin_turns_it_off_and_the_users_sessions_end(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        person = staff.clinician
        totp = await enrol(client, person)
        signed = await sign_in(client, person, next_code(totp))
        refresh = signed.json()["refresh_token"]
        bearer = {"Authorization": f"Bearer {signed.json()['access_token']}"}

        reset = await client.delete(f"/api/v1/users/{person.id}/otp", headers=staff.admin.headers)
        assert reset.status_code == 200, reset.text
        assert reset.json() == {"otp_enabled": False}

        # Whoever holds a session of theirs (maybe who took the phone) is out.
        assert (await client.get("/api/v1/me", headers=bearer)).status_code == 401
        renewed = await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
        assert renewed.status_code == 401
        # The password alone signs in again, and the user may enrol anew.
        again = await sign_in(client, person)
        assert again.status_code == 200, again.text
        fresh = {"Authorization": f"Bearer {again.json()['access_token']}"}
        assert (await client.get("/api/v1/me", headers=fresh)).json()["otp_enabled"] is False
        assert (await client.post("/api/v1/me/otp", headers=fresh)).status_code == 200

        trail = await client.get(
            "/api/v1/audit-events",
            params={"record_id": str(person.id), "limit": 5},
            headers=staff.admin.headers,
        )
        assert "user.otp_reset" in [item["action"] for item in trail.json()["items"]]

    async def test_only_admins_and_only_known_users(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        url = f"/api/v1/users/{staff.clinician.id}/otp"
        for person in (staff.scheduler, staff.clinician):
            assert_error(await client.delete(url, headers=person.headers), 403, "forbidden")
        unknown = f"/api/v1/users/{staff.admin.id.hex[:8]}-0000-4000-8000-000000000000/otp"
        assert_error(await client.delete(unknown, headers=staff.admin.headers), 404, "not_found")
