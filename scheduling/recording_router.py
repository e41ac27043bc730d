"""Recordings over HTTP (admins and the appointment's clinician; schedulers never).

Files are streamed decrypted as they are read (scheduling.recordings.RecordingFiles), never
kept in clear anywhere, with `Cache-Control: no-store`. Every read and delete is audited,
refused ones too.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from app.auth.models import Role
from app.auth.principal import Principal
from app.deps import AdminUser, AuditDep, CurrentUser, SessionDep, SettingsDep
from app.errors import Conflict, Forbidden, Gone, NotFound, ValidationFailed
from app.sealed import SealError
from scheduling import recordings
from scheduling.access import clinical_access, clinical_listing
from scheduling.models import Appointment, Recording

logger = logging.getLogger("televisit.recordings")

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


class RecordingItem(BaseModel):
    id: uuid.UUID
    appointment_id: uuid.UUID
    clinician_id: uuid.UUID
    started_at: dt.datetime
    ended_at: dt.datetime | None
    size_bytes: int | None
    expires_at: dt.datetime
    stop_reason: str | None


class RecordingPage(BaseModel):
    items: list[RecordingItem]
    next_cursor: str | None


def _files(request: Request) -> recordings.RecordingFiles:
    files: recordings.RecordingFiles = request.app.state.recording_files
    return files


FilesDep = Annotated[recordings.RecordingFiles, Depends(_files)]


@router.get("/appointments/{appointment_id}/recordings", response_model=RecordingList)
async def list_recordings(
    appointment_id: uuid.UUID, session: SessionDep, user: CurrentUser, audit: AuditDep
) -> RecordingList:
    appointment = await clinical_listing(session, user, audit, "recording.list", appointment_id)
    found = await recordings.of_appointment(session, appointment.id)
    return RecordingList(items=[RecordingOut.model_validate(r) for r in found])


@router.get("/recordings", response_model=RecordingPage)
async def list_all_recordings(
    settings: SettingsDep,
    session: SessionDep,
    user: CurrentUser,
    audit: AuditDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> RecordingPage:
    """Newest first: every recording for an admin, a clinician's own for a clinician."""
    event = audit.expect("recording.list", "recording")
    if user.role == Role.SCHEDULER:
        raise Forbidden()
    after = None
    if cursor is not None:
        after = recordings.decode_cursor(cursor)
        if after is None:
            raise ValidationFailed(
                "The cursor is not one this server handed out.",
                details=[{"loc": ["query", "cursor"], "msg": "unknown cursor"}],
            )
    found = await recordings.newest(
        session,
        clinician_id=None if user.role == Role.ADMIN else user.id,
        limit=limit + 1,
        after=after,
    )
    more = len(found) > limit
    found = found[:limit]
    audit.listed(event, [item.recording.id for item in found])
    days = settings.recordings_retention_days
    return RecordingPage(
        items=[
            RecordingItem(
                id=item.recording.id,
                appointment_id=item.recording.appointment_id,
                clinician_id=item.clinician_id,
                started_at=item.recording.started_at,
                ended_at=item.recording.ended_at,
                size_bytes=item.recording.bytes,
                expires_at=recordings.expires_at(item.recording, days),
                stop_reason=item.recording.stop_reason,
            )
            for item in found
        ],
        next_cursor=recordings.encode_cursor(found[-1].recording) if more else None,
    )


def _log_unreadable(recording: Recording, message: str) -> None:
    extra = {"event": "recording.unreadable", "appointment_id": str(recording.appointment_id)}
    logger.warning(message, extra=extra)


def _stream(recording: Recording, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The plaintext; a change found mid-file ends the response short of its length (the
    client sees a broken download, never a wrong one) and is logged (the request's id leads
    to the download's audit event, which names the recording)."""
    try:
        yield from chunks
    except SealError:
        _log_unreadable(recording, "recording changed mid-file: download cut short")


async def _serve(
    files: recordings.RecordingFiles, recording: Recording, appointment: Appointment
) -> StreamingResponse:
    if recordings.being_written(recording, appointment):
        raise Conflict("The recording is still being made.", code="recording_in_progress")
    try:
        # Two segments read and opened: off the event loop, which also carries the calls.
        stored = await run_in_threadpool(files.open, recording.file_name)
    except recordings.Unreadable:
        _log_unreadable(recording, "recording file unreadable")
        raise Conflict(
            "The recording's file was changed, cut short or sealed with another key; "
            "it cannot be played.",
            code="recording_unreadable",
        ) from None
    if stored is None:
        raise Gone("The recording's file is no longer there.", code="recording_file_missing")
    return StreamingResponse(
        _stream(recording, stored.chunks),
        media_type=stored.media_type,
        headers={
            "Content-Length": str(stored.size),
            "Content-Disposition": f'attachment; filename="{stored.name}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/appointments/{appointment_id}/recordings/{recording_id}/file")
async def download_recording(
    appointment_id: uuid.UUID,
    recording_id: uuid.UUID,
    session: SessionDep,
    files: FilesDep,
    user: CurrentUser,
    audit: AuditDep,
) -> StreamingResponse:
    audit.expect("recording.download", "recording", recording_id)
    appointment = await clinical_access(session, user, appointment_id)
    recording = await recordings.find(
        session, appointment_id=appointment.id, recording_id=recording_id
    )
    if recording is None:
        raise NotFound()
    return await _serve(files, recording, appointment)


async def _visible(
    session: SessionDep, user: Principal, recording_id: uuid.UUID
) -> tuple[Recording, Appointment]:
    """The recording and its appointment, if the caller may see it (404 for unknown and
    foreign ones alike)."""
    recording = await session.get(Recording, recording_id)
    if user.role == Role.SCHEDULER:
        raise Forbidden()
    if recording is None:
        raise NotFound()
    return recording, await clinical_access(session, user, recording.appointment_id)


@router.get("/recordings/{recording_id}/file")
async def recording_file(
    recording_id: uuid.UUID, user: CurrentUser, audit: AuditDep, db: SessionDep, files: FilesDep
) -> StreamingResponse:
    audit.expect("recording.download", "recording", recording_id)
    return await _serve(files, *await _visible(db, user, recording_id))


@router.delete("/recordings/{recording_id}", status_code=204)
async def delete_recording(
    recording_id: uuid.UUID, session: SessionDep, files: FilesDep, user: AdminUser, audit: AuditDep
) -> Response:
    """File and row go; the audit trail keeps that it existed and who deleted it."""
    audit.expect("recording.delete", "recording", recording_id).details = {"reason": "admin"}
    try:
        deleted = await recordings.delete_one(session, files, recording_id)
    except recordings.InProgress:
        raise Conflict(
            "The recording is still being made; stop it first.", code="recording_in_progress"
        ) from None
    if not deleted:
        raise NotFound()
    return Response(status_code=204)
