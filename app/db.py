"""Engines, sessions and the column types shared by every domain.

SQLite is the embedded default and PostgreSQL the production database. SQLite allows one writer
at a time, so write transactions start with `BEGIN IMMEDIATE` (taking the write lock up front
instead of failing to upgrade a read lock later) and, inside one process, queue on an asyncio
lock rather than on SQLite's sleeping busy handler. The busy timeout covers other processes.

A database that goes away is told apart from a bug here (`is_database_loss`, and
`DatabaseUnavailable` for a connection that cannot be opened), so that app.errors answers 503
`service_unavailable` for it. Connections are not pinged on checkout: a connection found dead
invalidates the whole pool, so the requests that follow open fresh ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import DateTime, MetaData, QueuePool, event, make_url, text
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from app.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Milliseconds SQLite waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "televisit_write"
# PostgreSQL error classes and codes that mean "no database to talk to", not "bad statement":
# connection exceptions, the server shutting down or refusing connections, too many clients,
# the database dropped, the login refused.
_LOSS_CLASSES = frozenset({"08", "28", "57"})
_LOSS_CODES = frozenset({"53300", "3D000"})
# Text the server's encoding cannot hold (a NUL, an untranslatable character).
_TEXT_CODES = frozenset({"22021", "22P05"})
_SQLITE_LOSS = ("unable to open database file", "disk i/o error")


class DatabaseUnavailable(Exception):
    """No connection could be opened (refused, unreachable, timed out)."""


def _sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def is_database_loss(exc: DBAPIError) -> bool:
    """Whether the error says the database is gone (or going), rather than the statement wrong."""
    if exc.connection_invalidated:
        return True
    code = _sqlstate(exc)
    if code is not None:
        return code[:2] in _LOSS_CLASSES or code in _LOSS_CODES
    message = str(exc.orig).lower()
    return any(text in message for text in _SQLITE_LOSS)


def refused_text(exc: DBAPIError) -> bool:
    return _sqlstate(exc) in _TEXT_CODES


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on both databases (SQLite keeps naive UTC text, sortable as text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _connect_errors_say_unavailable(engine: AsyncEngine) -> None:
    """A connection refused or timed out surfaces as `DatabaseUnavailable`.

    The drivers raise plain OSError and TimeoutError there, which nothing else in a request
    should be mistaken for.
    """

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except (OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(type(exc).__name__) from exc


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        pool = (
            {}
            if ":memory:" in settings.database_url
            else {
                "pool_size": settings.db_pool_size,
                "max_overflow": 0,
                "pool_timeout": settings.db_pool_timeout_seconds,
            }
        )
        engine = create_async_engine(settings.database_url, hide_parameters=True, **pool)
        _sqlite_setup(engine.sync_engine)
        return engine
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        # A fixed pool: overflow connections are closed on return and reopened under load.
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=False,
        connect_args={"timeout": settings.db_connect_timeout_seconds},
        # Constraint violations are expected (double booking); keep their text out of logs.
        hide_parameters=True,
    )
    _connect_errors_say_unavailable(engine)
    return engine


def create_sqlite_thread_engine(settings: Settings) -> Engine:
    """A synchronous engine on the same SQLite file, with one connection, for a thread of its
    own: a whole unit of work done on that thread costs the event loop one hop to it and back,
    where aiosqlite takes one per call of the driver (signaling.consent_events.ConsentReader)."""
    url = make_url(settings.database_url).set(drivername="sqlite")
    engine = sa_create_engine(
        url,
        hide_parameters=True,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    _sqlite_setup(engine)
    return engine


class Database:
    """The process's engine with a read and a write sessionmaker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._read = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._write = async_sessionmaker(
            engine.execution_options(**{_WRITE_OPTION: True}),
            expire_on_commit=False,
            autoflush=False,
        )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def session(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed when the block ends, else rolled back."""
        if not write:
            async with self._read() as session, session.begin():
                yield session
            return
        if self._write_lock is None:
            async with self._write() as session, session.begin():
                yield session
            return
        async with self._write_lock, self._write() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
