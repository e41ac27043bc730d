"""Staff sessions: refresh tokens (hashed, single use, rotated, replay ends the session), logout,
absolute and idle limits, and access tokens that die with their session. Both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text, update

from app.auth.models import RefreshToken, StaffSession, User
from app.config import Settings
from app.db import Database
from tests.conftest import TEST_SECRET, ServerFactory
from tests.factories import PASSWORD, Person, Staff, make_user
from tests.live import LiveServer
from tests.signaling.helpers import Socket, console


async def sign_in(client: httpx.AsyncClient, person: Person) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/token", data={"username": person.user.email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: httpx.AsyncClient, token: object) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: httpx.AsyncClient, access_token: str) -> int:
    return (await client.get("/api/v1/me", headers=bearer(access_token))).status_code


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


class TestRefresh:
    async def test_login_returns_an_opaque_refresh_token_stored_only_hashed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        body = await sign_in(client, staff.clinician)
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        token = body["refresh_token"]
        assert len(token) >= 43  # 256 random bits
        async with db.session(write=False) as session:
            rows = (
                await session.execute(
                    select(RefreshToken)
                    .join(StaffSession)
                    .where(StaffSession.user_id == staff.clinician.id)
                )
            ).scalars()
            hashes = [row.token_hash for row in rows]
            values: list[str] = []
            for table in ("refresh_tokens", "staff_sessions"):
                rows_of = await session.execute(text(f"SELECT * FROM {table}"))  # noqa: S608
                values += [str(value) for row in rows_of.all() for value in row]
        dump = " ".join(values)
        assert hashlib.sha256(token.encode()).hexdigest() in hashes
        assert token not in dump

    async def test_each_refresh_rotates_and_the_new_tokens_work(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        first = await sign_in(client, staff.clinician)
        second = await refresh(client, first["refresh_token"])
        assert second.status_code == 200, second.text
        renewed = second.json()
        assert set(renewed) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert renewed["refresh_token"] != first["refresh_token"]
        assert await me(client, renewed["access_token"]) == 200
        third = await refresh(client, renewed["refresh_token"])
        assert third.status_code == 200
        assert await me(client, third.json()["access_token"]) == 200

    async def test_a_replayed_refresh_token_ends_the_whole_session(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        first = await sign_in(client, staff.clinician)
        renewed = (await refresh(client, first["refresh_token"])).json()
        assert await me(client, renewed["access_token"]) == 200
        replay = await refresh(client, first["refresh_token"])
        assert_error(replay, 401, "refresh_token_reused")
        # The thief's and the owner's tokens alike: every token of the session stops working.
        assert await me(client, renewed["access_token"]) == 401
        assert await me(client, first["access_token"]) == 401
        assert_error(await refresh(client, renewed["refresh_token"]), 401, "session_ended")
        # A second replay finds the session ended already.
        assert_error(await refresh(client, first["refresh_token"]), 401, "session_ended")
        async with db.session(write=False) as session:
            ended = (
                await session.execute(
                    select(StaffSession.end_reason).where(
                        StaffSession.user_id == staff.clinician.id,
                        StaffSession.ended_at.is_not(None),
                    )
                )
            ).scalars()
            assert list(ended) == ["refresh_reused"]
            audit = (
                await session.execute(
                    text(
                        "SELECT actor_id, action FROM audit_events WHERE action = 'session.revoke'"
                    )
                )
            ).all()
        assert any(str(row[0]).replace("-", "") == staff.clinician.id.hex for row in audit)
        # Other sessions of the same user are untouched; a new sign-in works.
        assert await me(client, staff.clinician.token) == 200
        assert await me(client, (await sign_in(client, staff.clinician))["access_token"]) == 200

    async def test_two_refreshes_racing_with_one_token_exactly_one_wins(
        self, app: FastAPI, staff: Staff
    ) -> None:
        # Separate clients, so the requests really run at once (each on its own connection).
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as a,
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as b,
        ):
            for _ in range(5):
                token = (await sign_in(a, staff.scheduler))["refresh_token"]
                answers = await asyncio.gather(refresh(a, token), refresh(b, token))
                codes = sorted(answer.status_code for answer in answers)
                assert codes == [200, 401], [answer.text for answer in answers]
                loser = next(answer for answer in answers if answer.status_code == 401)
                assert loser.json()["error"]["code"] == "refresh_token_reused"

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"refresh_token": ""},
            {"refresh_token": None},
            {"refresh_token": 12345},
            {"refresh_token": ["a"]},
            {"refresh_token": "x" * 129},
            {"refresh_token": "ok", "extra": 1},
            "not an object",
        ],
    )
    async def test_malformed_bodies_are_422(self, client: httpx.AsyncClient, body: object) -> None:
        response = await client.post("/api/v1/auth/refresh", json=body)
        assert_error(response, 422, "validation_error")

    async def test_not_json_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/refresh",
            content=b"refresh_token=abc",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert_error(response, 422, "validation_error")

    @pytest.mark.parametrize("token", ["never-issued", "x" * 43, "é" * 40, "a.b.c"])
    async def test_unknown_tokens_are_401(self, client: httpx.AsyncClient, token: str) -> None:
        assert_error(await refresh(client, token), 401, "not_authenticated")

    async def test_an_access_token_is_not_a_refresh_token(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        body = await sign_in(client, staff.clinician)
        assert_error(await refresh(client, body["access_token"][:128]), 401, "not_authenticated")


class TestLimits:
    async def _age(
        self, db: Database, person: Person, **values: dt.datetime
    ) -> None:  # moves the user's open sessions back in time
        async with db.session(write=True) as session:
            await session.execute(
                update(StaffSession).where(StaffSession.user_id == person.id).values(**values)
            )

    async def test_the_session_ends_after_its_idle_limit_without_a_refresh(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, settings: Settings
    ) -> None:
        body = await sign_in(client, staff.scheduler)
        idle = dt.timedelta(minutes=settings.session_idle_minutes)
        await self._age(db, staff.scheduler, refreshed_at=dt.datetime.now(dt.UTC) - idle)
        assert_error(await refresh(client, body["refresh_token"]), 401, "session_ended")

    async def test_a_refresh_within_the_idle_limit_extends_it(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, settings: Settings
    ) -> None:
        body = await sign_in(client, staff.scheduler)
        almost = dt.timedelta(minutes=settings.session_idle_minutes) - dt.timedelta(minutes=1)
        await self._age(db, staff.scheduler, refreshed_at=dt.datetime.now(dt.UTC) - almost)
        renewed = await refresh(client, body["refresh_token"])
        assert renewed.status_code == 200
        async with db.session(write=False) as session:
            refreshed = await session.scalar(
                select(StaffSession.refreshed_at).where(
                    StaffSession.id != staff.scheduler.session_id,
                    StaffSession.user_id == staff.scheduler.id,
                )
            )
        assert refreshed is not None
        assert dt.datetime.now(dt.UTC) - refreshed < dt.timedelta(minutes=1)

    async def test_the_session_ends_at_its_absolute_limit_however_often_refreshed(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        body = await sign_in(client, staff.scheduler)
        await self._age(db, staff.scheduler, expires_at=dt.datetime.now(dt.UTC))
        assert_error(await refresh(client, body["refresh_token"]), 401, "session_ended")
        # Its access token stops working too (a fresh app: nothing cached).
        assert await me(client, body["access_token"]) == 401

    async def test_the_lifetime_comes_from_settings(
        self, client: httpx.AsyncClient, staff: Staff, db: Database, settings: Settings
    ) -> None:
        await sign_in(client, staff.admin)
        async with db.session(write=False) as session:
            row = (
                await session.execute(
                    select(StaffSession).where(
                        StaffSession.user_id == staff.admin.id,
                        StaffSession.id != staff.admin.session_id,
                    )
                )
            ).scalar_one()
        assert row.expires_at - row.created_at == dt.timedelta(hours=settings.session_hours)

    async def test_a_deactivated_users_refresh_is_refused(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        body = await sign_in(client, person)
        async with db.session(write=True) as session:
            await session.execute(update(User).where(User.id == person.id).values(is_active=False))
        assert_error(await refresh(client, body["refresh_token"]), 401, "session_ended")


class TestLogout:
    async def test_logout_ends_the_session_and_its_tokens_at_once(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        body = await sign_in(client, staff.clinician)
        assert await me(client, body["access_token"]) == 200
        out = await client.post("/api/v1/auth/logout", headers=bearer(body["access_token"]))
        assert out.status_code == 204
        assert await me(client, body["access_token"]) == 401
        assert_error(await refresh(client, body["refresh_token"]), 401, "session_ended")
        # Another session of the same user goes on.
        assert await me(client, staff.clinician.token) == 200
        # Logging out again is harmless.
        again = await client.post("/api/v1/auth/logout", headers=bearer(body["access_token"]))
        assert again.status_code == 204

    async def test_logout_with_the_refresh_token_alone(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        body = await sign_in(client, staff.scheduler)
        out = await client.post(
            "/api/v1/auth/logout", json={"refresh_token": body["refresh_token"]}
        )
        assert out.status_code == 204
        assert await me(client, body["access_token"]) == 401

    @pytest.mark.parametrize(
        "request_kwargs",
        [
            {},
            {"json": {"refresh_token": "never-issued"}},
            {"headers": {"Authorization": "Bearer not.a.token"}},
        ],
    )
    async def test_logout_without_credentials_is_401(
        self, client: httpx.AsyncClient, request_kwargs: dict[str, Any]
    ) -> None:
        response = await client.post("/api/v1/auth/logout", **request_kwargs)
        assert_error(response, 401, "not_authenticated")

    async def test_logout_with_a_malformed_body_is_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/api/v1/auth/logout", json={"refresh_token": 5})
        assert_error(response, 422, "validation_error")


async def renew_on(desk: Socket, token: str) -> None:
    """Hand the console's socket a renewed token, as the page does."""
    await desk.send({"type": "auth", "token": token})
    await desk.expect("authenticated")


