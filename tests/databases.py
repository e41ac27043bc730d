"""Databases of a test's own: for tests that write what others must not see (fuzzing publishes
consent texts and creates users) or that cut every connection to their database."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

from app import migrate
from tests.conftest import POSTGRES_URL, _asyncpg_url, _postgres_answers, postgres_unusable


async def postgres_admin(sql: str) -> None:
    """One statement on the server's maintenance database (CREATE, DROP, pg_terminate_backend)."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def own_postgres(prefix: str) -> Iterator[tuple[str, str]]:
    """A new migrated PostgreSQL database: (the app's URL, the database's name); dropped after."""
    why = asyncio.run(_postgres_answers())
    if why is not None:
        postgres_unusable(why)
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(postgres_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = _asyncpg_url(POSTGRES_URL, name)
        migrate.upgrade(url)
        yield url, name
    finally:
        asyncio.run(postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def own_database(kind: str, folder: Path) -> Iterator[str]:
    """A new migrated database of `kind` ("sqlite" or "postgresql"); its URL."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / f'own-{secrets.token_hex(4)}.db'}"
        migrate.upgrade(url)
        yield url
        return
    with own_postgres("televisit_own") as (url, _name):
        yield url


class TcpRelay:
    """A loopback TCP relay to PostgreSQL that the test can cut (refusing new connections and
    closing open ones) and restore on the same port: the database unreachable, then back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            writer.close()
        await self._server.wait_closed()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def postgres_port() -> int:
    """The port of the test PostgreSQL server (TELEVISIT_TEST_POSTGRES_URL)."""
    return httpx.URL(POSTGRES_URL.replace("postgresql://", "http://", 1)).port or 5432
