"""A database gone answers 503 `service_unavailable` with Retry-After, never 500; nothing booked is
lost or doubled when connections are cut mid-load; requests recover when the database returns.

Each PostgreSQL test works on a database of its own (tests.databases): connections to it are
terminated, or the way to it is cut by a TCP relay the test owns; the shared server is never
restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from app.config import Settings
from app.db import Database, create_engine
from app.main import create_app
from scheduling.models import Appointment
from tests.conftest import POSTGRES_URL, TEST_SECRET
from tests.databases import TcpRelay, own_postgres, postgres_port
from tests.factories import Staff, booking_body, local_instant, make_staff, next_weekday
from tests.live import start_server

BOOKED_DAYS = (next_weekday(30, 1), next_weekday(30, 2))  # a Tuesday and a Wednesday
SLOTS = [
    local_instant(day, f"{hour:02d}:{minute:02d}", "America/New_York")
    for day in BOOKED_DAYS
    for hour in range(9, 17)
    for minute in (0, 20, 40)
]


@pytest.fixture(scope="module")
def own_db() -> Iterator[tuple[str, str]]:
    with own_postgres("televisit_dbloss") as created:
        yield created


async def terminate_backends(database: str) -> int:
    """pg_terminate_backend on every connection to `database`; how many were ended."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        ended = await conn.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
            database,
        )
    finally:
        await conn.close()
    return int(ended)


def app_settings(url: str, **extra: Any) -> Settings:
    return Settings(
        environment="test",
        database_url=url,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic turns it into SecretStr
        public_url="http://testserver",  # type: ignore[arg-type]  # pydantic parses the URL
        **{"db_pool_size": 4, **extra},
    )


@contextlib.asynccontextmanager
async def served(app_config: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_config)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        yield client


async def staff_in(url: str) -> Staff:
    db = Database(create_engine(app_settings(url)))
    try:
        return await make_staff(db, secret=TEST_SECRET.encode())
    finally:
        await db.dispose()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.json()["error"]["message"]
    assert int(response.headers["Retry-After"]) > 0


async def test_terminated_connections_answer_503_then_recover(own_db: tuple[str, str]) -> None:
    url, name = own_db
    staff = await staff_in(url)
    async with served(app_settings(url)) as client:
        headers = staff.scheduler.headers
        assert (await client.get("/api/v1/appointments", headers=headers)).status_code == 200
        # Every pooled connection is ended while idle: the next request finds its connection dead.
        assert await terminate_backends(name) >= 1
        first = await client.get("/api/v1/appointments", headers=headers)
        assert_unavailable(first)
        # The dead connection invalidated the pool: the request after it opens a fresh one.
        after = [
            (await client.get("/api/v1/appointments", headers=headers)).status_code
            for _ in range(3)
        ]
        assert after == [200, 200, 200]

        # Mid-load: connections ended again and again while requests run; 200 or 503, never 500.
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                response = await client.get(
                    "/api/v1/clinicians/" + str(staff.clinician.id) + "/availability",
                    headers=headers,
                )
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert_unavailable(response)
                else:
                    assert response.status_code == 200, response.text

        async def killer() -> int:
            ended = 0
            for _ in range(10):
                await asyncio.sleep(0.05)
                ended += await terminate_backends(name)
            stop.set()
            return ended

        workers = [asyncio.create_task(load()) for _ in range(6)]
        ended = await killer()
        await asyncio.gather(*workers)
        assert ended >= 1
        assert 503 in statuses, statuses
        assert set(statuses) <= {200, 503}
        # And once the connections are left alone, every request succeeds again.
        response = await client.get("/api/v1/appointments", headers=headers)
        if response.status_code == 503:  # a connection ended by the last round, found now
            response = await client.get("/api/v1/appointments", headers=headers)
        assert response.status_code == 200


async def test_unreachable_database_answers_503_then_recovers(own_db: tuple[str, str]) -> None:
    url, name = own_db
    staff = await staff_in(url)
    relay = TcpRelay(postgres_port())
    await relay.start()
    relayed = f"postgresql+asyncpg://postgres@127.0.0.1:{relay.port}/{name}"
    async with served(app_settings(relayed, db_connect_timeout_seconds=2)) as client:
        headers = staff.scheduler.headers
        assert (await client.get("/api/v1/appointments", headers=headers)).status_code == 200
        await relay.cut()
        # Open connections closed under the pool, then new ones refused: 503 each time.
        for _ in range(3):
            assert_unavailable(await client.get("/api/v1/appointments", headers=headers))
        body = {"timezone": "UTC", "slot_minutes": 20, "weekly": []}
        assert_unavailable(
            await client.put(
                f"/api/v1/clinicians/{staff.clinician.id}/availability", json=body, headers=headers
            )
        )
        assert (await client.get("/readyz")).status_code == 503
        # The database is back on the same address: requests succeed again, at once.
        await relay.start()
        statuses = [
            (await client.get("/api/v1/appointments", headers=headers)).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 200]
        assert (await client.get("/readyz")).status_code == 200
        await relay.cut()


