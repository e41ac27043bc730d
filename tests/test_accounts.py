"""Accounts: the admin's list and changes, the last admin kept, deactivation ending sessions and
sockets, password-reset links (single use, 1 hour, hashed), changing one's own password, the CLI,
and the audit trail. Both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text, update

from app.audit import MAX_LISTED_IDS, AuditEvent
from app.auth.models import PasswordReset, User
from app.db import Database
from tests.conftest import TEST_SECRET
from tests.factories import PASSWORD, Person, Staff, make_user
from tests.live import LiveServer
from tests.signaling.helpers import console
from tests.test_cli import run
from tests.test_sessions import assert_error, bearer, me, refresh, sign_in

NEW_PASSWORD = "a brand new long password"


async def patch(
    client: httpx.AsyncClient, admin: Person, user_id: object, body: object
) -> httpx.Response:
    return await client.patch(f"/api/v1/users/{user_id}", json=body, headers=admin.headers)


async def audit_actions(db: Database, resource_id: object) -> list[tuple[str, str]]:
    async with db.session(write=False) as session:
        rows = await session.execute(
            text("SELECT action, outcome FROM audit_events WHERE resource_id = :id ORDER BY id"),
            {"id": str(resource_id)},
        )
        return [(row[0], row[1]) for row in rows]


async def only_admin(db: Database, admin: Person) -> None:
    """Leave `admin` the one active admin of the (shared) test database."""
    async with db.session(write=True) as session:
        await session.execute(
            update(User).where(User.role == "admin", User.id != admin.id).values(is_active=False)
        )


class TestList:
    async def test_an_admin_lists_every_account_with_active(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        gone = await make_user(db, secret=TEST_SECRET.encode(), role="scheduler")
        assert (await patch(client, staff.admin, gone.id, {"active": False})).status_code == 200
        answer = await client.get("/api/v1/users", headers=staff.admin.headers)
        assert answer.status_code == 200
        items = {item["id"]: item for item in answer.json()["items"]}
        assert set(items[str(staff.clinician.id)]) == {
            "id", "email", "role", "name", "timezone", "active"
        }  # fmt: skip
        assert items[str(staff.clinician.id)]["active"] is True
        assert items[str(gone.id)]["active"] is False
        async with db.session(write=False) as session:
            listed = (
                await session.execute(
                    select(AuditEvent.details).where(
                        AuditEvent.action == "user.list", AuditEvent.actor_id == staff.admin.id
                    )
                )
            ).scalar_one()
        assert listed is not None
        # The event names the accounts listed, in the answer's order, up to its cap (a shared
        # PostgreSQL test database may hold more accounts than that).
        assert listed["count"] == len(items)
        assert listed["ids"] == list(items)[:MAX_LISTED_IDS]

    @pytest.mark.parametrize("role", ["scheduler", "clinician"])
    async def test_other_roles_may_not(
        self, client: httpx.AsyncClient, staff: Staff, role: str
    ) -> None:
        person = staff.scheduler if role == "scheduler" else staff.clinician
        assert_error(await client.get("/api/v1/users", headers=person.headers), 403, "forbidden")
        answer = await patch(client, person, staff.clinician.id, {"name": "Nope"})
        assert_error(answer, 403, "forbidden")
        reset = await client.post(
            f"/api/v1/users/{staff.clinician.id}/password-reset", headers=person.headers
        )
        assert_error(reset, 403, "forbidden")

    async def test_without_a_token_401(self, client: httpx.AsyncClient) -> None:
        assert_error(await client.get("/api/v1/users"), 401, "not_authenticated")


class TestChanges:
    async def test_any_subset_changes_and_is_audited(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        answer = await patch(
            client, staff.admin, person.id, {"name": "Dr. Renamed", "timezone": "Asia/Tokyo"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "id": str(person.id),
            "email": person.user.email,
            "role": "clinician",
            "name": "Dr. Renamed",
            "timezone": "Asia/Tokyo",
            "active": True,
        }
        promoted = await patch(client, staff.admin, person.id, {"role": "scheduler"})
        assert promoted.json()["role"] == "scheduler"
        # The role takes effect at once: a scheduler has no queue of their own, but may list
        # every clinician's appointments; /me says so.
        assert (await client.get("/api/v1/me", headers=person.headers)).json()["role"] == (
            "scheduler"
        )
        assert await audit_actions(db, person.id) == [
            ("user.update", "success"),
            ("user.update", "success"),
        ]

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"role": "superuser"},
            {"role": None},
            {"timezone": "Mars/Olympus_Mons"},
            {"timezone": "x" * 65},
            {"name": ""},
            {"name": "   "},
            {"name": "x" * 201},
            {"active": "maybe"},
            {"email": "new@example.org"},
            {"password": "sneaky but long enough"},
            ["role", "admin"],
        ],
    )
    async def test_bad_changes_are_422(
        self, client: httpx.AsyncClient, staff: Staff, body: Any
    ) -> None:
        answer = await patch(client, staff.admin, staff.clinician.id, body)
        assert_error(answer, 422, "validation_error")

    @pytest.mark.parametrize("user_id", [uuid.uuid4(), "not-a-uuid", "1"])
    async def test_unknown_ids_are_404(
        self, client: httpx.AsyncClient, staff: Staff, user_id: object
    ) -> None:
        assert_error(await patch(client, staff.admin, user_id, {"name": "X"}), 404, "not_found")
        reset = await client.post(
            f"/api/v1/users/{user_id}/password-reset", headers=staff.admin.headers
        )
        assert_error(reset, 404, "not_found")


class TestLastAdmin:
    async def test_the_last_active_admin_cannot_be_demoted_or_deactivated(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        await only_admin(db, staff.admin)
        for body in ({"role": "scheduler"}, {"active": False}, {"role": "clinician"}):
            answer = await patch(client, staff.admin, staff.admin.id, body)
            assert_error(answer, 409, "last_admin")
        assert ("user.update", "last_admin") in await audit_actions(db, staff.admin.id)
        # Name and time zone are fine; so is demoting once there is another admin.
        assert (await patch(client, staff.admin, staff.admin.id, {"name": "Root"})).is_success
        other = await make_user(db, secret=TEST_SECRET.encode(), role="admin")
        answer = await patch(client, other, staff.admin.id, {"role": "scheduler"})
        assert answer.status_code == 200

    async def test_two_admins_demoting_each_other_at_once_leave_one(
        self, app: Any, staff: Staff, db: Database
    ) -> None:
        await only_admin(db, staff.admin)
        other = await make_user(db, secret=TEST_SECRET.encode(), role="admin")
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as a,
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as b,
        ):
            answers = await asyncio.gather(
                patch(a, staff.admin, other.id, {"role": "clinician"}),
                patch(b, other, staff.admin.id, {"role": "clinician"}),
            )
        codes = sorted(answer.status_code for answer in answers)
        # The loser is refused as the last admin, or (already demoted) as no admin at all.
        assert codes[0] == 200
        assert codes[1] in (403, 409)
        async with db.session(write=False) as session:
            admins = await session.scalar(
                select(User.id).where(User.role == "admin", User.is_active.is_(True)).limit(1)
            )
        assert admins is not None


class TestDeactivation:
    async def test_deactivating_ends_every_session_at_once(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        first = await sign_in(client, person)
        second = await sign_in(client, person)
        assert await me(client, first["access_token"]) == 200
        answer = await patch(client, staff.admin, person.id, {"active": False})
        assert answer.json()["active"] is False
        for tokens in (first, second):
            assert await me(client, tokens["access_token"]) == 401
            assert_error(await refresh(client, tokens["refresh_token"]), 401, "session_ended")
        assert await me(client, person.token) == 401
        failed = await client.post(
            "/api/v1/auth/token", data={"username": person.user.email, "password": PASSWORD}
        )
        assert_error(failed, 401, "invalid_credentials")
        # The audit trail keeps the user and what was done to them.
        assert ("user.update", "success") in await audit_actions(db, person.id)
        async with db.session(write=False) as session:
            assert await session.get(User, person.id) is not None
        # Reactivated: signing in works again (the old sessions stay ended).
        assert (await patch(client, staff.admin, person.id, {"active": True})).is_success
        assert await me(client, (await sign_in(client, person))["access_token"]) == 200
        assert await me(client, first["access_token"]) == 401

    async def test_a_deactivated_clinicians_console_socket_is_closed(
        self, live_server: LiveServer, staff: Staff, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            tokens = await sign_in(http, person)
            async with console(live_server.ws_url, tokens["access_token"]) as desk:
                await desk.expect("queue")
                answer = await patch(http, staff.admin, person.id, {"active": False})
                assert answer.status_code == 200
                # The contract: within 5 s (the hub looks every 2 s); the bound here is looser,
                # for a loaded machine.
                assert (await desk.expect("error", within=10))["code"] == "not_authenticated"
                assert await desk.expect_close() == 4401


class TestPasswordReset:
    async def _link(self, client: httpx.AsyncClient, admin: Person, person: Person) -> str:
        answer = await client.post(
            f"/api/v1/users/{person.id}/password-reset", headers=admin.headers
        )
        assert answer.status_code == 200, answer.text
        url: str = answer.json()["reset_url"]
        assert url.startswith("http://testserver/reset-password#")
        return url.split("#", 1)[1]

    async def _use(
        self, client: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD
    ) -> httpx.Response:
        return await client.post(
            "/api/v1/auth/password-reset", json={"token": token, "password": password}
        )

    async def test_a_link_sets_a_new_password_once_and_ends_every_session(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="scheduler")
        signed = await sign_in(client, person)
        token = await self._link(client, staff.admin, person)
        assert (await self._use(client, token)).status_code == 204
        assert await me(client, signed["access_token"]) == 401
        assert await me(client, person.token) == 401
        assert_error(await refresh(client, signed["refresh_token"]), 401, "session_ended")
        old = await client.post(
            "/api/v1/auth/token", data={"username": person.user.email, "password": PASSWORD}
        )
        assert_error(old, 401, "invalid_credentials")
        new = await client.post(
            "/api/v1/auth/token", data={"username": person.user.email, "password": NEW_PASSWORD}
        )
        assert new.status_code == 200
        assert_error(
            await self._use(client, token, "yet another password"), 410, "reset_link_closed"
        )
        assert [action for action, _ in await audit_actions(db, person.id)] == [
            "user.password_reset_issue",
            "user.password_reset",
        ]

    async def test_the_token_is_stored_only_hashed_and_a_new_link_closes_the_old(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        first = await self._link(client, staff.admin, staff.clinician)
        second = await self._link(client, staff.admin, staff.clinician)
        async with db.session(write=False) as session:
            hashes = set(
                (
                    await session.execute(
                        select(PasswordReset.token_hash).where(
                            PasswordReset.user_id == staff.clinician.id
                        )
                    )
                ).scalars()
            )
        assert hashlib.sha256(second.encode()).hexdigest() in hashes
        assert first not in hashes
        assert second not in hashes
        assert_error(await self._use(client, first), 410, "reset_link_closed")
        assert (await self._use(client, second)).status_code == 204

    async def test_a_link_expires_after_an_hour(
        self, client: httpx.AsyncClient, staff: Staff, db: Database
    ) -> None:
        token = await self._link(client, staff.admin, staff.scheduler)
        async with db.session(write=True) as session:
            await session.execute(
                update(PasswordReset)
                .where(PasswordReset.token_hash == hashlib.sha256(token.encode()).hexdigest())
                .values(expires_at=dt.datetime.now(dt.UTC))
            )
        assert_error(await self._use(client, token), 410, "reset_link_closed")

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"token": "abc"},
            {"token": "", "password": NEW_PASSWORD},
            {"token": "abc", "password": "short"},
            {"token": "x" * 129, "password": NEW_PASSWORD},
            {"token": "abc", "password": NEW_PASSWORD, "email": "x@example.org"},
        ],
    )
    async def test_bad_bodies_are_422(self, client: httpx.AsyncClient, body: Any) -> None:
        answer = await client.post("/api/v1/auth/password-reset", json=body)
        assert_error(answer, 422, "validation_error")

    async def test_an_unknown_token_is_404(self, client: httpx.AsyncClient) -> None:
        assert_error(await self._use(client, "never-issued-token"), 404, "reset_link_unknown")


class TestOwnPassword:
    async def test_changing_it_ends_the_other_sessions(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        person = await make_user(db, secret=TEST_SECRET.encode(), role="clinician")
        here = await sign_in(client, person)
        elsewhere = await sign_in(client, person)
        answer = await client.post(
            "/api/v1/me/password",
            json={"current": PASSWORD, "new": NEW_PASSWORD},
            headers=bearer(here["access_token"]),
        )
        assert answer.status_code == 204, answer.text
        assert await me(client, here["access_token"]) == 200
        assert (await refresh(client, here["refresh_token"])).status_code == 200
        assert await me(client, elsewhere["access_token"]) == 401
        assert await me(client, person.token) == 401
        assert [action for action, _ in await audit_actions(db, person.id)] == [
            "user.password_change"
        ]

    async def test_the_current_password_must_be_right(
        self, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        answer = await client.post(
            "/api/v1/me/password",
            json={"current": "not it at all", "new": NEW_PASSWORD},
            headers=staff.scheduler.headers,
        )
        assert_error(answer, 401, "invalid_credentials")
        assert await me(client, staff.scheduler.token) == 200

    @pytest.mark.parametrize(
        "body",
        [{}, {"current": PASSWORD}, {"current": PASSWORD, "new": "short"}, {"new": NEW_PASSWORD}],
    )
    async def test_bad_bodies_are_422(
        self, client: httpx.AsyncClient, staff: Staff, body: Any
    ) -> None:
        answer = await client.post("/api/v1/me/password", json=body, headers=staff.admin.headers)
        assert_error(answer, 422, "validation_error")


class TestCommandLine:
    def test_list_deactivate_and_reset_password(self, tmp_path: Any) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
        env = {"TELEVISIT_DATABASE_URL": url, "TELEVISIT_PUBLIC_URL": "https://clinic.example.org"}
        for email, role in (("root@example.org", "admin"), ("doc@example.org", "clinician")):
            created = run(
                ["users", "create", "--email", email, "--password", "long password 1",
                 "--role", role, "--name", f"Name {role}"],
                tmp_path, **env,
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
        listed = run(["users", "list"], tmp_path, **env)
        assert listed.returncode == 0, listed.stderr
        assert "doc@example.org" in listed.stdout
        reset = run(["users", "reset-password", "--email", "doc@example.org"], tmp_path, **env)
        assert reset.returncode == 0, reset.stderr
        assert "https://clinic.example.org/reset-password#" in reset.stdout
        gone = run(["users", "deactivate", "--email", "doc@example.org"], tmp_path, **env)
        assert gone.returncode == 0, gone.stderr
        row = [line for line in run(["users", "list"], tmp_path, **env).stdout.splitlines()
               if line.startswith("doc@example.org")]  # fmt: skip
        assert row
        assert " no " in row[0]
        last = run(["users", "deactivate", "--email", "root@example.org"], tmp_path, **env)
        assert last.returncode != 0
        assert "last active administrator" in last.stderr
        unknown = run(["users", "deactivate", "--email", "nobody@example.org"], tmp_path, **env)
        assert unknown.returncode != 0
        assert "no user" in unknown.stderr
