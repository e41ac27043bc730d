"""Shared by the benchmarks: a server process, seeding, and a lean HTTP/1.1 load generator.

The load generator writes pre-built requests on raw keep-alive connections, so on a 2-core machine
it takes as little CPU from the server as possible; both sides of every ratio pay it alike.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import migrate  # noqa: E402
from app.config import Settings  # noqa: E402
from app.db import Database, create_engine  # noqa: E402
from tests.factories import make_user, set_hours  # noqa: E402
from tests.live import LiveServer, start_server  # noqa: E402

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

    from tests.factories import Staff
    from tests.signaling.helpers import Visit

# Readings of a process, from /proc ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SECRET = "bench-secret-" + "b" * 40
POSTGRES_ADMIN = os.environ.get(
    "TELEVISIT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Backend:
    name: str
    url: str
    cleanup: Any = None


def sqlite_backend(folder: Path) -> Backend:
    url = f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)
    return Backend("sqlite", url)


def postgres_backend() -> Backend | None:
    name = f"televisit_bench_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=3)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL not answering ({type(exc).__name__}): skipped")
        return None
    url = (
        POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        + "/"
        + name
    )
    migrate.upgrade(url)
    return Backend(
        "postgresql", url, lambda: asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
    )


def settings_for(url: str) -> Settings:
    return Settings(environment="test", database_url=url, secret_key=SECRET)  # type: ignore[arg-type]


@dataclass
class Seeded:
    scheduler_token: str
    clinician_id: uuid.UUID


OFFICE_HOURS = [{"weekday": d, "start": "08:00", "end": "18:00"} for d in range(5)]
ALL_DAY = [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)]


async def seed(
    url: str, *, slot_minutes: int = 5, weekly: list[dict[str, Any]] = ALL_DAY
) -> Seeded:
    db = Database(create_engine(settings_for(url)))
    try:
        scheduler = await make_user(db, secret=SECRET.encode(), role="scheduler")
        clinician = await make_user(db, secret=SECRET.encode(), role="clinician", timezone="UTC")
        await set_hours(db, clinician.id, timezone="UTC", weekly=weekly, slot_minutes=slot_minutes)
        token = scheduler.token
        return Seeded(token, clinician.id)
    finally:
        await db.dispose()


def serve(url: str, log: Path) -> LiveServer:
    return start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": url,
            "TELEVISIT_SECRET_KEY": SECRET,
            "TELEVISIT_LOG_LEVEL": "WARNING",
        },
        log_path=log,
    )


def request_bytes(
    method: str, path: str, port: int, token: str, body: dict[str, Any] | None = None
) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
    )
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


@dataclass
class LoadResult:
    statuses: list[int]
    latencies: list[float]
    elapsed: float

    @property
    def rate(self) -> float:
        return len(self.statuses) / self.elapsed

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)


async def load(port: int, requests: Sequence[bytes], connections: int) -> LoadResult:
    """Send every request once over `connections` keep-alive connections, as fast as answered."""
    queue = list(reversed(requests))
    statuses: list[int] = []
    latencies: list[float] = []
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    gate = asyncio.Event()

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        while queue:
            raw = queue.pop()
            sent = time.perf_counter()
            statuses.append(await _exchange(reader, writer, raw))
            latencies.append(time.perf_counter() - sent)

    tasks = [asyncio.create_task(worker(r, w)) for r, w in streams]
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for _, writer in streams:
        writer.close()
    return LoadResult(statuses, latencies, elapsed)


def utc_slots(start: dt.datetime, count: int, minutes: int) -> list[dt.datetime]:
    return [start + dt.timedelta(minutes=minutes * i) for i in range(count)]


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def temp_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="televisit-bench-"))


def warm(url: str, path: str, token: str) -> None:
    for _ in range(50):
        httpx.get(url + path, headers={"Authorization": f"Bearer {token}"})


# Benchmarks in Chromium (bench/pages.py, bench/guest_admit.py) --------------------------------


@dataclass
class Clinic:
    """A server with a clinician signed in on a desktop page, and their visits of the run."""

    server: LiveServer
    browser: Browser
    clinician: Page
    staff: Staff
    visits: list[Visit]


@asynccontextmanager
async def signed_in_clinic(
    chromium: str, folder: Path, backend: Backend, names: Sequence[str]
) -> AsyncIterator[Clinic]:
    """Staff and one five-minute visit per patient name written to the database, a server on it
    (media on loopback, its log in `folder`), and headless Chromium (fake camera and microphone)
    with the clinician signed in on the console; all stopped on the way out."""
    from playwright.async_api import async_playwright

    from tests.conftest import TEST_SECRET
    from tests.e2e.conftest import BASE_ARGS, DESKTOP, FAKE_UI
    from tests.factories import PASSWORD, make_staff
    from tests.signaling.helpers import make_visit

    db = Database(
        create_engine(
            Settings(environment="test", database_url=backend.url, secret_key=TEST_SECRET)  # type: ignore[arg-type]
        )
    )
    staff = await make_staff(db, secret=TEST_SECRET.encode())
    # Five-minute visits one after the other: every round's waiting room is open (it opens 30
    # minutes before the start) for up to five rounds.
    visits = [
        await make_visit(db, staff.clinician, by=staff.scheduler, name=name, minutes=5)
        for name in names
    ]
    await db.dispose()
    server = start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": backend.url,
            "TELEVISIT_SECRET_KEY": TEST_SECRET,
            "TELEVISIT_PUBLIC_URL": "http://127.0.0.1",
            "TELEVISIT_MEDIA_IPS": "127.0.0.1",
            "TELEVISIT_MEDIA_PEER_ALLOW": "127.0.0.0/8",
            "TELEVISIT_LOG_LEVEL": "WARNING",
        },
        log_path=folder / "server.log",
    )
    try:
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(
                executable_path=chromium, headless=True, args=[*BASE_ARGS, FAKE_UI]
            )
            context = await browser.new_context(
                base_url=server.url,
                viewport=DESKTOP,  # type: ignore[arg-type]  # a ViewportSize dict
                permissions=["camera", "microphone"],
            )
            clinician = await context.new_page()
            await clinician.goto("/login")
            await clinician.get_by_test_id("login-email").fill(staff.clinician.user.email)
            await clinician.get_by_test_id("login-password").fill(PASSWORD)
            await clinician.get_by_test_id("login-submit").click()
            await clinician.wait_for_url("**/clinic")
            yield Clinic(server, browser, clinician, staff, visits)
            await browser.close()
    finally:
        server.stop()


async def phone_page(browser: Browser, base: str) -> Page:
    """A page in a new phone-sized context allowed the (fake) camera and microphone."""
    from tests.e2e.conftest import PHONE

    context = await browser.new_context(
        base_url=base,
        viewport=PHONE,  # type: ignore[arg-type]  # a ViewportSize dict
        permissions=["camera", "microphone"],
    )
    return await context.new_page()


def run_in_chromium(
    script: str, doc: str, run: Callable[[int, str, Path, Backend], Coroutine[Any, Any, None]]
) -> None:
    """A Chromium benchmark's command line: `--rounds N`, `--chromium PATH`; `run` is given the
    rounds, the browser, a temporary folder and a migrated SQLite database."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        sys.exit(f"{args.chromium} is missing: apt-get install chromium")
    name = Path(script).name
    print(f"bench/{name}, {time.strftime('%Y-%m-%d %H:%M')}, run {uuid.uuid4().hex[:6]} ({ROOT})")
    folder = temp_folder()
    backend = sqlite_backend(folder)  # migrates with its own event loop: before ours
    asyncio.run(run(args.rounds, args.chromium, folder, backend))
