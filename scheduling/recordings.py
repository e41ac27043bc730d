"""Recordings of calls: their rows, their files, what the relay reports, and their retention.

A recording is a row (`scheduling.models.Recording`) and a file. The relay writes the file (one
per recording, in `TELEVISIT_RECORDINGS_DIR`), sealed while it is written (app.sealed: nothing is
ever on disk in clear), and reports its start and its stop, which are kept here (`started`,
`stopped`); the HTTP endpoints (scheduling.recording_router) read them.

Every file goes through `RecordingFiles`: `open` to serve it (decrypted as it is streamed),
`delete` to remove it. Nothing else reads or removes a recording's file. Files written before
recordings were sealed (plain WebM, recognised by their first bytes) are served as they are
until retention removes them, or sealed in place by `televisit recordings seal` (`seal_plain`).

A recording is deleted, file and row, `TELEVISIT_RECORDINGS_RETENTION_DAYS` after its call
ended (`Retention`, one in every process; each recording is deleted by exactly one of them), or
by an admin (`delete`). What was deleted, by whom and why stays in the audit trail.

Every start and stop is in the audit trail: the clinician's requests when they are made
(signaling), the relay's own stops (a consent withdrawn, the call ended) here, as the system.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import record_event
from app.db import Database, utcnow
from app.sealed import (
    SEALED_SUFFIX,
    SealedWriter,
    SealError,
    check,
    is_sealed,
    open_sealed,
    plaintext_size,
)
from scheduling.models import Appointment, Recording, Status

logger = logging.getLogger("televisit.recordings")

# The stop reason of a recording the clinician stopped; any other is the relay's own decision.
STOPPED_BY_CLINICIAN = "stopped"
# The first bytes of a WebM or Matroska file (EBML): a file from before recordings were sealed.
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
PLAIN_CHUNK = 64 * 1024


class Unreadable(Exception):
    """The file is there but cannot be served: changed, cut short by a crash, another key."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A recording's file as it can be served: its plaintext, a piece at a time."""

    media_type: str
    name: str
    size: int
    chunks: Iterator[bytes]
    sealed: bool


def _plain_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(PLAIN_CHUNK):
            yield chunk


class RecordingFiles:
    """Where recordings' files are kept: the only code that serves or removes one."""

    def __init__(self, folder: Path, key: bytes) -> None:
        self.folder = folder
        self.key = key

    def _path(self, file_name: str) -> Path:
        path = self.folder / file_name
        if path.parent != self.folder:  # a name from our own rows, but never a way out
            raise ValueError("a recording's file name names a file of the folder")
        return path

    def open(self, file_name: str) -> StoredFile | None:
        """The file to serve; None when it is not there (never written, or removed).

        `Unreadable` when it is there but is not a whole file sealed with our key (checked
        before anything is served: its first and last segments; a change in between stops
        the stream where it is found).
        """
        path = self._path(file_name)
        name = file_name.removesuffix(SEALED_SUFFIX)
        media_type = "video/webm" if name.endswith(".webm") else "video/x-matroska"
        try:
            if is_sealed(path):
                check(path, self.key)
                return StoredFile(
                    media_type, name, plaintext_size(path), open_sealed(path, self.key), True
                )
            with path.open("rb") as file:
                legacy = file.read(len(EBML_MAGIC)) == EBML_MAGIC
            if not legacy:
                raise Unreadable("neither a sealed file nor a WebM")
            return StoredFile(media_type, name, path.stat().st_size, _plain_chunks(path), False)
        except FileNotFoundError:
            return None
        except SealError as exc:
            raise Unreadable(str(exc)) from exc

    def delete(self, file_name: str) -> None:
        """Remove the file, if it is there."""
        self._path(file_name).unlink(missing_ok=True)

    def seal(self, file_name: str) -> str | None:
        """Seal a file written before recordings were sealed, next to it (`name.sealed`); the
        sealed file's name, or None when there is nothing to seal (sealed already, or gone).
        The plain file stays until the caller's row names the sealed one."""
        path = self._path(file_name)
        try:
            if is_sealed(path):
                return None
            target = self._path(file_name + SEALED_SUFFIX)
            target.unlink(missing_ok=True)  # an interrupted run's: no row names it
            with path.open("rb") as plain, SealedWriter(target, self.key) as writer:
                while chunk := plain.read(PLAIN_CHUNK):
                    writer.write(chunk)
        except FileNotFoundError:
            return None
        return target.name


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
    *,
    call_id: uuid.UUID,
    recording_id: uuid.UUID,
    size: int,
    reason: str,
) -> None:
    """The relay closed the recording's file (`reason`: why it stopped); `size`: its plaintext."""
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


async def seal_plain(db: Database, files: RecordingFiles) -> int:
    """Seal every finished recording written before sealing (`televisit recordings seal`);
    how many. Each is sealed beside the plain file, its row then names the sealed one, and only
    then is the plain one removed: interrupted at any point, nothing is lost and a second run
    finishes the work."""
    async with db.session(write=False) as session:
        rows = (
            await session.execute(
                select(Recording.id, Recording.file_name).where(Recording.ended_at.is_not(None))
            )
        ).all()
    sealed = 0
    for row_id, file_name in rows:
        new_name = await asyncio.to_thread(files.seal, file_name)
        if new_name is None:
            continue
        async with db.session(write=True) as session:
            moved = await session.execute(
                update(Recording)
                .where(Recording.id == row_id, Recording.file_name == file_name)
                .values(file_name=new_name)
                .returning(Recording.id)
            )
            kept = moved.first() is not None
        # The row went meanwhile (deleted): the sealed copy goes too.
        files.delete(file_name if kept else new_name)
        if kept:
            sealed += 1
    return sealed