async def test_pool_exhausted_answers_503(settings: Settings) -> None:
    tight = settings.model_copy(update={"db_pool_size": 1, "db_pool_timeout_seconds": 0.5})
    db = Database(create_engine(settings))
    staff = await make_staff(db, secret=TEST_SECRET.encode())
    await db.dispose()
    app = create_app(tight)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        headers = staff.scheduler.headers
        assert (await client.get("/api/v1/appointments", headers=headers)).status_code == 200
        # The only pooled connection is held elsewhere past the pool's timeout.
        async with app.state.db.engine.connect():
            assert_unavailable(await client.get("/api/v1/appointments", headers=headers))
        assert (await client.get("/api/v1/appointments", headers=headers)).status_code == 200


# Bookings while connections are cut: 0 lost, 0 doubled --------------------------------------


async def _book_until_decided(
    client: httpx.AsyncClient, staff: Staff, start: dt.datetime, key: str, log: dict[str, Any]
) -> None:
    """One logical booking: retried with its Idempotency-Key until it is 201 or 409."""
    body = booking_body(staff.clinician.id, start, name=f"Patient {key[:8]}")
    headers = {**staff.scheduler.headers, "Idempotency-Key": key}
    for _attempt in range(200):
        try:
            response = await client.post("/api/v1/appointments", json=body, headers=headers)
        except httpx.TransportError:
            log["transport_errors"] += 1
            await asyncio.sleep(0.05)
            continue
        log["statuses"].append(response.status_code)
        if response.status_code == 503:
            assert_unavailable(response)
            await asyncio.sleep(0.05)
            continue
        assert response.status_code in (201, 409), response.text
        if response.status_code == 201:
            log["booked"].append((start, response.json()["id"]))
        else:
            assert response.json()["error"]["code"] == "slot_unavailable"
            log["refused"].append(start)
        return
    raise AssertionError(f"booking {key} never decided")


async def test_bookings_survive_terminated_connections(
    own_db: tuple[str, str], tmp_path: Path
) -> None:
    url, name = own_db
    staff = await staff_in(url)
    server = start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": url,
            "TELEVISIT_SECRET_KEY": TEST_SECRET,
            "TELEVISIT_PUBLIC_URL": "http://testserver",
            "TELEVISIT_DB_POOL_SIZE": "4",
        },
        log_path=tmp_path / "server.log",
    )
    log: dict[str, Any] = {"statuses": [], "booked": [], "refused": [], "transport_errors": 0}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            # Two logical bookings for every slot, each with its own key: one must win each slot.
            requests = [(start, str(uuid.uuid4())) for start in SLOTS for _ in range(2)]
            queue: asyncio.Queue[tuple[dt.datetime, str]] = asyncio.Queue()
            for item in requests:
                queue.put_nowait(item)

            async def worker() -> None:
                while not queue.empty():
                    start, key = queue.get_nowait()
                    await _book_until_decided(client, staff, start, key, log)

            done = asyncio.Event()

            async def killer() -> int:
                ended = 0
                while not done.is_set():
                    await asyncio.sleep(0.1)
                    ended += await terminate_backends(name)
                return ended

            killing = asyncio.create_task(killer())
            await asyncio.gather(*(worker() for _ in range(6)))
            done.set()
            ended = await killing
    finally:
        server.stop()
    statuses = log["statuses"]
    assert 500 not in statuses
    assert ended >= 1
    assert 503 in statuses, statuses

    db = Database(create_engine(app_settings(url)))
    try:
        async with db.session(write=False) as session:
            rows = (
                await session.execute(
                    select(Appointment.id, Appointment.start_at).where(
                        Appointment.clinician_id == staff.clinician.id
                    )
                )
            ).all()
    finally:
        await db.dispose()
    stored = {str(row.id): row.start_at for row in rows}
    booked = {booking_id: start for start, booking_id in log["booked"]}
    # 0 lost: every 201 is stored, at its time. 0 doubled: nothing stored that no 201 named.
    assert set(booked) == set(stored)
    assert all(stored[i] == start for i, start in booked.items())
    # Each slot was won exactly once, and lost once by the other request for it.
    assert sorted(booked.values()) == sorted(SLOTS)
    assert sorted(log["refused"]) == sorted(SLOTS)
