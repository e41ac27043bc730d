"""Start-up chores that touch the database."""

from __future__ import annotations

import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.auth import service as auth_service
from app.auth.models import Role, User
from app.config import Settings
from app.db import Database
from app.errors import Conflict

logger = logging.getLogger("televisit.bootstrap")


async def ensure_admin(db: Database, settings: Settings) -> None:
    """Create the configured admin when no user exists yet (a fresh installation)."""
    if not settings.admin_email or settings.admin_password is None:
        return
    async with db.session(write=False) as session:
        count = (await session.execute(select(func.count()).select_from(User))).scalar_one()
    if count:
        return
    try:
        async with db.session(write=True) as session:
            await auth_service.create_user(
                session,
                email=settings.admin_email,
                password=settings.admin_password.get_secret_value(),
                role=Role.ADMIN.value,
                name="Administrator",
                timezone="UTC",
            )
    except (Conflict, IntegrityError):
        # Another process of this deployment created it first.
        return
    logger.info("created the configured admin", extra={"event": "admin_created"})
