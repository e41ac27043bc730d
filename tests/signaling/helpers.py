"""Real WebSocket clients for the signaling tests, and appointments ready for a visit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.db import Database
from scheduling import visits
from scheduling.models import Appointment, Status
from tests.conftest import TEST_SECRET
from tests.factories import Person, Staff

LINK_KEY = visits.link_key(TEST_SECRET.encode())
# Where each clinician's next visit placed by `make_visit` starts (its previous one's end).
_next_start: dict[uuid.UUID, dt.datetime] = {}


@dataclass
class Visit:
    appointment_id: uuid.UUID
    token: str
    clinician: Person


async def make_visit(
    db: Database,
    clinician: Person,
    *,
    by: Person,
    start: dt.datetime | None = None,
    minutes: int = 20,
    name: str = "Pat Visit",
    birth_date: dt.date | None = None,
) -> Visit:
    """An appointment written straight to the database, as if booked (any time, no slot rules).

    Without `start`, the clinician's visits follow each other from 5 minutes from now (the
    database refuses overlaps even here): the first two open their waiting room at once (it
    opens 30 minutes before the start).
    """
    now = dt.datetime.now(dt.UTC)
    if start is None:
        soonest = now.replace(microsecond=0) + dt.timedelta(minutes=5)
        start = max(soonest, _next_start.get(clinician.id, soonest))
        _next_start[clinician.id] = start + dt.timedelta(minutes=minutes)
    salt = visits.new_salt()
    token = visits.token_for(LINK_KEY, salt)
    appointment = Appointment(
        id=uuid.uuid4(),
        clinician_id=clinician.id,
        start_at=start,
        end_at=start + dt.timedelta(minutes=minutes),
        status=Status.BOOKED.value,
        patient_name=name,
        patient_birth_date=birth_date,
        link_salt=salt,
        link_hash=visits.token_hash(token),
        sequence=0,
        created_by_id=by.id,
        created_at=now,
        updated_at=now,
    )
    async with db.session(write=True) as session:
        session.add(appointment)
    return Visit(appointment.id, token, clinician)


async def grant(
    http: httpx.AsyncClient,
    token: str,
    scopes: tuple[str, ...] = ("video_visit",),
    decision: str = "granted",
) -> httpx.Response:
    visit = await http.get(f"/api/v1/visits/{token}")
    version = visit.json()["consent"]["version"]
    response = await http.post(
        f"/api/v1/visits/{token}/consent",
        json={"version": version, "decision": decision, "scopes": list(scopes)},
    )
    assert response.status_code == 201, response.text
    return response


async def consented_visit(
    db: Database, http: httpx.AsyncClient, clinician: Person, *, by: Person, **details: Any
) -> Visit:
    """A booked visit whose patient has granted the video visit (`make_visit`, then `grant`)."""
    visit = await make_visit(db, clinician, by=by, **details)
    await grant(http, visit.token)
    return visit


@dataclass
class Socket:
    """A WebSocket client that reads messages in the background, by type, with timeouts."""

    connection: ClientConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    # Every message in the order it arrived (`received` loses those `expect` has read).
    log: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                message = json.loads(raw)
                async with self._arrived:
                    self.received.append(message)
                    self.log.append(message)
                    self._arrived.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            self.closed.set()
            async with self._arrived:
                self._arrived.notify_all()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.connection.send(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def expect(self, kind: str, within: float = 5.0, **matching: Any) -> dict[str, Any]:
        """The first unread message of this type (and these fields); earlier ones are skipped."""

        def match() -> dict[str, Any] | None:
            for index, message in enumerate(self.received):
                if message.get("type") == kind and all(
                    message.get(k) == v for k, v in matching.items()
                ):
                    del self.received[: index + 1]
                    return message
            return None

        async with asyncio.timeout(within), self._arrived:
            while True:
                found = match()
                if found is not None:
                    return found
                if self.closed.is_set():
                    raise AssertionError(
                        f"closed ({self.close_code}) before a {kind!r} message; got {self.received}"
                    )
                await self._arrived.wait()

    async def take(self, kind: str, within: float = 5.0) -> dict[str, Any]:
        """The first unread message of this type, leaving the others unread (for a task that
        reads one kind beside another that `expect`s the rest)."""
        async with asyncio.timeout(within), self._arrived:
            while True:
                for index, message in enumerate(self.received):
                    if message.get("type") == kind:
                        return self.received.pop(index)
                if self.closed.is_set():
                    raise AssertionError(f"closed ({self.close_code}) before a {kind!r} message")
                await self._arrived.wait()

    async def expect_close(self, within: float = 5.0) -> int | None:
        async with asyncio.timeout(within):
            await self.closed.wait()
        return self.close_code

    async def latest(self, kind: str, within: float = 5.0, settle: float = 0.3) -> dict[str, Any]:
        """The newest message of a type once the socket has been quiet for `settle` seconds."""
        message = await self.expect(kind, within)
        while True:
            try:
                message = await self.expect(kind, settle)
            except TimeoutError:
                return message


@asynccontextmanager
async def open_socket(url: str, **headers: str) -> AsyncIterator[Socket]:
    async with connect(
        url, proxy=None, open_timeout=5, additional_headers=headers or None, max_size=2**20
    ) as connection:
        socket = Socket(connection)
        reader = asyncio.create_task(socket._read())
        try:
            yield socket
        finally:
            await connection.close()
            await reader


@asynccontextmanager
async def checked_in(base_ws: str, visit: Visit) -> AsyncIterator[Socket]:
    """The patient's socket, once the waiting room has said `waiting`."""
    async with open_socket(f"{base_ws}/ws/visits/{visit.token}") as patient:
        await patient.expect("waiting")
        yield patient


