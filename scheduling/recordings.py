"""Recordings of calls: their rows, their files, and what the relay reports about them.

A recording is a row (`scheduling.models.Recording`) and a file. The relay writes the file (one
per recording, in `TELEVISIT_RECORDINGS_DIR`) and reports its start and its stop, which are
kept here (`started`, `stopped`); the HTTP endpoints (scheduling.recording_router) read them.

Every file goes through `RecordingFiles`: `store` once the relay has closed it, `open` to
serve it, `delete` to remove it. That is the one place where encryption at rest and retention
plug in; nothing else reads or removes a recording's file.

Every start and stop is in the audit trail: the clinician's requests when they are made
(signaling), the relay's own stops (a consent withdrawn, the call ended) here, as the system.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import record_event
from app.db import Database
from scheduling.models import Recording

# The stop reason of a recording the clinician stopped; any other is the relay's own decision.
STOPPED_BY_CLINICIAN = "stopped"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A recording's file as it can be served."""

    path: Path
    media_type: str
    name: str


class RecordingFiles:
    """Where recordings' files are kept: the only code that keeps, serves or removes one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, file_name: str) -> Path:
        path = self.folder / file_name
        if path.parent != self.folder:  # a name from our own rows, but never a way out
            raise ValueError("a recording's file name names a file of the folder")
        return path

    async def store(self, file_name: str) -> None:
        """The relay has closed `file_name`: from now on it is kept. Kept as written today."""

    def open(self, file_name: str) -> StoredFile | None:
        """The file to serve, or None when it is not there (never written, or removed)."""
        path = self._path(file_name)
        if not path.is_file():
            return None
        media_type = "video/webm" if path.suffix == ".webm" else "video/x-matroska"
        return StoredFile(path=path, media_type=media_type, name=path.name)

    async def delete(self, file_name: str) -> None:
        """Remove the file, if it is there."""
        self._path(file_name).unlink(missing_ok=True)


async def started(
    db: Database, *, call_id: uuid.UUID, recording_id: uuid.UUID, file_name: str
) -> None:
    """The relay began writing `file_name` for this call."""
    async with db.session(write=True) as session:
        session.add(
            Recording(
                id=recording_id,
                appointment_id=call_id,
                file_name=file_name,
                started_at=dt.datetime.now(dt.UTC),
            )
        )


async def stopped(
    db: Database,
    files: RecordingFiles,
    *,
    call_id: uuid.UUID,
    recording_id: uuid.UUID,
    size: int,
    reason: str,
) -> None:
    """The relay closed the recording's file (`reason`: why it stopped); the file is kept."""
    async with db.session(write=False) as session:
        file_name = await session.scalar(
            select(Recording.file_name).where(Recording.id == recording_id)
        )
    if file_name is not None:
        await files.store(file_name)
    async with db.session(write=True) as session:
        await session.execute(
            update(Recording)
            .where(Recording.id == recording_id)
            .values(ended_at=dt.datetime.now(dt.UTC), bytes=size, stop_reason=reason)
        )
        if reason != STOPPED_BY_CLINICIAN:
            await record_event(
                session,
                actor_id=None,
                actor_role="system",
                action="recording.stop",
                resource_type="appointment",
                resource_id=call_id,
                details={"recording_id": str(recording_id), "reason": reason},
            )


async def of_appointment(session: AsyncSession, appointment_id: uuid.UUID) -> Sequence[Recording]:
    """The appointment's recordings, oldest first."""
    result = await session.scalars(
        select(Recording)
        .where(Recording.appointment_id == appointment_id)
        .order_by(Recording.started_at)
    )
    return result.all()


async def find(
    session: AsyncSession, *, appointment_id: uuid.UUID, recording_id: uuid.UUID
) -> Recording | None:
    """The appointment's recording; None for another appointment's or an unknown one."""
    recording = await session.get(Recording, recording_id)
    if recording is None or recording.appointment_id != appointment_id:
        return None
    return recording