class TestConsoleSocket:
    async def test_a_console_whose_session_ends_is_closed(
        self, live_server: LiveServer, staff: Staff
    ) -> None:
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            body = await sign_in(http, staff.clinician)
            async with console(live_server.ws_url, body["access_token"]) as desk:
                await desk.expect("queue")
                # Renewed on the socket with the next token of the same session: still open.
                renewed = (await refresh(http, body["refresh_token"])).json()
                await renew_on(desk, renewed["access_token"])
                # The old refresh token replayed: the session ends, and so does the console.
                assert (await refresh(http, body["refresh_token"])).status_code == 401
                # The hub looks every 2 s; the bound here is looser, for a loaded machine.
                assert (await desk.expect("error", within=10))["code"] == "not_authenticated"
                assert await desk.expect_close() == 4401

    async def test_a_console_renewed_into_a_new_session_follows_it(
        self, live_server: LiveServer, staff: Staff
    ) -> None:
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            first = await sign_in(http, staff.clinician)
            async with console(live_server.ws_url, first["access_token"]) as desk:
                await desk.expect("queue")
                # Signed in again (the page's dialog), then the first session logged out.
                await renew_on(desk, (await sign_in(http, staff.clinician))["access_token"])
                logout = await http.post(
                    "/api/v1/auth/logout", headers=bearer(first["access_token"])
                )
                assert logout.status_code == 204
                # Past two of the hub's checks: the console still answers.
                await asyncio.sleep(5)
                await desk.send({"type": "ping"})
                await desk.expect("pong")


class TestPrivacy:
    async def test_no_token_reaches_a_log_line(
        self, live_server_factory: ServerFactory, staff: Staff
    ) -> None:
        server = live_server_factory(log_level="DEBUG")
        seen: list[str] = []
        async with httpx.AsyncClient(base_url=server.url) as http:
            body = await sign_in(http, staff.clinician)
            seen += [body["access_token"], body["refresh_token"]]
            renewed = (await refresh(http, body["refresh_token"])).json()
            seen += [renewed["access_token"], renewed["refresh_token"]]
            assert (await refresh(http, body["refresh_token"])).status_code == 401
            await refresh(http, "x" * 200)
            await http.post("/api/v1/auth/logout", headers=bearer(renewed["access_token"]))
        server.stop()
        logs = server.logs()
        assert '"route": "/api/v1/auth/refresh"' in logs  # the log is really captured
        assert [token for token in seen if token in logs] == []
        assert [token[-20:] for token in seen if token[-20:] in logs] == []