@asynccontextmanager
async def console(base_ws: str, token: str) -> AsyncIterator[Socket]:
    async with open_socket(f"{base_ws}/ws/clinic") as socket:
        await socket.send({"type": "auth", "token": token})
        yield socket


@dataclass
class Call:
    """A running call: the patient's socket and the clinician's console that holds it."""

    visit: Visit
    patient: Socket
    desk: Socket

    @property
    def id(self) -> str:
        return str(self.visit.appointment_id)

    async def invite(self, http: httpx.AsyncClient, **details: Any) -> Guest:
        """A guest added by the call's clinician (`add_guest`)."""
        return await add_guest(http, self.visit, self.visit.clinician.headers, **details)

    async def admit(self, guest: Guest) -> None:
        await self.desk.send(
            {"type": "admit", "appointment_id": self.id, "participant_id": guest.id}
        )

    async def from_patient(self, text: str) -> None:
        await self.patient.send({"type": "chat", "text": text})

    async def from_clinician(self, text: str) -> None:
        await self.desk.send({"type": "chat", "appointment_id": self.id, "text": text})


@asynccontextmanager
async def running_call(
    ws: str, staff: Staff, db: Database, http: httpx.AsyncClient, *, name: str = "Pat Patient"
) -> AsyncIterator[Call]:
    """A consented patient admitted by their clinician: both sockets, once each has heard the
    call begin."""
    visit = await consented_visit(db, http, staff.clinician, by=staff.scheduler, name=name)
    async with (
        console(ws, staff.clinician.token) as desk,
        open_socket(f"{ws}/ws/visits/{visit.token}") as patient,
    ):
        await patient.expect("waiting")
        await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
        await patient.expect("admitted")
        await desk.expect("call")
        await patient.expect("peer", event="joined")
        yield Call(visit, patient, desk)


def items(queue: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["appointment_id"]: item for item in queue["items"]}


@dataclass
class Guest:
    id: str
    role: str
    name: str
    token: str

    @property
    def key(self) -> str:
        return f"{self.role}:{self.id}"


async def add_guest(
    http: httpx.AsyncClient,
    visit: Visit,
    headers: dict[str, str],
    *,
    role: str = "interpreter",
    name: str = "Ines Interpreter",
    consent: tuple[str, ...] | None = ("video_visit",),
) -> Guest:
    """A guest of the visit through the API (their own link), their consent granted unless
    `consent` is None."""
    response = await http.post(
        f"/api/v1/appointments/{visit.appointment_id}/participants",
        json={"role": role, "name": name},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    guest = Guest(body["id"], role, name, body["visit_url"].rsplit("/", 1)[-1])
    if consent is not None:
        await grant(http, guest.token, consent)
    return guest
