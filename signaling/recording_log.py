"""What the relay reports about a call (media.recording.RecordingLog), kept by scheduling.

Recordings are scheduling's (scheduling.recordings: rows, files, audit of the relay's own stops);
the call's summary is kept with the appointment (scheduling.calls).
"""

from __future__ import annotations

import uuid
from typing import Any

from app.db import Database
from scheduling import calls, recordings


class CallRecords:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def started(self, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str) -> None:
        await recordings.started(
            self.db, call_id=call_id, recording_id=recording_id, file_name=file_name
        )

    async def stopped(
        self, call_id: uuid.UUID, recording_id: uuid.UUID, size: int, reason: str
    ) -> None:
        await recordings.stopped(
            self.db,
            call_id=call_id,
            recording_id=recording_id,
            size=size,
            reason=reason,
        )

    async def summary(self, call_id: uuid.UUID, summary: dict[str, Any]) -> None:
        await calls.keep_summary(self.db, call_id, summary)
