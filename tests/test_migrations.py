"""Alembic is the only way the schema is made; models and migrations agree."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from sqlalchemy import text

from app import migrate
from app.config import Settings
from app.db import Database, create_engine

SQLITE_TRIGGERS = {
    "appointments_no_overlap_insert",
    "appointments_no_overlap_update",
    "appointments_bump_version_insert",
    "appointments_bump_version_update",
    "audit_events_no_update",
    "audit_events_no_delete",
    "consent_records_no_update",
    "consent_records_no_delete",
}


async def _triggers(db: Database) -> set[str]:
    async with db.session(write=False) as session:
        result = await session.execute(
            text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        )
        return set(result.scalars())


class TestMigrations:
    async def test_models_and_migrations_agree(self, database_url: str) -> None:
        # `alembic check` raises if autogenerate would emit any operation.
        await asyncio.to_thread(migrate.check, database_url)

    async def test_downgrade_and_upgrade_again(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'roundtrip.db'}"
        config = migrate.alembic_config(url)
        await asyncio.to_thread(command.upgrade, config, "head")
        await asyncio.to_thread(command.downgrade, config, "base")
        await asyncio.to_thread(command.upgrade, config, "head")
        await asyncio.to_thread(migrate.check, url)
        settings = Settings(database_url=url)
        database = Database(create_engine(settings))
        try:
            assert await _triggers(database) >= SQLITE_TRIGGERS
        finally:
            await database.dispose()

    async def test_database_enforces_no_overlap(self, db: Database) -> None:
        if db.is_sqlite:
            assert await _triggers(db) >= SQLITE_TRIGGERS
            return
        async with db.session(write=False) as session:
            kind = await session.scalar(
                text("SELECT contype::text FROM pg_constraint WHERE conname = :name"),
                {"name": "ex_appointments_no_overlap"},
            )
            triggers = set((await session.execute(text("SELECT tgname FROM pg_trigger"))).scalars())
        assert kind == "x"  # an exclusion constraint
        assert {
            "appointments_bump_version",
            "audit_events_append_only",
            "consent_records_append_only",
        } <= triggers

    def test_every_revision_has_a_docstring_and_a_downgrade(self) -> None:
        versions = Path(migrate.__file__).parent.parent / "migrations" / "versions"
        files = sorted(versions.glob("*.py"))
        assert files
        for path in files:
            source = path.read_text()
            assert source.startswith('"""'), path
            assert "def downgrade() -> None:" in source, path
            assert "\n    pass\n" not in source.split("def downgrade")[1], path
