"""A call's recordings over HTTP: the list and the file (admins and the appointment's clinician)."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from app.deps import AuditDep, CurrentUser, SessionDep
from app.errors import NotFound
from scheduling import recordings
from scheduling.access import clinical_access, clinical_listing

router = APIRouter(tags=["recordings"])


class RecordingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    started_at: dt.datetime
    ended_at: dt.datetime | None
    bytes: int | None
    stop_reason: str | None = None


class RecordingList(BaseModel):
    items: list[RecordingOut]


def _files(request: Request) -> recordings.RecordingFiles:
    files: recordings.RecordingFiles = request.app.state.recording_files
    return files


@router.get("/appointments/{appointment_id}/recordings", response_model=RecordingList)
async def list_recordings(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> RecordingList:
    appointment = await clinical_listing(session, user, audit, "recording.list", appointment_id)
    found = await recordings.of_appointment(session, appointment.id)
    return RecordingList(items=[RecordingOut.model_validate(r) for r in found])


@router.get("/appointments/{appointment_id}/recordings/{recording_id}/file")
async def download_recording(
    request: Request,
    appointment_id: uuid.UUID,
    recording_id: uuid.UUID,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
) -> FileResponse:
    audit.expect("recording.download", "recording", recording_id)
    appointment = await clinical_access(session, user, appointment_id)
    recording = await recordings.find(
        session, appointment_id=appointment.id, recording_id=recording_id
    )
    if recording is None:
        raise NotFound()
    # A recording still being written has no file to serve yet.
    stored = None if recording.ended_at is None else _files(request).open(recording.file_name)
    if stored is None:
        raise NotFound("The recording is not available.")
    return FileResponse(stored.path, media_type=stored.media_type, filename=stored.name)
