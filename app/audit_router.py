"""Reading the audit trail: `GET /api/v1/audit-events` (admin), as JSON pages or one CSV export.

Newest first, paged by keyset on the event's id: the cursor is an opaque token naming the last id
a page held, so a page never shifts when events are added while someone reads (they land before
the first page, not between pages). Reading the trail is itself recorded in it.

The CSV export is streamed in batches, each read in a short transaction of its own, so exporting
years of events holds no transaction open and no more than a batch in memory. A cell that a
spreadsheet would take for a formula (`=`, `+`, `-`, `@`, tab, carriage return first) is prefixed
with `'` (OWASP's advice against CSV injection).
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import AuditEvent
from app.db import Database
from app.deps import AdminUser, AuditDep, DatabaseDep, SessionDep
from app.errors import ValidationFailed
from app.validation import UTCInstant

router = APIRouter(tags=["audit"])

PAGE_DEFAULT = 100
PAGE_MAX = 500
EXPORT_BATCH = 1000
CURSOR_PREFIX = "a1:"
CSV_COLUMNS = (
    "id",
    "at",
    "actor_id",
    "actor_role",
    "action",
    "resource_type",
    "resource_id",
    "outcome",
    "ip",
    "user_agent",
    "request_id",
    "details",
)


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: dt.datetime
    actor_id: uuid.UUID | None
    actor_role: str
    action: str
    resource_type: str
    resource_id: str | None
    outcome: str
    ip: str | None
    user_agent: str | None
    request_id: str | None
    details: dict[str, Any] | None


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a page ended at; 422 for anything this server did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    number = text.removeprefix(CURSOR_PREFIX)
    if not text.startswith(CURSOR_PREFIX) or not number.isdigit() or len(number) > 19:
        raise ValidationFailed(
            "The cursor is not one this server handed out.",
            details=[{"loc": ["query", "cursor"], "msg": "unknown cursor"}],
        )
    return int(number)


def _query(
    *,
    actor_id: uuid.UUID | None,
    record_id: str | None,
    start: dt.datetime | None,
    end: dt.datetime | None,
    before_id: int | None,
) -> Select[Any]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc())
    if actor_id is not None:
        query = query.where(AuditEvent.actor_id == actor_id)
    if record_id is not None:
        query = query.where(AuditEvent.resource_id == record_id)
    if start is not None:
        query = query.where(AuditEvent.at >= start)
    if end is not None:
        query = query.where(AuditEvent.at < end)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return query


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


def _csv_rows(events: Sequence[AuditEvent]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for event in events:
        writer.writerow([_cell(getattr(event, column)) for column in CSV_COLUMNS])
    return buffer.getvalue()


async def _export(db: Database, query: Select[Any]) -> AsyncIterator[str]:
    header = io.StringIO()
    csv.writer(header, lineterminator="\r\n").writerow(CSV_COLUMNS)
    yield header.getvalue()
    last_id: int | None = None
    while True:
        page = query if last_id is None else query.where(AuditEvent.id < last_id)
        async with db.session(write=False) as session:
            events: list[AuditEvent] = list(
                (await session.execute(page.limit(EXPORT_BATCH))).scalars()
            )
        if not events:
            return
        yield _csv_rows(events)
        if len(events) < EXPORT_BATCH:
            return
        last_id = events[-1].id


async def _page(session: AsyncSession, query: Select[Any], limit: int) -> AuditEventPage:
    events: list[AuditEvent] = list((await session.execute(query.limit(limit + 1))).scalars())
    more = len(events) > limit
    events = events[:limit]
    return AuditEventPage(
        items=[AuditEventOut.model_validate(event) for event in events],
        next_cursor=encode_cursor(events[-1].id) if more else None,
    )


@router.get(
    "/audit-events",
    response_model=AuditEventPage,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON page, or CSV"}},
)
async def list_audit_events(
    session: SessionDep,
    db: DatabaseDep,
    _admin: AdminUser,
    audit: AuditDep,
    actor_id: Annotated[uuid.UUID | None, Query()] = None,
    record_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    start: Annotated[UTCInstant | None, Query()] = None,
    end: Annotated[UTCInstant | None, Query()] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    accept: Annotated[str | None, Header()] = None,
) -> AuditEventPage | StreamingResponse:
    if start is not None and end is not None and end < start:
        raise ValidationFailed(
            "The end is before the start.",
            details=[{"loc": ["query", "end"], "msg": "end before start"}],
        )
    query = _query(
        actor_id=actor_id,
        record_id=record_id,
        start=start,
        end=end,
        before_id=None if cursor is None else decode_cursor(cursor),
    )
    if accept is not None and "text/csv" in accept.lower():
        # Recorded before the export starts: the request's own transaction commits it.
        audit.expect("audit.export", "audit_event")
        return StreamingResponse(
            _export(db, query),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit-events.csv"'},
        )
    event = audit.expect("audit.list", "audit_event")
    page = await _page(session, query, limit)
    audit.listed(event, [item.id for item in page.items])
    return page