# Listing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    recording: Recording
    clinician_id: uuid.UUID


def expires_at(recording: Recording, retention_days: int) -> dt.datetime:
    """When retention deletes it: that long after the call ended (or, never ended, began)."""
    return (recording.ended_at or recording.started_at) + dt.timedelta(days=retention_days)


def encode_cursor(last: Recording) -> str:
    text = f"r1|{last.started_at.astimezone(dt.UTC).isoformat()}|{last.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID] | None:
    """Where a page ended; None for anything this server did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        tag, at, last_id = text.split("|")
        when = dt.datetime.fromisoformat(at)
        if tag != "r1" or when.tzinfo is None:
            return None
        return when, uuid.UUID(last_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


async def newest(
    session: AsyncSession,
    *,
    clinician_id: uuid.UUID | None,
    limit: int,
    after: tuple[dt.datetime, uuid.UUID] | None,
) -> list[Listed]:
    """Recordings newest first (one clinician's, or every one), after a page's last."""
    query = (
        select(Recording, Appointment.clinician_id)
        .join(Appointment, Appointment.id == Recording.appointment_id)
        .order_by(Recording.started_at.desc(), Recording.id.desc())
        .limit(limit)
    )
    if clinician_id is not None:
        query = query.where(Appointment.clinician_id == clinician_id)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                Recording.started_at < at,
                and_(Recording.started_at == at, Recording.id < last_id),
            )
        )
    rows = await session.execute(query)
    return [Listed(recording, clinician) for recording, clinician in rows.all()]


# Deleting --------------------------------------------------------------------------------


class InProgress(Exception):
    """The recording is still being written: there is nothing whole to delete yet."""


def being_written(recording: Recording, appointment: Appointment) -> bool:
    """Still being written: no end reported while its call goes on. With no end reported and
    the call over, its process died mid-recording: the file is cut short, never finished."""
    return recording.ended_at is None and appointment.status == Status.IN_CALL.value


async def delete_one(session: AsyncSession, files: RecordingFiles, recording_id: uuid.UUID) -> bool:
    """Delete the recording, file and row, in the session's transaction; False if unknown.

    The row is locked first, so a retention pass in another process deletes it or waits."""
    recording = await session.scalar(
        select(Recording).where(Recording.id == recording_id).with_for_update()
    )
    if recording is None:
        return False
    appointment = await session.get(Appointment, recording.appointment_id)
    if appointment is not None and being_written(recording, appointment):
        raise InProgress
    files.delete(recording.file_name)
    await session.execute(delete(Recording).where(Recording.id == recording_id))
    return True


# Retention -------------------------------------------------------------------------------

# How often every process looks for recordings past their retention (and once at start).
RETENTION_POLL_SECONDS = 3600.0
RETENTION_BATCH = 100


class Retention:
    """Deletes recordings `retention_days` after their call ended; one in every process.

    Each pass takes due rows in a write transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
    two processes never take one row; on SQLite the write lock serialises the passes), removes
    their files, deletes the rows and audits each, then commits. A process that dies mid-pass
    leaves the rows (a file may already be gone): the next pass deletes them, once.
    """

    def __init__(
        self,
        *,
        db: Database,
        files: RecordingFiles,
        retention_days: int,
        poll_seconds: float = RETENTION_POLL_SECONDS,
    ) -> None:
        self.db = db
        self.files = files
        self.retention = dt.timedelta(days=retention_days)
        self.poll_seconds = poll_seconds
        self._loop: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="recording-retention")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "recordings past retention not deleted this time",
                    extra={"error_type": type(exc).__name__},
                )
            await asyncio.sleep(self.poll_seconds)

    async def run_once(self, now: dt.datetime | None = None) -> int:
        """Delete every recording past retention; how many this process deleted."""
        deleted = 0
        while True:
            batch = await self._pass(now or utcnow())
            deleted += batch
            if batch < RETENTION_BATCH:
                break
        if deleted:
            logger.info(
                "recordings past retention deleted",
                extra={"event": "recording.retention", "count": deleted},
            )
        return deleted

    async def _pass(self, now: dt.datetime) -> int:
        cutoff = now - self.retention
        due = (
            select(Recording.id, Recording.appointment_id, Recording.file_name)
            .where(
                or_(
                    Recording.ended_at < cutoff,
                    and_(Recording.ended_at.is_(None), Recording.started_at < cutoff),
                )
            )
            .order_by(Recording.started_at)
            .limit(RETENTION_BATCH)
            .with_for_update(skip_locked=True)
        )
        async with self.db.session(write=True) as session:
            rows = (await session.execute(due)).all()
            for row_id, appointment_id, file_name in rows:
                self.files.delete(file_name)
                await record_event(
                    session,
                    actor_id=None,
                    actor_role="system",
                    action="recording.delete",
                    resource_type="recording",
                    resource_id=row_id,
                    details={"appointment_id": str(appointment_id), "reason": "retention"},
                )
            if rows:
                await session.execute(
                    delete(Recording).where(Recording.id.in_([row[0] for row in rows]))
                )
        return len(rows)
