"""What the relay reports about a call, kept in the database: recordings and the call summary.

Implements media.recording.RecordingLog. Every start and stop of a recording is in the audit
trail: the clinician's requests when they are made (signaling.hub), the relay's own stops (a
consent withdrawn, the call ended) here, as the system.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import update

from app.audit import record_event
from app.db import Database
from scheduling.models import Appointment, Recording


class CallRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def started(self, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str) -> None:
        async with self.db.session(write=True) as session:
            session.add(
                Recording(
                    id=recording_id,
                    appointment_id=call_id,
                    file_name=file_name,
                    started_at=dt.datetime.now(dt.UTC),
                )
            )

    async def stopped(
        self, call_id: uuid.UUID, recording_id: uuid.UUID, size: int, reason: str
    ) -> None:
        async with self.db.session(write=True) as session:
            await session.execute(
                update(Recording)
                .where(Recording.id == recording_id)
                .values(ended_at=dt.datetime.now(dt.UTC), bytes=size, stop_reason=reason)
            )
            if reason != "stopped":  # not the clinician's request: the relay's own decision
                await record_event(
                    session,
                    actor_id=None,
                    actor_role="system",
                    action="recording.stop",
                    resource_type="appointment",
                    resource_id=call_id,
                    details={"recording_id": str(recording_id), "reason": reason},
                )

    async def summary(self, call_id: uuid.UUID, summary: dict[str, Any]) -> None:
        async with self.db.session(write=True) as session:
            await session.execute(
                update(Appointment).where(Appointment.id == call_id).values(call_summary=summary)
            )
