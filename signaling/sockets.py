"""One WebSocket each: the patient's, and the clinician console's.

A connection has two loops in one task group: a reader (size and rate limits, validation,
dispatch) and a writer (a bounded queue, so a slow client never makes the server wait or grow);
the first to end cancels the other. Nothing a client sends can crash or stall the server: an
unknown, malformed, oversized or too frequent message gets an `error` message and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app.auth.principal import Principal
from scheduling.models import Appointment, Status
from signaling import messages
from signaling.broker import Subscription
from signaling.hub import CLINICIAN, PATIENT, Signaling, SignalingError
from signaling.queue import Snapshot

logger = logging.getLogger("televisit.sockets")

OUTBOX_SIZE = 256
# Token bucket per socket: a burst of candidates is fine, a flood is not.
RATE_PER_SECOND = 40.0
RATE_BURST = 80.0
# Dropped messages after which a flooding socket is closed.
MAX_DROPPED = 200

_CLOSE = object()


class Connection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.id = uuid.uuid4().hex
        # A deque and an event: lighter than asyncio.Queue on the hot path.
        self._outbox: deque[Any] = deque()
        self._queued = asyncio.Event()
        self._tokens, self._refilled = RATE_BURST, time.monotonic()
        self._dropped = 0
        self.closing = False

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a client too slow to take its messages is disconnected."""
        if self.closing:
            return
        if len(self._outbox) >= OUTBOX_SIZE:
            self.close(1013)
            return
        self._outbox.append(message)
        self._queued.set()

    def close(self, code: int = 1000) -> None:
        if self.closing:
            return
        self.closing = True
        self._outbox.append((_CLOSE, code))
        self._queued.set()

    def error(self, code: str, message: str) -> None:
        self.send(messages.error(code, message))

    async def serve(self, handle: Callable[[str], Awaitable[None]]) -> None:
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(self._read(handle))
            writer = group.create_task(self._write())
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, writer):
                if task not in done:
                    task.cancel()

    async def _write(self) -> None:
        while True:
            if not self._outbox:
                self._queued.clear()
                await self._queued.wait()
                continue
            item = self._outbox.popleft()
            if isinstance(item, tuple) and item and item[0] is _CLOSE:
                with contextlib.suppress(Exception):
                    await self.websocket.close(item[1])
                return
            try:
                await self.websocket.send_text(json.dumps(item))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return

    async def _read(self, handle: Callable[[str], Awaitable[None]]) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError):
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                self._reject("unsupported", "Send JSON text messages.")
                continue
            # A character is at most 4 bytes: only long texts need their size in bytes counted.
            if len(text) * 4 > messages.MAX_MESSAGE_BYTES and (
                len(text.encode()) > messages.MAX_MESSAGE_BYTES
            ):
                self._reject("message_too_large", "Messages may be at most 64 KiB.")
                continue
            if not self._take_token():
                self._reject("rate_limited", "Too many messages; slow down.")
                continue
            try:
                await handle(text)
            except messages.InvalidMessage as exc:
                self._reject("invalid_message", str(exc))
            except SignalingError as exc:
                self.error(exc.code, exc.message)
            if self.closing:
                return

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(RATE_BURST, self._tokens + (now - self._refilled) * RATE_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _reject(self, code: str, message: str) -> None:
        self._dropped += 1
        self.error(code, message)
        if self._dropped > MAX_DROPPED:
            self.close(1008)


class PatientSession(Connection):
    """The patient's socket: in the waiting room, then in the call."""

    def __init__(
        self, websocket: WebSocket, signaling: Signaling, appointment: Appointment
    ) -> None:
        super().__init__(websocket)
        self.signaling = signaling
        self.appointment = appointment
        self.in_call = appointment.status == Status.IN_CALL
        self.finished = False
        self._last_place: tuple[int | None, int | None] | None = None
        self._subscription: Subscription | None = None

    async def attach(self) -> None:
        appointment = self.appointment
        self._subscription = await self.signaling.join_participant(
            appointment.id, PATIENT, self.id, self._on_channel
        )
        await self.signaling.watch_queue(appointment.clinician_id, self)
        if self.in_call:
            self.send(messages.admitted(self.signaling.ice_servers(appointment)))
        await self.signaling.queue_changed(appointment.clinician_id)

    async def detach(self) -> None:
        await self.signaling.unwatch_queue(self.appointment.clinician_id, self)
        if self._subscription is not None:
            await self._subscription.cancel()

    def on_queue(self, snapshot: Snapshot) -> None:
        if self.in_call or self.finished:
            return
        place = snapshot.places.get(self.appointment.id)
        if place is None:
            return
        last = self._last_place
        # Again on every change of place; the estimate alone only when it moved a minute.
        if last is None or last[0] != place[0] or abs((last[1] or 0) - (place[1] or 0)) >= 60:
            self._last_place = place
            self.send(messages.waiting(*place))

    async def _on_channel(self, message: dict[str, Any]) -> None:
        if "takeover" in message:
            if message["takeover"] != self.id:
                self.finished = True
                self.error("replaced", "This visit was opened in another window.")
                self.close(4409)
            return
        outgoing = message.get("send")
        if isinstance(outgoing, dict):
            kind = outgoing.get("type")
            if kind == "admitted":
                self.in_call = True
            elif kind == "ended":
                self.in_call, self.finished = False, True
            self.send(outgoing)
        if "close" in message:
            self.finished = True
            self.close(int(message["close"]))

    async def handle(self, text: str) -> None:
        message = messages.parse_patient(text)
        if isinstance(message, messages.Ping):
            self.send(messages.pong())
            return
        call_id = self.appointment.id
        if isinstance(message, messages.DeviceCheck):
            # A write and a queue refresh for every clinician's console: only when it changed.
            if message.verdict != self.appointment.connection_check:
                await self.signaling.device_checked(self.appointment, message.verdict)
                self.appointment.connection_check = message.verdict
            return
        if isinstance(message, messages.Leave):
            if self.in_call:
                await self.signaling.media_request(call_id, PATIENT, "leave", {})
                return
            await self.signaling.leave_waiting_room(self.appointment)
            self.finished = True
            self.send(messages.ended("left"))
            self.close(1000)
            return
        if not self.in_call:
            raise SignalingError("not_in_call", "Wait to be admitted before sending media.")
        if isinstance(message, messages.PeerMessage):
            await self.signaling.to_participant(
                call_id, CLINICIAN, messages.peer_message(PATIENT, message.data)
            )
            return
        if isinstance(message, messages.VideoRequest):
            await self.signaling.media_request(
                call_id, PATIENT, "video", {"enabled": message.enabled}
            )
        elif isinstance(message, messages.Offer | messages.Answer):
            await self.signaling.media_request(call_id, PATIENT, message.type, {"sdp": message.sdp})
        elif isinstance(message, messages.CandidateMessage):
            await self.signaling.media_request(
                call_id,
                PATIENT,
                "candidate",
                {"candidate": messages.candidate_dict(message.candidate)},
            )


class ClinicSession(Connection):
    """A clinician's console: the live queue, and the calls it holds."""

    def __init__(self, websocket: WebSocket, signaling: Signaling, clinician: Principal) -> None:
        super().__init__(websocket)
        self.signaling = signaling
        self.clinician = clinician
        self._calls: dict[uuid.UUID, Subscription] = {}

    async def attach(self) -> None:
        await self.signaling.watch_queue(self.clinician.id, self)
        snapshot = await self.signaling.snapshot(self.clinician.id)
        self.send(snapshot.message())
        # Calls under way come back to this console: it negotiates anew, the old one is closed.
        for appointment in await self.signaling.calls_in_progress(self.clinician.id):
            await self.take_call(appointment)

    async def detach(self) -> None:
        await self.signaling.unwatch_queue(self.clinician.id, self)
        for call_id, subscription in list(self._calls.items()):
            await subscription.cancel()
            await self.signaling.to_participant(call_id, PATIENT, messages.peer("left", CLINICIAN))
        self._calls.clear()

    def on_queue(self, snapshot: Snapshot) -> None:
        self.send(snapshot.message())

    async def take_call(self, appointment: Appointment) -> None:
        call_id = appointment.id
        if call_id not in self._calls:
            self._calls[call_id] = await self.signaling.join_participant(
                call_id, CLINICIAN, self.id, lambda message: self._on_channel(call_id, message)
            )
        self.send(messages.call(call_id, self.signaling.ice_servers(appointment)))

    async def _on_channel(self, call_id: uuid.UUID, message: dict[str, Any]) -> None:
        if "takeover" in message:
            if message["takeover"] != self.id:
                await self._release(call_id)
            return
        outgoing = message.get("send")
        if isinstance(outgoing, dict):
            # On the console socket every call's message names its call (the relay's answers,
            # offers and candidates too): a console may hold several.
            self.send(
                outgoing
                if "appointment_id" in outgoing
                else {**outgoing, "appointment_id": str(call_id)}
            )
        if message.get("release"):
            await self._release(call_id)

    async def _release(self, call_id: uuid.UUID) -> None:
        subscription = self._calls.pop(call_id, None)
        if subscription is not None:
            await subscription.cancel()

    def _holding(self, call_id: uuid.UUID) -> None:
        if call_id not in self._calls:
            raise SignalingError("not_in_call", "This console does not hold that call.")

    async def handle(self, text: str) -> None:
        message = messages.parse_clinic(text)
        if isinstance(message, messages.Ping):
            self.send(messages.pong())
            return
        if isinstance(message, messages.Auth):
            raise SignalingError("already_authenticated", "This socket is authenticated.")
        call_id = message.appointment_id
        if isinstance(message, messages.Admit):
            appointment = await self.signaling.admit(self.clinician.id, call_id)
            await self.take_call(appointment)
        elif isinstance(message, messages.End):
            await self.signaling.end(self.clinician.id, call_id)
        elif isinstance(message, messages.NoShow):
            await self.signaling.no_show(self.clinician.id, call_id)
        elif isinstance(message, messages.ClinicOffer | messages.ClinicAnswer):
            self._holding(call_id)
            await self.signaling.media_request(
                call_id, CLINICIAN, message.type, {"sdp": message.sdp}
            )
        elif isinstance(message, messages.ClinicCandidate):
            self._holding(call_id)
            await self.signaling.media_request(
                call_id,
                CLINICIAN,
                "candidate",
                {"candidate": messages.candidate_dict(message.candidate)},
            )
        elif isinstance(message, messages.ClinicLeave):
            self._holding(call_id)
            await self.signaling.media_request(call_id, CLINICIAN, "leave", {})
        elif isinstance(message, messages.ClinicPeerMessage):
            self._holding(call_id)
            await self.signaling.to_participant(
                call_id, PATIENT, messages.peer_message(CLINICIAN, message.data)
            )
        elif isinstance(message, messages.ClinicVideo):
            self._holding(call_id)
            await self.signaling.media_request(
                call_id, CLINICIAN, "video", {"enabled": message.enabled}
            )
        elif isinstance(message, messages.Record):
            self._holding(call_id)
            await self.signaling.record(self.clinician.id, call_id, message.action)


async def close_with(websocket: WebSocket, message: dict[str, Any], code: int) -> None:
    """Send one message and close: refusals before a session exists."""
    with contextlib.suppress(Exception):
        if websocket.application_state == WebSocketState.CONNECTED:
            await websocket.send_text(json.dumps(message))
        await websocket.close(code)
