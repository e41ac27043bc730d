"""Abuse resistance: login throttles per address, Argon2 slots, per-link limits, client address."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import redis.asyncio
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pydantic import ValidationError

from app.auth import passwords
from app.auth.passwords import HashingSlots
from app.auth.throttle import LoginThrottle
from app.config import Settings
from app.db import Database
from app.errors import TooManyRequests
from app.main import create_app
from app.ratelimit import Policy, RateLimiter
from scheduling import visits
from tests.conftest import ServerFactory
from tests.factories import PASSWORD, Staff
from tests.signaling.helpers import make_visit

TOKEN_PATH = "/api/v1/auth/token"


async def login(http: httpx.AsyncClient, email: str, password: str, address: str) -> httpx.Response:
    """A login arriving through the trusted local proxy from `address`."""
    return await http.post(
        TOKEN_PATH,
        data={"username": email, "password": password},
        headers={"X-Forwarded-For": address},
    )


class CountingVerify:
    """Wraps the real Argon2 check to count how many ran, and how many at once at most."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self._real = passwords._verify
        monkeypatch.setattr(passwords, "_verify", self)

    def __call__(self, stored: str | None, password: str) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return self._real(stored, password)
        finally:
            with self._lock:
                self.running -= 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def delete_keys(url: str, pattern: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app, http


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    """None for this process's memory; else the shared Redis's URL."""
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def limiter(store: str | None) -> AsyncIterator[RateLimiter]:
    """A limiter in this process's memory, or in the shared Redis under a prefix of its own."""
    if store is None:
        local = RateLimiter()
        yield local
        await local.aclose()
        return
    client = redis.asyncio.Redis.from_url(store)
    prefix = f"televisit-test:{uuid.uuid4().hex}"
    shared = RateLimiter(client, prefix=prefix)
    try:
        yield shared
    finally:
        await shared.aclose()
        await client.aclose()
        await delete_keys(store, f"{prefix}*")


class TestRateLimiter:
    async def test_concurrent_hits_never_exceed_the_allowance(self, limiter: RateLimiter) -> None:
        policy = Policy("burst", "5/minute")
        waits = await asyncio.gather(*(limiter.hit(policy, "one") for _ in range(50)))
        assert waits.count(0) == 5
        assert all(1 <= wait <= 60 for wait in waits if wait)
        assert await limiter.hit(policy, "another") == 0

    async def test_the_wait_grows_with_the_longer_windows(self, limiter: RateLimiter) -> None:
        policy = Policy("growing", "2/second;3/minute")
        assert [await limiter.hit(policy, "k") for _ in range(2)] == [0, 0]
        assert await limiter.hit(policy, "k") == 1  # the one-second window is full
        await asyncio.sleep(1.1)
        assert await limiter.hit(policy, "k") == 0
        # Now the one-minute window is full: the wait is that window's, not a second.
        assert await limiter.hit(policy, "k") > 1

    async def test_clear_forgets(self, limiter: RateLimiter) -> None:
        policy = Policy("forgiven", "2/minute")
        assert [await limiter.hit(policy, "k") for _ in range(3)][-1] > 0
        await limiter.clear(policy, "k")
        assert await limiter.hit(policy, "k") == 0

    async def test_limits_stay_on_in_this_process_when_redis_is_down(self) -> None:
        dead = redis.asyncio.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        fallback = RateLimiter(dead, prefix=f"televisit-test:{uuid.uuid4().hex}")
        try:
            assert fallback.shared
            policy = Policy("down", "3/minute")
            waits = await asyncio.gather(*(fallback.hit(policy, "k") for _ in range(20)))
            assert waits.count(0) == 3
        finally:
            await fallback.aclose()
            await dead.aclose()


class TestLoginThrottle:
    async def test_concurrent_guesses_cannot_exceed_the_allowance(
        self, client: httpx.AsyncClient, staff: Staff, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verify = CountingVerify(monkeypatch)
        email = staff.clinician.user.email
        answers = await asyncio.gather(
            *(login(client, email, f"guess-{i}", "198.51.100.23") for i in range(50))
        )
        codes = [answer.status_code for answer in answers]
        assert codes.count(429) == 45
        assert all(code in (401, 503) for code in codes if code != 429)
        assert verify.calls <= 5
        assert all(a.headers["Retry-After"].isdigit() for a in answers if a.status_code == 429)
        owner = await login(client, email, PASSWORD, "203.0.113.77")
        assert owner.status_code == 200

    async def test_guesses_through_several_processes_share_one_allowance(
        self, settings: Settings, redis_url: str, staff: Staff, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verify = CountingVerify(monkeypatch)
        shared = settings.model_copy(update={"redis_url": redis_url})
        address = f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"
        email = staff.scheduler.user.email
        try:
            async with serving(shared) as (_, first), serving(shared) as (_, second):
                answers = await asyncio.gather(
                    *(
                        login(first if i % 2 else second, email, f"guess-{i}", address)
                        for i in range(40)
                    )
                )
                codes = [answer.status_code for answer in answers]
                assert codes.count(429) == 35
                assert verify.calls <= 5
                elsewhere = await login(second, email, PASSWORD, "203.0.113.78")
                assert elsewhere.status_code == 200
        finally:
            await delete_keys(redis_url, f"televisit:limits:*/{address}/*")

    async def test_a_spray_over_many_accounts_is_slowed_per_address(
        self, limiter: RateLimiter
    ) -> None:
        throttle = LoginThrottle(limiter)
        for i in range(30):
            await throttle.attempt(f"nobody-{i}@example.org", "198.51.100.99")
        with pytest.raises(TooManyRequests) as refused:
            await throttle.attempt("nobody-30@example.org", "198.51.100.99")
        assert refused.value.headers is not None
        assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
        await throttle.attempt("nobody-30@example.org", "198.51.100.100")

    async def test_ipv6_clients_are_counted_per_64_block(self, limiter: RateLimiter) -> None:
        throttle = LoginThrottle(limiter)
        for i in range(5):
            await throttle.attempt("someone@example.org", f"2001:db8:5:6::{i + 1:x}")
        with pytest.raises(TooManyRequests):
            await throttle.attempt("someone@example.org", "2001:db8:5:6:ffff::1")
        await throttle.attempt("someone@example.org", "2001:db8:5:7::1")


class TestArgon2Slots:
    async def test_no_more_than_the_slots_run_at_once(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        verify = CountingVerify(monkeypatch)
        slots = HashingSlots(2, wait_seconds=60)
        stored = await passwords.hash_password(PASSWORD)
        results = await asyncio.gather(*(slots.verify(stored, PASSWORD) for _ in range(6)))
        assert results == [True] * 6
        assert verify.calls == 6
        assert verify.most_at_once <= 2

    def test_slots_follow_the_cpu_count_within_bounds(self) -> None:
        assert passwords.MIN_SLOTS <= HashingSlots().size <= passwords.MAX_SLOTS

    async def test_a_login_finding_every_slot_taken_is_told_to_come_back(
        self, app: FastAPI, client: httpx.AsyncClient, staff: Staff
    ) -> None:
        slots: HashingSlots = app.state.password_slots
        slots.wait_seconds = 0.2
        async with AsyncExitStack() as held:
            for _ in range(slots.size):
                await held.enter_async_context(slots.slot())
            busy = await login(client, staff.admin.user.email, PASSWORD, "198.51.100.5")
        assert busy.status_code == 503
        assert busy.json()["error"]["code"] == "service_busy"
        assert int(busy.headers["Retry-After"]) >= 1
        again = await login(client, staff.admin.user.email, PASSWORD, "198.51.100.5")
        assert again.status_code == 200


async def consent_write(
    http: httpx.AsyncClient, token: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    shown = await http.get(f"/api/v1/visits/{token}")
    assert shown.status_code == 200, shown.text
    return await http.post(
        f"/api/v1/visits/{token}/consent",
        json={
            "version": shown.json()["consent"]["version"],
            "decision": "granted",
            "scopes": ["video_visit"],
        },
        headers=headers,
    )


async def connection_test(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post(f"/api/v1/visits/{token}/connection-test", json={"sdp": "v=0 nonsense"})


LinkRequest = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]


class TestVisitLinkLimits:
    @pytest.mark.parametrize(
        ("send", "allowed", "status"),
        [
            # A consent write succeeds; a device check's nonsense offer reaches the relay and is
            # refused there (422): either way the link's allowance is spent.
            pytest.param(consent_write, 10, 201, id="consent-writes"),
            pytest.param(connection_test, 5, 422, id="connection-tests"),
        ],
    )
    async def test_each_link_has_its_own_allowance(
        self,
        client: httpx.AsyncClient,
        staff: Staff,
        db: Database,
        send: LinkRequest,
        allowed: int,
        status: int,
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        other = await make_visit(db, staff.clinician, by=staff.scheduler)
        codes = [(await send(client, visit.token)).status_code for _ in range(allowed)]
        assert codes == [status] * allowed
        refused = await send(client, visit.token)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_attempts"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert (await send(client, other.token)).status_code == status

    async def test_the_limits_are_shared_by_every_process_through_redis(
        self, settings: Settings, redis_url: str, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        shared = settings.model_copy(update={"redis_url": redis_url})
        try:
            async with serving(shared) as (_, first), serving(shared) as (_, second):
                writes = await asyncio.gather(
                    *(consent_write(first if i % 2 else second, visit.token) for i in range(14))
                )
                assert sorted(w.status_code for w in writes) == [201] * 10 + [429] * 4
                tests = [
                    (await connection_test(first if i % 2 else second, visit.token)).status_code
                    for i in range(6)
                ]
                assert tests == [422] * 5 + [429]
        finally:
            await delete_keys(redis_url, f"televisit:limits:*/{visits.token_hash(visit.token)}/*")

    async def test_date_of_birth_guesses_are_counted_per_link_from_every_address(
        self, settings: Settings, staff: Staff, db: Database
    ) -> None:
        checked = settings.model_copy(update={"visit_birth_date_check": True})
        visit = await make_visit(
            db, staff.clinician, by=staff.scheduler, birth_date=dt.date(1970, 1, 1)
        )
        async with serving(checked) as (_, http):
            codes = [
                (
                    await http.post(
                        f"/api/v1/visits/{visit.token}/verify",
                        json={"birth_date": f"1971-01-{day:02d}"},
                        headers={"X-Forwarded-For": f"198.51.100.{day}"},
                    )
                ).status_code
                for day in range(1, 7)
            ]
        assert codes == [401] * 5 + [429]


TRUSTED, UNTRUSTED = "127.0.0.1", "192.0.2.10"


async def recorded_address(
    app: FastAPI, staff: Staff, db: Database, *, peer: str, forwarded: str | None
) -> tuple[int, str | None]:
    """Record a consent through a connection from `peer`; the address the record keeps."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler)
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
        written = await consent_write(http, visit.token, headers)
        if written.status_code != 201:
            return written.status_code, None
        records = await http.get(
            f"/api/v1/appointments/{visit.appointment_id}/consents", headers=staff.clinician.headers
        )
        assert records.status_code == 200, records.text
        address: str = records.json()["items"][-1]["ip"]
        return written.status_code, address


class TestClientAddress:
    @pytest.mark.parametrize(
        ("peer", "forwarded", "expected"),
        [
            pytest.param(TRUSTED, None, TRUSTED, id="no-header"),
            pytest.param(TRUSTED, "198.51.100.7", "198.51.100.7", id="trusted-proxy"),
            pytest.param(UNTRUSTED, "198.51.100.7", UNTRUSTED, id="untrusted-peer"),
            pytest.param(TRUSTED, "203.0.113.66, 198.51.100.7", "198.51.100.7", id="spoofed-left"),
            pytest.param(TRUSTED, "198.51.100.7, 127.0.0.1", "198.51.100.7", id="two-proxies"),
            pytest.param(TRUSTED, "[2001:db8::1]:443", "2001:db8::1", id="ipv6-with-port"),
            pytest.param(TRUSTED, "not-an-address", TRUSTED, id="malformed"),
            pytest.param(TRUSTED, "198.51.100.7, junk", TRUSTED, id="malformed-last-hop"),
            pytest.param(TRUSTED, "1.2.3.4, " * 30 + "127.0.0.1", "1.2.3.4", id="long-chain"),
            pytest.param(TRUSTED, "x" * 10_000, TRUSTED, id="10000-characters"),
            pytest.param(TRUSTED, "9" * 10_000, TRUSTED, id="10000-digits"),
        ],
    )
    async def test_the_recorded_address(
        self,
        app: FastAPI,
        staff: Staff,
        db: Database,
        peer: str,
        forwarded: str | None,
        expected: str,
    ) -> None:
        status, address = await recorded_address(app, staff, db, peer=peer, forwarded=forwarded)
        assert (status, address) == (201, expected)

    async def test_the_trusted_proxies_are_configurable(
        self, settings: Settings, staff: Staff, db: Database
    ) -> None:
        behind = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8", "2001:db8::/32"]})
        async with serving(behind) as (app, _):
            proxied = await recorded_address(
                app, staff, db, peer="10.1.2.3", forwarded="198.51.100.8"
            )
            loopback = await recorded_address(
                app, staff, db, peer=TRUSTED, forwarded="198.51.100.8"
            )
        assert proxied == (201, "198.51.100.8")
        assert loopback == (201, TRUSTED)

    def test_the_setting_is_a_comma_separated_list_of_networks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TELEVISIT_TRUSTED_PROXIES", "127.0.0.1, 172.16.0.0/12")
        assert Settings().trusted_proxies == ["127.0.0.1", "172.16.0.0/12"]
        monkeypatch.delenv("TELEVISIT_TRUSTED_PROXIES")
        assert Settings().trusted_proxies == ["127.0.0.1"]
        with pytest.raises(ValidationError, match="trusted_proxies"):
            Settings(trusted_proxies="proxy.example.org")  # type: ignore[arg-type]  # parsed

    async def test_a_real_server_never_fails_on_a_forwarded_header(
        self, live_server_factory: ServerFactory, staff: Staff, db: Database
    ) -> None:
        """Through uvicorn, as deployed: X-Forwarded-For was once copied into a 64-character
        column unchecked (a 500 on PostgreSQL)."""
        server = live_server_factory()
        visit = await make_visit(db, staff.clinician, by=staff.scheduler)
        headers = [
            {"X-Forwarded-For": "x" * 10_000},
            {"X-Forwarded-For": "198.51.100.7, %%%"},
            {"X-Forwarded-For": "198.51.100.9"},
        ]
        async with httpx.AsyncClient(base_url=server.url) as http:
            for forwarded in headers:
                written = await consent_write(http, visit.token, forwarded)
                assert written.status_code == 201, written.text
                listed = await http.get(
                    f"/api/v1/appointments/{visit.appointment_id}/consents",
                    headers={**staff.clinician.headers, **forwarded},
                )
                assert listed.status_code == 200, listed.text
                wrong = await http.post(
                    TOKEN_PATH,
                    data={"username": staff.admin.user.email, "password": "wrong"},
                    headers=forwarded,
                )
                assert wrong.status_code == 401, wrong.text
            addresses = [item["ip"] for item in listed.json()["items"]]
        assert addresses == ["127.0.0.1", "127.0.0.1", "198.51.100.9"]
