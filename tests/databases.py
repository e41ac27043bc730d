"""Databases of a test's own: for tests that write what others must not see (fuzzing publishes
consent texts and creates users) or that cut every connection to their database."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

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
