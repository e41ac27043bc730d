"""Login, tokens, throttling, user management, settings."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import ValidationError

from app import migrate
from app.auth import passwords, tokens
from app.auth.models import User
from app.config import Settings
from app.db import Database
from app.main import create_app
from tests.conftest import TEST_SECRET
from tests.factories import PASSWORD, Staff, access_token, make_user

KEY = tokens.signing_key(TEST_SECRET.encode())


async def login(
    client: httpx.AsyncClient, email: str, password: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", data={"username": email, "password": password}, headers=headers
    )


class TestLogin:
    async def test_password_flow_gives_a_short_lived_token(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        response = await login(client, staff.clinician.user.email, PASSWORD)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "bearer"
        assert 0 < body["expires_in"] <= 15 * 60
        claims = jwt.decode(
            body["access_token"], KEY, algorithms=["HS256"], audience=tokens.AUDIENCE
        )
        assert claims["sub"] == str(staff.clinician.id)
        assert claims["exp"] - claims["iat"] <= 15 * 60
        me = await client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"}
        )
        assert me.json()["email"] == staff.clinician.user.email

    async def test_email_is_case_insensitive(self, client: httpx.AsyncClient, staff: Staff) -> None:
        response = await login(client, staff.admin.user.email.upper(), PASSWORD)
        assert response.status_code == 200

    async def test_unknown_email_and_wrong_password_answer_alike(
        self, client: httpx.AsyncClient, staff: Staff, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verified: list[bool] = []
        real_verify = passwords._verify

        def counting_verify(stored: str | None, password: str) -> bool:
            verified.append(stored is None)
            return real_verify(stored, password)

        monkeypatch.setattr(passwords, "_verify", counting_verify)
        wrong = await login(client, staff.admin.user.email, "not the password")
        unknown = await login(client, f"nobody-{uuid.uuid4().hex}@example.org", "whatever")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert wrong.json()["error"]["code"] == "invalid_credentials"
        # Both paths ran one Argon2 verification: the unknown email against the dummy hash.
        assert verified == [False, True]

    async def test_deactivated_user_cannot_log_in_or_use_a_token(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="scheduler")
        async with db.session(write=True) as session:
            user = await session.get(User, person.id)
            assert user is not None
            user.is_active = False
        assert (await login(client, person.user.email, PASSWORD)).status_code == 401
        assert (await client.get("/api/v1/me", headers=person.headers)).status_code == 401

    async def test_repeated_failures_slow_down_that_address(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        email = staff.scheduler.user.email
        codes = [(await login(client, email, f"guess-{i}")).status_code for i in range(5)]
        assert codes == [401] * 5
        slowed = await login(client, email, PASSWORD)
        assert slowed.status_code == 429
        assert slowed.json()["error"]["code"] == "too_many_attempts"
        assert 1 <= int(slowed.headers["Retry-After"]) <= 60

    async def test_an_attackers_failures_never_lock_the_owner_out(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        email = staff.clinician.user.email
        attacker, owner = {"X-Forwarded-For": "198.51.100.66"}, {"X-Forwarded-For": "203.0.113.5"}
        for i in range(12):
            await login(client, email, f"guess-{i}", headers=attacker)
        assert (await login(client, email, PASSWORD, headers=attacker)).status_code == 429
        assert (await login(client, email, PASSWORD, headers=owner)).status_code == 200

    async def test_the_right_password_forgives_earlier_failures_from_that_address(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        email = staff.admin.user.email
        for i in range(4):
            assert (await login(client, email, f"typo-{i}")).status_code == 401
        assert (await login(client, email, PASSWORD)).status_code == 200
        codes = [(await login(client, email, f"typo-{i}")).status_code for i in range(5)]
        assert codes == [401] * 5

    async def test_unknown_emails_are_throttled_the_same_way(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        known, ghost = staff.scheduler.user.email, f"ghost-{uuid.uuid4().hex}@example.org"
        answers: dict[str, list[tuple[int, str]]] = {}
        for email, address in ((known, "198.51.100.1"), (ghost, "198.51.100.2")):
            responses = [
                await login(client, email, f"guess-{i}", headers={"X-Forwarded-For": address})
                for i in range(6)
            ]
            answers[email] = [(r.status_code, r.json()["error"]["code"]) for r in responses]
        assert (
            answers[known]
            == answers[ghost]
            == [(401, "invalid_credentials")] * 5 + [(429, "too_many_attempts")]
        )


class TestTokens:
    @pytest.mark.parametrize(
        "mutate",
        [
            "expired",
            "wrong_audience",
            "wrong_key",
            "alg_none",
            "garbage",
            "unknown_user",
            "unknown_session",
            "no_session",
        ],
    )
    async def test_bad_tokens_return_401(
        self, client: httpx.AsyncClient, staff: Staff, mutate: str
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        claims = {
            "sub": str(staff.admin.id),
            "sid": str(staff.admin.session_id),
            "role": "admin",
            "aud": tokens.AUDIENCE,
            "iss": tokens.ISSUER,
            "iat": now,
            "exp": now + dt.timedelta(minutes=5),
        }
        key: bytes = KEY
        algorithm = "HS256"
        if mutate == "expired":
            claims["iat"], claims["exp"] = (
                now - dt.timedelta(hours=1),
                now - dt.timedelta(minutes=1),
            )
        elif mutate == "wrong_audience":
            claims["aud"] = "televisit:patient"
        elif mutate == "wrong_key":
            key = b"k" * 32
        elif mutate == "unknown_user":
            claims["sub"] = str(uuid.uuid4())
        elif mutate == "unknown_session":
            claims["sid"] = str(uuid.uuid4())
        elif mutate == "no_session":
            del claims["sid"]
        if mutate == "alg_none":
            token = jwt.encode(claims, "", algorithm="none")
        elif mutate == "garbage":
            token = "not.a.token"
        else:
            token = jwt.encode(claims, key, algorithm=algorithm)
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"

    async def test_missing_header_returns_401(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/me")
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": "not_authenticated", "message": "Missing or invalid credentials."}
        }


class TestUsers:
    async def test_admin_creates_users(self, client: httpx.AsyncClient, staff: Staff) -> None:
        email = f"New.Clinician-{uuid.uuid4().hex[:6]}@Clinic.example.org"
        response = await client.post(
            "/api/v1/users",
            json={
                "email": email,
                "password": "a long enough password",
                "role": "clinician",
                "name": "Dr. New",
                "timezone": "Asia/Tokyo",
            },
            headers=staff.admin.headers,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"id", "email", "role", "name", "timezone"}
        assert body["email"] == email.lower()
        assert (await login(client, email, "a long enough password")).status_code == 200
        clinicians = await client.get("/api/v1/clinicians", headers=staff.scheduler.headers)
        assert {"id": body["id"], "name": "Dr. New", "timezone": "Asia/Tokyo"} in clinicians.json()[
            "items"
        ]

    async def test_duplicate_email_returns_409(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        response = await client.post(
            "/api/v1/users",
            json={
                "email": staff.scheduler.user.email.upper(),
                "password": "a long enough password",
                "role": "scheduler",
                "name": "Copy",
            },
            headers=staff.admin.headers,
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "email_taken"

    @pytest.mark.parametrize("role", ["scheduler", "clinician"])
    async def test_only_admins_create_users(
        self, client: httpx.AsyncClient, staff: Staff, role: str
    ) -> None:
        person = staff.scheduler if role == "scheduler" else staff.clinician
        response = await client.post(
            "/api/v1/users",
            json={
                "email": f"x-{uuid.uuid4().hex[:6]}@example.org",
                "password": "a long enough password",
                "role": "admin",
                "name": "Sneaky",
            },
            headers=person.headers,
        )
        assert response.status_code == 403


class TestBootstrapAdmin:
    async def test_configured_admin_is_created_on_an_empty_database(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        await asyncio.to_thread(migrate.upgrade, url)
        settings = Settings(
            environment="test",
            database_url=url,
            secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic makes a SecretStr
            admin_email="root@clinic.example.org",
            admin_password="bootstrap password",  # type: ignore[arg-type]  # likewise
        )
        app: FastAPI = create_app(settings)
        async with LifespanManager(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await login(client, "root@clinic.example.org", "bootstrap password")
                assert response.status_code == 200


class TestSettings:
    @pytest.mark.parametrize("secret", [None, "changethis", "short-secret"])
    def test_production_refuses_missing_or_placeholder_secret(self, secret: str | None) -> None:
        with pytest.raises(ValidationError, match="TELEVISIT_SECRET_KEY"):
            Settings(environment="production", secret_key=secret)  # type: ignore[arg-type]

    def test_development_runs_without_a_secret(self) -> None:
        assert Settings(environment="development").environment == "development"

    def test_lists_are_comma_separated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELEVISIT_MEDIA_IPS", "127.0.0.1, 10.0.0.5")
        monkeypatch.setenv("TELEVISIT_STUN_URLS", "stun:stun.example.org:3478")
        settings = Settings()
        assert settings.media_ips == ["127.0.0.1", "10.0.0.5"]
        assert settings.stun_urls == ["stun:stun.example.org:3478"]

    def test_token_lifetime_is_capped_at_15_minutes(self) -> None:
        with pytest.raises(ValidationError):
            Settings(access_token_minutes=60)

    def test_token_of_a_test_user_is_accepted(self, staff: Staff) -> None:
        claims = tokens.verify(
            access_token(TEST_SECRET.encode(), staff.admin.user, staff.admin.session_id), key=KEY
        )
        assert claims is not None
        assert claims.user_id == staff.admin.id
