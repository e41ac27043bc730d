"""Fixtures: one migrated database per backend per test session, the app, clients, a live server.

Every test that takes `settings` (directly or through `app`, `client`, `db`) runs once on SQLite
and once on PostgreSQL. PostgreSQL and Redis tests skip, with the reason printed, when no server
answers; with TELEVISIT_TEST_REQUIRE_SERVICES=1 (as in CI) they fail instead. Where they go
(TELEVISIT_TEST_POSTGRES_URL, TELEVISIT_TEST_REDIS_URL) is in the README's test section; the run
ends with a summary of every group that did not run (tests.harness).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import httpx
import pytest
import redis.asyncio
import redis.exceptions
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app import migrate
from app.config import Settings
from app.db import Database, create_engine
from app.main import create_app
from tests import harness
from tests.factories import Staff, make_staff
from tests.live import STOP_SECONDS, UNSTOPPED, LiveServer, start_server
from tests.outside import MailServer

POSTGRES_URL = os.environ.get(
    "TELEVISIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TELEVISIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("TELEVISIT_TEST_REQUIRE_SERVICES") == "1"
TEST_SECRET = "test-secret-" + "x" * 40


def cannot_run(message: str) -> NoReturn:
    """Skip, or in CI fail: CI must prove every backend, never skip one."""
    if REQUIRE_SERVICES:
        pytest.fail(message + "; TELEVISIT_TEST_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


def unavailable(what: str, why: str) -> NoReturn:
    cannot_run(f"{what} is not answering ({why})")


async def _postgres_answers() -> str | None:
    """None when the tests can use TELEVISIT_TEST_POSTGRES_URL; otherwise the cause, in words."""
    return await harness.postgres_problem(POSTGRES_URL)


def postgres_unusable(why: str) -> NoReturn:
    cannot_run(f"PostgreSQL at {harness.postgres_where(POSTGRES_URL)}: {why}")


def _asyncpg_url(url: str, database: str) -> str:
    base = url.rsplit("/", 1)[0]
    return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{database}"


@pytest.fixture
def mail() -> Iterator[MailServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port, stopped after the test."""
    server = MailServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("db") / "televisit-test.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    why = asyncio.run(_postgres_answers())
    if why is not None:
        postgres_unusable(why)
    name = f"televisit_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _asyncpg_url(POSTGRES_URL, name)
    try:
        migrate.upgrade(url)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        environment="test",
        database_url=database_url,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic turns it into SecretStr
        public_url="http://testserver",  # type: ignore[arg-type]  # pydantic parses the URL
        db_pool_size=5,
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(create_engine(settings))
    yield database
    await database.dispose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def staff(db: Database) -> Staff:
    """An admin, a scheduler and two clinicians (New York, Berlin) with weekday hours."""
    return await make_staff(db, secret=TEST_SECRET.encode())


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def live_server_factory(settings: Settings, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start `televisit serve` processes on free loopback ports (extra settings as keywords)."""
    servers: list[LiveServer] = []

    def start(**env: str) -> LiveServer:
        server = start_server(
            {
                "TELEVISIT_ENVIRONMENT": "test",
                "TELEVISIT_DATABASE_URL": settings.database_url,
                "TELEVISIT_SECRET_KEY": TEST_SECRET,
                "TELEVISIT_PUBLIC_URL": "http://testserver",
                "TELEVISIT_RECONNECT_GRACE_SECONDS": "2",
                "TELEVISIT_MEDIA_IPS": "127.0.0.1",
                **{f"TELEVISIT_{key.upper()}": value for key, value in env.items()},
            },
            log_path=tmp_path / f"server-{uuid.uuid4().hex[:6]}.log",
        )
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def live_server(live_server_factory: ServerFactory) -> LiveServer:
    """`televisit serve` in its own process on a free loopback port, logs captured."""
    return live_server_factory()


async def _redis_answers(url: str) -> str | None:
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, redis.exceptions.RedisError) as exc:
        return type(exc).__name__
    finally:
        await client.aclose()
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    why = asyncio.run(_redis_answers(REDIS_URL))
    if why is not None:
        unavailable("Redis at " + REDIS_URL.split("@")[-1], why)
    return REDIS_URL


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> Generator[None, object, object]:
    """After pytest's own summary, before its closing line: the groups that did not run, and
    the live servers that had to be killed (the end of their logs)."""
    result = yield
    lines = harness.did_not_run(terminalreporter.stats)
    if lines:
        terminalreporter.write_sep("=", "what did not run", yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(line)
    if UNSTOPPED:
        terminalreporter.write_sep(
            "=", f"servers not stopped {STOP_SECONDS} s after SIGTERM", yellow=True, bold=True
        )
        for report in UNSTOPPED:
            terminalreporter.write_line(report)
    return result
