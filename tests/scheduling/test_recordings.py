"""Recordings at rest: sealed files streamed decrypted to who may see them, listed, deleted by
an admin, and deleted by retention once across processes (both databases)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import logging
import uuid
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError
from sqlalchemy import select, update

from app import cli
from app.audit import AuditEvent
from app.config import Settings
from app.db import Database
from app.main import create_app
from app.sealed import HEADER_BYTES, SEGMENT, TAG_BYTES, SealedWriter
from scheduling.models import Appointment, Recording, Status
from scheduling.recordings import RecordingFiles, Retention, seal_plain
from tests.conftest import TEST_SECRET, ServerFactory
from tests.factories import Person, Staff
from tests.signaling.helpers import make_visit
from tests.webm import write_webm

EBML = b"\x1a\x45\xdf\xa3"
DAY = dt.timedelta(days=1)


def webm(frames: int = 20) -> bytes:
    out = io.BytesIO()
    write_webm(out, frames)
    return out.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "recordings"
    path.mkdir()
    return path


@pytest.fixture
def settings(settings: Settings, folder: Path) -> Settings:
    """The suite's settings, with recordings in this test's folder (the app and db use them)."""
    return settings.model_copy(update={"recordings_dir": folder})


@pytest.fixture
def files(settings: Settings, folder: Path) -> RecordingFiles:
    return RecordingFiles(folder, settings.recordings_seal_key())


async def add_recording(
    db: Database,
    files: RecordingFiles,
    clinician: Person,
    by: Person,
    *,
    data: bytes | None = None,
    ended: dt.datetime | None = None,
    in_progress: bool = False,
    call_going_on: bool = True,
    sealed: bool = True,
    appointment_id: uuid.UUID | None = None,
) -> Recording:
    """A recording row and its file, sealed as the recorder seals them (or plain, as before).

    `in_progress`: no end reported and the file not closed, the call going on (or, without
    `call_going_on`, over: its process died mid-recording)."""
    if appointment_id is None:
        appointment_id = (await make_visit(db, clinician, by=by)).appointment_id
    data = webm() if data is None else data
    ended = ended or dt.datetime.now(dt.UTC)
    recording_id = uuid.uuid4()
    name = f"{appointment_id}-{recording_id.hex[:8]}.webm"
    if in_progress:  # the writer not closed yet: whole segments, none marked last
        name += ".sealed"
        path = files.folder / name
        with SealedWriter(path, files.key) as writer:
            writer.write(data + bytes(2 * SEGMENT))
        whole = (path.stat().st_size - HEADER_BYTES - 1) // (SEGMENT + TAG_BYTES)  # not the last
        path.write_bytes(path.read_bytes()[: HEADER_BYTES + whole * (SEGMENT + TAG_BYTES)])
    elif sealed:
        name += ".sealed"
        with SealedWriter(files.folder / name, files.key) as writer:
            writer.write(data)
    else:
        (files.folder / name).write_bytes(data)
    recording = Recording(
        id=recording_id,
        appointment_id=appointment_id,
        file_name=name,
        started_at=ended - dt.timedelta(minutes=10),
        ended_at=None if in_progress else ended,
        bytes=None if in_progress else len(data),
        stop_reason=None if in_progress else "stopped",
    )
    async with db.session(write=True) as session:
        session.add(recording)
        if in_progress and call_going_on:
            await session.execute(
                update(Appointment)
                .where(Appointment.id == appointment_id)
                .values(status=Status.IN_CALL.value)
            )
    return recording


async def audit_outcomes(db: Database, action: str, resource_id: uuid.UUID) -> list[str]:
    async with db.session(write=False) as session:
        rows = await session.scalars(
            select(AuditEvent.outcome)
            .where(AuditEvent.action == action, AuditEvent.resource_id == str(resource_id))
            .order_by(AuditEvent.id)
        )
        return list(rows.all())


async def exists(db: Database, recording_id: uuid.UUID) -> bool:
    async with db.session(write=False) as session:
        return await session.get(Recording, recording_id) is not None


async def read_into(
    into: bytearray, http: httpx.AsyncClient, url: str, person: Person, length: int
) -> None:
    """Stream the file into `into` as it comes (what arrived stays when the stream breaks)."""
    async with http.stream("GET", url, headers=person.headers) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(length)
        async for chunk in response.aiter_bytes():
            into += chunk


def file_url(recording: Recording) -> str:
    return f"/api/v1/recordings/{recording.id}/file"


def appointment_file_url(recording: Recording) -> str:
    return f"/api/v1/appointments/{recording.appointment_id}/recordings/{recording.id}/file"


class TestStreamed:
    async def test_staff_who_may_see_it_get_the_webm_decrypted(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        data = webm()
        recording = await add_recording(db, files, staff.clinician, staff.scheduler, data=data)
        on_disk = (files.folder / recording.file_name).read_bytes()
        assert not on_disk.startswith(EBML)
        assert data[:200] not in on_disk
        for url in (file_url(recording), appointment_file_url(recording)):
            for person in (staff.admin, staff.clinician):
                response = await client.get(url, headers=person.headers)
                assert response.status_code == 200
                assert response.content == data
                assert response.headers["content-length"] == str(len(data))
                assert response.headers["content-type"] == "video/webm"
                assert response.headers["cache-control"] == "no-store"
                assert (
                    recording.file_name.removesuffix(".sealed")
                    in (response.headers["content-disposition"])
                )
        with av.open(io.BytesIO(response.content), "r") as container:
            assert sum(1 for _ in container.decode(video=0)) == 20
        assert await audit_outcomes(db, "recording.download", recording.id) == ["success"] * 4

    async def test_others_are_refused_without_learning_it_exists(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        recording = await add_recording(db, files, staff.clinician, staff.scheduler)
        for url in (file_url(recording), appointment_file_url(recording)):
            other = await client.get(url, headers=staff.other_clinician.headers)
            assert other.status_code == 404
            assert other.json()["error"]["code"] == "not_found"
            scheduler = await client.get(url, headers=staff.scheduler.headers)
            assert scheduler.status_code == 403
            assert (await client.get(url)).status_code == 401
        unknown = await client.get(
            f"/api/v1/recordings/{uuid.uuid4()}/file", headers=staff.admin.headers
        )
        assert unknown.status_code == 404
        # A malformed id names nothing: as unknown as a well-formed one (app.errors).
        bad = await client.get("/api/v1/recordings/not-a-uuid/file", headers=staff.admin.headers)
        assert bad.status_code == 404
        assert bad.json()["error"]["code"] == "not_found"
        foreign = await client.get(
            f"/api/v1/appointments/{uuid.uuid4()}/recordings/{recording.id}/file",
            headers=staff.admin.headers,
        )
        assert foreign.status_code == 404

    async def test_a_file_cut_short_by_a_crash_is_refused_clearly_and_audited(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        data = np.random.default_rng(1).bytes(3 * SEGMENT + 100)
        recording = await add_recording(db, files, staff.clinician, staff.scheduler, data=data)
        path = files.folder / recording.file_name
        # What a crash leaves: whole segments, none marked last.
        path.write_bytes(path.read_bytes()[: HEADER_BYTES + 2 * (SEGMENT + TAG_BYTES)])
        response = await client.get(file_url(recording), headers=staff.admin.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "recording_unreadable"
        assert await audit_outcomes(db, "recording.download", recording.id) == [
            "recording_unreadable"
        ]

    async def test_a_change_found_mid_file_cuts_the_download_short(
        self,
        live_server_factory: ServerFactory,
        db: Database,
        files: RecordingFiles,
        staff: Staff,
    ) -> None:
        server = live_server_factory(recordings_dir=str(files.folder))
        data = np.random.default_rng(2).bytes(4 * SEGMENT + 100)
        recording = await add_recording(db, files, staff.clinician, staff.scheduler, data=data)
        path = files.folder / recording.file_name
        raw = bytearray(path.read_bytes())
        raw[HEADER_BYTES + 2 * (SEGMENT + TAG_BYTES) + 7] ^= 1  # the third segment
        path.write_bytes(bytes(raw))
        received = bytearray()
        async with httpx.AsyncClient(base_url=server.url) as http:
            with pytest.raises(httpx.RemoteProtocolError):  # never a whole, wrong file
                await read_into(received, http, file_url(recording), staff.admin, len(data))
        assert bytes(received) == data[: len(received)]
        assert len(received) <= 2 * SEGMENT
        assert "recording.unreadable" in server.logs()
        assert "Pat Visit" not in server.logs()

    async def test_another_key_a_missing_file_and_one_still_written(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        foreign_key = RecordingFiles(files.folder, bytes(32))
        other_key = await add_recording(db, foreign_key, staff.clinician, staff.scheduler)
        response = await client.get(file_url(other_key), headers=staff.admin.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "recording_unreadable"

        missing = await add_recording(db, files, staff.clinician, staff.scheduler)
        (files.folder / missing.file_name).unlink()
        response = await client.get(file_url(missing), headers=staff.admin.headers)
        assert response.status_code == 410
        assert response.json()["error"]["code"] == "recording_file_missing"

        writing = await add_recording(db, files, staff.clinician, staff.scheduler, in_progress=True)
        response = await client.get(file_url(writing), headers=staff.clinician.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "recording_in_progress"

    async def test_a_recording_whose_process_died_is_cut_short_not_in_progress(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        orphan = await add_recording(
            db, files, staff.clinician, staff.scheduler, in_progress=True, call_going_on=False
        )
        response = await client.get(file_url(orphan), headers=staff.clinician.headers)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "recording_unreadable"
        url = f"/api/v1/recordings/{orphan.id}"
        deleted = await client.delete(url, headers=staff.admin.headers)
        assert deleted.status_code == 204
        assert not (files.folder / orphan.file_name).exists()

    async def test_a_plain_webm_from_before_sealing_still_plays(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        data = webm()
        recording = await add_recording(
            db, files, staff.clinician, staff.scheduler, data=data, sealed=False
        )
        response = await client.get(
            appointment_file_url(recording), headers=staff.clinician.headers
        )
        assert response.status_code == 200
        assert response.content == data
        assert response.headers["content-length"] == str(len(data))


class TestSealingOldOnes:
    async def test_the_command_seals_plain_files_in_place(
        self,
        client: httpx.AsyncClient,
        settings: Settings,
        db: Database,
        files: RecordingFiles,
        staff: Staff,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        data = webm()
        old = await add_recording(
            db, files, staff.clinician, staff.scheduler, data=data, sealed=False
        )
        new = await add_recording(db, files, staff.clinician, staff.scheduler)
        # An earlier run interrupted after writing its copy: the copy is made again.
        (files.folder / f"{old.file_name}.sealed").write_bytes(b"half")
        for name, value in {
            "DATABASE_URL": settings.database_url,
            "SECRET_KEY": TEST_SECRET,
            "ENVIRONMENT": "test",
            "RECORDINGS_DIR": str(files.folder),
        }.items():
            monkeypatch.setenv(f"TELEVISIT_{name}", value)
        await asyncio.to_thread(cli.main, ["recordings", "seal"])
        async with db.session(write=False) as session:
            names = {
                row.id: row.file_name
                for row in await session.scalars(
                    select(Recording).where(Recording.id.in_([old.id, new.id]))
                )
            }
        assert names == {old.id: f"{old.file_name}.sealed", new.id: new.file_name}
        assert not (files.folder / old.file_name).exists()
        assert not (files.folder / names[old.id]).read_bytes().startswith(EBML)
        response = await client.get(file_url(old), headers=staff.admin.headers)
        assert response.content == data
        # Nothing left to do: a second run changes nothing.
        assert await seal_plain(db, files) == 0


class TestListed:
    async def test_newest_first_in_pages_each_sees_their_own(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        mine = [
            await add_recording(
                db, files, staff.clinician, staff.scheduler, data=b"x", ended=now - n * DAY
            )
            for n in range(5)
        ]
        theirs = await add_recording(db, files, staff.other_clinician, staff.scheduler)
        seen: list[dict[str, object]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = await client.get(
                "/api/v1/recordings", params=params, headers=staff.clinician.headers
            )
            assert page.status_code == 200
            seen += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert [item["id"] for item in seen] == [str(r.id) for r in mine]
        first = seen[0]
        assert set(first) >= {
            "id",
            "appointment_id",
            "clinician_id",
            "started_at",
            "ended_at",
            "size_bytes",
            "expires_at",
        }
        assert first["clinician_id"] == str(staff.clinician.id)
        assert first["size_bytes"] == 1
        expires = dt.datetime.fromisoformat(str(first["expires_at"]))
        assert expires == now + dt.timedelta(days=30)

        everyone = await client.get(
            "/api/v1/recordings", params={"limit": 200}, headers=staff.admin.headers
        )
        ids = [item["id"] for item in everyone.json()["items"]]
        assert str(theirs.id) in ids
        assert str(mine[0].id) in ids
        assert (
            await client.get("/api/v1/recordings", headers=staff.scheduler.headers)
        ).status_code == 403
        bad = await client.get(
            "/api/v1/recordings", params={"cursor": "bm90IG91cnM"}, headers=staff.admin.headers
        )
        assert bad.status_code == 422
        too_many = await client.get(
            "/api/v1/recordings", params={"limit": 1000}, headers=staff.admin.headers
        )
        assert too_many.status_code == 422


class TestDeleted:
    async def test_an_admin_deletes_file_and_row_audited(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        recording = await add_recording(db, files, staff.clinician, staff.scheduler)
        url = f"/api/v1/recordings/{recording.id}"
        assert (await client.delete(url, headers=staff.clinician.headers)).status_code == 403
        assert (await client.delete(url, headers=staff.scheduler.headers)).status_code == 403
        response = await client.delete(url, headers=staff.admin.headers)
        assert response.status_code == 204
        assert not (files.folder / recording.file_name).exists()
        assert not await exists(db, recording.id)
        assert await audit_outcomes(db, "recording.delete", recording.id) == ["success"]
        again = await client.delete(url, headers=staff.admin.headers)
        assert again.status_code == 404
        assert (
            await client.get(file_url(recording), headers=staff.admin.headers)
        ).status_code == 404
        assert (
            await client.delete("/api/v1/recordings/x", headers=staff.admin.headers)
        ).status_code == 404

    async def test_one_still_written_is_not_deleted(
        self, client: httpx.AsyncClient, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        writing = await add_recording(db, files, staff.clinician, staff.scheduler, in_progress=True)
        response = await client.delete(
            f"/api/v1/recordings/{writing.id}", headers=staff.admin.headers
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "recording_in_progress"
        assert (files.folder / writing.file_name).exists()


class TestRetention:
    async def test_expired_deleted_fresh_kept_missing_file_fine(
        self, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        old = await add_recording(db, files, staff.clinician, staff.scheduler, ended=now - 31 * DAY)
        gone = await add_recording(
            db, files, staff.clinician, staff.scheduler, ended=now - 40 * DAY
        )
        (files.folder / gone.file_name).unlink()
        fresh = await add_recording(
            db, files, staff.clinician, staff.scheduler, ended=now - 29 * DAY
        )
        retention = Retention(db=db, files=files, retention_days=30)
        assert await retention.run_once() >= 2
        assert not await exists(db, old.id)
        assert not await exists(db, gone.id)
        assert not (files.folder / old.file_name).exists()
        assert await exists(db, fresh.id)
        assert (files.folder / fresh.file_name).exists()
        for recording in (old, gone):
            assert await audit_outcomes(db, "recording.delete", recording.id) == ["success"]
        assert await audit_outcomes(db, "recording.delete", fresh.id) == []

    async def test_two_processes_racing_delete_each_once(
        self, settings: Settings, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        from app.db import create_engine

        now = dt.datetime.now(dt.UTC)
        expired = [
            await add_recording(
                db, files, staff.clinician, staff.scheduler, data=b"y", ended=now - 45 * DAY
            )
            for _ in range(12)
        ]
        # Two processes: an engine (a pool, on SQLite a write lock) each.
        other = Database(create_engine(settings))
        try:
            workers = [
                Retention(db=db, files=files, retention_days=30),
                Retention(db=other, files=files, retention_days=30),
            ]
            counts = await asyncio.gather(*(w.run_once() for w in workers))
        finally:
            await other.dispose()
        assert sum(counts) >= len(expired)
        for recording in expired:
            assert not await exists(db, recording.id)
            assert await audit_outcomes(db, "recording.delete", recording.id) == ["success"]

    async def test_the_app_runs_it_from_its_lifespan(
        self, settings: Settings, db: Database, files: RecordingFiles, staff: Staff
    ) -> None:
        old = await add_recording(
            db, files, staff.clinician, staff.scheduler, ended=dt.datetime.now(dt.UTC) - 60 * DAY
        )
        application = create_app(settings)
        async with LifespanManager(application):
            async with asyncio.timeout(30):
                while await exists(db, old.id):  # noqa: ASYNC110 (another task's row)
                    await asyncio.sleep(0.05)
        assert not (files.folder / old.file_name).exists()
        assert await audit_outcomes(db, "recording.delete", old.id) == ["success"]


class TestLogs:
    async def test_no_patient_data_or_key_in_any_log_line(
        self,
        client: httpx.AsyncClient,
        db: Database,
        files: RecordingFiles,
        staff: Staff,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        patient = "Zelda Quernbystone"
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name=patient)
        at = visit.appointment_id
        served = await add_recording(db, files, staff.clinician, staff.scheduler, appointment_id=at)
        broken = await add_recording(
            db, files, staff.clinician, staff.scheduler, data=bytes(3 * SEGMENT), appointment_id=at
        )
        path = files.folder / broken.file_name
        path.write_bytes(path.read_bytes()[: HEADER_BYTES + SEGMENT + TAG_BYTES])
        old = await add_recording(
            db,
            files,
            staff.clinician,
            staff.scheduler,
            ended=dt.datetime.now(dt.UTC) - 90 * DAY,
            appointment_id=at,
        )
        assert (await client.get(file_url(served), headers=staff.admin.headers)).status_code == 200
        assert (await client.get(file_url(broken), headers=staff.admin.headers)).status_code == 409
        assert await Retention(db=db, files=files, retention_days=30).run_once() >= 1
        assert not await exists(db, old.id)
        url = f"/api/v1/recordings/{served.id}"
        assert (await client.delete(url, headers=staff.admin.headers)).status_code == 204
        logged = caplog.text + repr([record.__dict__ for record in caplog.records])
        assert "recording.unreadable" in logged  # the lines were captured
        assert "recording.retention" in logged
        assert patient not in logged
        assert base64.b64encode(files.key).decode() not in logged
        assert files.key.hex() not in logged


class TestSettings:
    KEY = base64.b64encode(bytes(range(32))).decode()

    def test_a_configured_key_is_the_key(self) -> None:
        settings = Settings(recordings_key=self.KEY)  # type: ignore[arg-type]  # parsed
        assert settings.recordings_seal_key() == bytes(range(32))
        assert Settings().recordings_retention_days == 30

    @pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
    def test_a_malformed_key_is_refused_without_showing_it(self, bad: str) -> None:
        with pytest.raises(ValidationError) as refused:
            Settings(recordings_key=bad)  # type: ignore[arg-type]  # parsed
        [error] = refused.value.errors()
        assert "TELEVISIT_RECORDINGS_KEY" in error["msg"]
        assert bad not in error["msg"]

    def test_the_command_refuses_to_start_and_says_why(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        secret_looking = base64.b64encode(b"sixteen byte key").decode()
        monkeypatch.setenv("TELEVISIT_RECORDINGS_KEY", secret_looking)
        with pytest.raises(SystemExit) as stopped:
            cli._settings()  # what `televisit serve` reads its settings with
        assert stopped.value.code == 2
        said = capsys.readouterr()
        assert "TELEVISIT_RECORDINGS_KEY must be 32 bytes" in said.err
        assert secret_looking not in said.err + said.out
