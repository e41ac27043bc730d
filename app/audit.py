"""The audit trail: every staff read or change of patient data, append-only.

A route names what it is about to do (`audit.expect(...)`); the request's write session adds the
event in the same transaction as the change when the request succeeds, and in a transaction of
its own, with the error code as outcome, when it fails. The database refuses updates and deletes
of audit rows (triggers in the migrations).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Uuid, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime, utcnow

# Ids listed on one event of a list read; enough for every page the API serves.
MAX_LISTED_IDS = 1000


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str | None] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


_INSERT = insert(AuditEvent.__table__)  # type: ignore[arg-type]  # a Table


@dataclass(slots=True)
class PendingEvent:
    action: str
    resource_type: str
    resource_id: str | None = None
    details: dict[str, Any] | None = None


@dataclass(slots=True)
class Audit:
    """The request's audit context: who is acting, from where, and what they are doing."""

    actor_id: uuid.UUID | None
    actor_role: str
    ip: str | None
    user_agent: str | None
    request_id: str | None
    pending: list[PendingEvent] = field(default_factory=list)

    def expect(
        self, action: str, resource_type: str, resource_id: object | None = None
    ) -> PendingEvent:
        event = PendingEvent(
            action, resource_type, None if resource_id is None else str(resource_id)
        )
        self.pending.append(event)
        return event

    def listed(self, event: PendingEvent, ids: list[Any]) -> None:
        event.details = {"count": len(ids), "ids": [str(i) for i in ids[:MAX_LISTED_IDS]]}

    def rows(self, outcome: str) -> list[dict[str, Any]]:
        now = utcnow()
        return [
            {
                "at": now,
                "actor_id": self.actor_id,
                "actor_role": self.actor_role,
                "action": event.action,
                "resource_type": event.resource_type,
                "resource_id": event.resource_id,
                "outcome": outcome,
                "ip": self.ip,
                "user_agent": self.user_agent,
                "request_id": self.request_id,
                "details": event.details,
            }
            for event in self.pending
        ]

    async def write(self, session: AsyncSession, outcome: str) -> None:
        """Insert the pending events into the session's transaction (one Core statement)."""
        if self.pending:
            await session.execute(_INSERT, self.rows(outcome))
            self.pending.clear()


async def record_event(
    session: AsyncSession,
    *,
    actor_id: uuid.UUID | None,
    actor_role: str,
    action: str,
    resource_type: str,
    resource_id: object,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    """An event outside any HTTP request (a socket's action, the relay's own decision)."""
    await session.execute(
        _INSERT,
        [
            {
                "at": utcnow(),
                "actor_id": actor_id,
                "actor_role": actor_role,
                "action": action,
                "resource_type": resource_type,
                "resource_id": str(resource_id),
                "outcome": outcome,
                "ip": None,
                "user_agent": None,
                "request_id": None,
                "details": details,
            }
        ],
    )
