"""One WebSocket each: the patient's, and the clinician console's.

A connection has two loops in one task group: a reader (size and rate limits, validation,
dispatch) and a writer (a bounded queue, so a slow client never makes the server wait or grow);
the first to end cancels the other. Nothing a client sends can crash or stall the server: an
unknown, malformed, oversized or too frequent message gets an `error` message and is dropped.
A message the server cannot act on just now (Redis or the database away) gets an `error` too
(`unavailable`), and the socket stays.

The outgoing queue holds at most `OUTBOX_SIZE` messages and `OUTBOX_BYTES` of JSON: a client
that lets more pile up is too slow to follow the call, and is disconnected (1013, "try again
later"); its page reconnects and gets the current state afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from app.auth.principal import Principal
from app.auth.tokens import TokenClaims
from app.errors import NotAuthenticated
from scheduling import calls, guest_calls
from scheduling.models import Appointment, GuestStatus, Status, VisitGuest
from signaling import messages
from signaling.broker import BrokerUnavailable, Subscription
from signaling.chat import ChatLimit
from signaling.errors import SignalingError
from signaling.hub import CLINICIAN, IN_ROOM, PATIENT, Signaling
from signaling.queue import Snapshot

logger = logging.getLogger("televisit.sockets")

OUTBOX_SIZE = 256
OUTBOX_BYTES = 1024 * 1024
# Token bucket per socket: a burst of candidates is fine, a flood is not.
RATE_PER_SECOND = 40.0
RATE_BURST = 80.0
# Dropped messages after which a flooding socket is closed (each is answered: the burst's
# answers and these refusals together stay under OUTBOX_SIZE, so a flood is closed as one,
# 1008, rather than as a slow reader, 1013).
MAX_DROPPED = 100

_CLOSE = object()


class Connection:
    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.id = uuid.uuid4().hex
        # A deque and an event: lighter than asyncio.Queue on the hot path. Messages wait as
        # JSON text, so the queue's size in bytes is known.
        self._outbox: deque[Any] = deque()
        self._outbox_bytes = 0
        self._queued = asyncio.Event()
        self._tokens, self._refilled = RATE_BURST, time.monotonic()
        self._dropped = 0
        self.closing = False
        # Chat has a tighter limit of its own (signaling.chat).
        self.chat_limit = ChatLimit()

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; a client too slow to take its messages is disconnected."""
        if self.closing:
            return
        text = json.dumps(message)
        if len(self._outbox) >= OUTBOX_SIZE or self._outbox_bytes + len(text) > OUTBOX_BYTES:
            logger.warning("outbox full: closing a socket that does not keep up")
            self.close(1013)
            return
        self._outbox.append(text)
        self._outbox_bytes += len(text)
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
            self._outbox_bytes -= len(item)
            try:
                await self.websocket.send_text(item)
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
            except BrokerUnavailable:
                self.error("unavailable", "Could not do that just now; try again.")
            except Exception as exc:
                # The database away, or a fault of ours: the socket goes on.
                logger.exception("message failed", extra={"error_type": type(exc).__name__})
                self.error("unavailable", "Could not do that just now; try again.")
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


class VisitorSession(Connection):
    """A socket of someone who came by a visit link: the patient's or a guest's. In the waiting
    room, then in the call; what they send in the call goes to the relay as theirs (`key`).

    What differs between the patient and a guest is how their presence is written, what their
    `leave` and their device check do, and what the reconciliation says of them.
    """

    def __init__(
        self, websocket: WebSocket, signaling: Signaling, appointment: Appointment, key: str
    ) -> None:
        super().__init__(websocket)
        self.signaling = signaling
        self.appointment = appointment
        self.key = key
        self.in_call = False
        self.finished = False
        # Set once this socket's check-in is written: from then on the row names it.
        self.checked_in = False
        self._subscription: Subscription | None = None

    @property
    def appointment_id(self) -> uuid.UUID:
        return self.appointment.id

    @property
    def name(self) -> str:
        """The name shown with what they send (chat)."""
        raise NotImplementedError

    async def _join(self) -> None:
        self._subscription = await self.signaling.join_participant(
            self.appointment.id, self.key, self.id, self._on_channel
        )

    async def _leave_channel(self) -> None:
        if self._subscription is not None:
            await self._subscription.cancel()

    def _replaced(self) -> None:
        """Another socket of the same person checked in after this one."""
        self.finished = True
        self.error("replaced", "This visit was opened in another window.")
        self.close(4409)

    async def _on_channel(self, message: dict[str, Any]) -> None:
        if "takeover" in message:
            if message["takeover"] != self.id:
                self._replaced()
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

    async def _back_in_call(self, peers: list[dict[str, Any]]) -> None:
        """A socket (back) in the running call: who else is in it, `admitted` (the page
        negotiates anew), then what was said in the call that this person may see (a page
        reloaded mid-call shows the conversation so far; signaling.chat)."""
        for peer in peers:
            self.send(peer)
        self.send(messages.admitted(self.signaling.ice_servers(self.appointment)))
        history = await self.signaling.chat_history(self.appointment.id, self.key)
        if history is not None:
            self.send(history)

    def here(self) -> None:
        """Known to this process's reconciliation (before its check-in is written)."""

    def gone(self) -> None:
        """Not known to it any more (before its close is written)."""

    async def check_in(self, *, now: dt.datetime, window: dt.timedelta) -> bool:
        """Into the room (or back): False when the row refuses (the visit or their consent).
        From then on the row names this socket as their presence."""
        presence = {
            "process": self.signaling.process_id,
            "connection": self.id,
            "now": now,
            "opens_before": window,
        }
        self.checked_in = await self._check_in(presence)
        return self.checked_in

    async def _check_in(self, presence: dict[str, Any]) -> bool:
        raise NotImplementedError

    async def dropped(self) -> None:
        """The socket closed without leaving: the grace period starts."""

    async def device_checked(self, verdict: str) -> None:
        """The verdict of the page's connection test."""

    async def leave(self) -> None:
        """The client's `leave`."""

    async def handle(self, text: str) -> None:
        message = messages.parse_patient(text)
        if isinstance(message, messages.Ping):
            self.send(messages.pong())
            return
        if isinstance(message, messages.DeviceCheck):
            await self.device_checked(message.verdict)
            return
        if isinstance(message, messages.Leave):
            await self.leave()
            return
        if not self.in_call:
            raise SignalingError("not_in_call", "Wait to be admitted before sending media.")
        call_id, key = self.appointment.id, self.key
        if isinstance(message, messages.Chat):
            await self.signaling.chat(
                call_id, sender=key, name=self.name, text=message.text, limit=self.chat_limit
            )
        elif isinstance(message, messages.PeerMessage):
            await self.signaling.to_call(call_id, messages.peer_message(key, message.data), but=key)
        elif isinstance(message, messages.VideoRequest):
            await self.signaling.media_request(call_id, key, "video", {"enabled": message.enabled})
        elif isinstance(message, messages.Offer | messages.Answer):
            await self.signaling.media_request(call_id, key, message.type, {"sdp": message.sdp})
        elif isinstance(message, messages.CandidateMessage):
            await self.signaling.media_request(
                call_id, key, "candidate", {"candidate": messages.candidate_dict(message.candidate)}
            )


class PatientSession(VisitorSession):
    """The patient's socket: in the waiting room, then in the call."""

    def __init__(
        self, websocket: WebSocket, signaling: Signaling, appointment: Appointment
    ) -> None:
        super().__init__(websocket, signaling, appointment, PATIENT)
        self.in_call = appointment.status == Status.IN_CALL
        self._last_place: tuple[int | None, int | None] | None = None

    @property
    def name(self) -> str:
        return self.appointment.patient_name

    def here(self) -> None:
        self.signaling.patient_here(self)

    def gone(self) -> None:
        self.signaling.patient_gone(self)

    async def _check_in(self, presence: dict[str, Any]) -> bool:
        checked_in = await calls.check_in(self.signaling.db, self.appointment.id, **presence)
        if checked_in is None:
            return False
        self.appointment = checked_in
        self.in_call = checked_in.status == Status.IN_CALL
        return True

    async def dropped(self) -> None:
        await self.signaling.patient_dropped(self.appointment, self.id)

    async def attach(self) -> None:
        appointment = self.appointment
        await self._join()
        await self.signaling.watch_queue(appointment.clinician_id, self)
        if self.in_call:
            # Back in a call: who of the guests is in it, then negotiate anew.
            await self._back_in_call(
                await self.signaling.present(appointment, PATIENT, guests_only=True)
            )
        await self.signaling.queue_changed(appointment.clinician_id)

    async def detach(self) -> None:
        await self.signaling.unwatch_queue(self.appointment.clinician_id, self)
        await self._leave_channel()

    def on_presence(self, row: calls.Presence | None) -> None:
        """The reconciliation's view of this patient (what pub/sub may have failed to say)."""
        if self.finished or self.closing:
            return
        if row is not None and row.status in IN_ROOM:
            if row.connection != self.id:
                self._replaced()
            return
        self.finished = True
        if row is not None and row.status == Status.BOOKED:
            # Out of the room (the grace period ran out while this process was stalled): the
            # page reconnects and checks in again.
            self.close(1012)
            return
        reason = (row.end_reason or row.status) if row is not None else "ended"
        self.send(messages.ended(reason))
        self.close(1000)

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

    async def device_checked(self, verdict: str) -> None:
        # A write and a queue refresh for every clinician's console: only when it changed.
        if verdict != self.appointment.connection_check:
            await self.signaling.device_checked(self.appointment, verdict)
            self.appointment.connection_check = verdict

    async def leave(self) -> None:
        if self.in_call:
            await self.signaling.media_request(self.appointment.id, PATIENT, "leave", {})
            return
        await self.signaling.leave_waiting_room(self.appointment, self.id)
        self.finished = True
        self.send(messages.ended("left"))
        self.close(1000)


class GuestSession(VisitorSession):
    """A guest's socket (an interpreter, a caregiver, a colleague): in the waiting room until
    the clinician admits them into the running call (signaling.guests)."""

    def __init__(
        self,
        websocket: WebSocket,
        signaling: Signaling,
        appointment: Appointment,
        guest: VisitGuest,
    ) -> None:
        super().__init__(websocket, signaling, appointment, guest_calls.key_of(guest))
        self.guest = guest

    @property
    def guest_id(self) -> uuid.UUID:
        return self.guest.id

    @property
    def name(self) -> str:
        return self.guest.name

    def here(self) -> None:
        self.signaling.guest_here(self)

    def gone(self) -> None:
        self.signaling.guest_gone(self)

    async def _check_in(self, presence: dict[str, Any]) -> bool:
        checked_in = await guest_calls.check_in(self.signaling.db, self.guest.id, **presence)
        if checked_in is None:
            return False
        self.guest = checked_in
        self.in_call = checked_in.status == GuestStatus.IN_CALL
        return True

    async def dropped(self) -> None:
        await self.signaling.guest_dropped(self.guest, self.id)

    async def attach(self) -> None:
        await self._join()
        if self.in_call:
            # Back in the call (within the grace period): who is in it, then negotiate anew.
            await self._back_in_call(await self.signaling.present(self.appointment, self.key))
        else:
            self.send(messages.waiting(None, None))
        await self.signaling.queue_changed(self.appointment.clinician_id)

    async def detach(self) -> None:
        await self._leave_channel()

    def on_presence(self, row: guest_calls.Presence | None) -> None:
        """The reconciliation's view of this guest (what pub/sub may have failed to say)."""
        if self.finished or self.closing:
            return
        if row is not None and row.status in guest_calls.IN_ROOM:
            if row.connection != self.id:
                self._replaced()
            return
        self.finished = True
        if row is not None and row.status == GuestStatus.REMOVED:
            self.error("participant_removed", "You were removed from this visit.")
            self.close(4410)
            return
        # Out of the room (the call ended, or the grace period ran out while this process was
        # stalled): the page connects again, and waits again if the visit still runs.
        self.close(1012)

    async def leave(self) -> None:
        """Out of the waiting room or the call: the others are told; the link still works."""
        await self.signaling.guest_left(self.guest, self.id)
        self.finished = True
        self.send(messages.ended("left"))
        self.close(1000)


Verify = Callable[[str], Awaitable[tuple[Principal, TokenClaims]]]


class ClinicSession(Connection):
    """A clinician's console: the live queue, and the calls it holds.

    Its token may be renewed at any time (`{"type":"auth","token"}` again, for the same user);
    the console is closed (4401) once its latest token has been expired for
    `TELEVISIT_CLINIC_TOKEN_GRACE_SECONDS` (60), and within seconds of the user's deactivation
    or the end of its latest token's session (the hub's guard checks every console of the
    process).
    """

    def __init__(
        self,
        websocket: WebSocket,
        signaling: Signaling,
        clinician: Principal,
        *,
        token_expires_at: float,
        session_id: uuid.UUID,
        verify: Verify,
    ) -> None:
        super().__init__(websocket)
        self.signaling = signaling
        self.clinician = clinician
        self.token_expires_at = token_expires_at
        # The staff session of its latest token: the console lives no longer than it.
        self.session_id = session_id
        self._verify = verify
        # None while its subscription is being made: a release meanwhile removes the entry.
        self._calls: dict[uuid.UUID, Subscription | None] = {}

    @property
    def clinician_id(self) -> uuid.UUID:
        return self.clinician.id

    def held_calls(self) -> Collection[uuid.UUID]:
        return [call_id for call_id, held in self._calls.items() if held is not None]

    async def attach(self) -> None:
        self.signaling.console_here(self)
        await self.signaling.watch_queue(self.clinician.id, self)
        snapshot = await self.signaling.snapshot(self.clinician.id)
        self.send(snapshot.message())
        # Calls under way come back to this console: it negotiates anew, the old one is closed.
        for appointment in await self.signaling.calls_in_progress(self.clinician.id):
            await self.take_call(appointment)

    async def detach(self) -> None:
        self.signaling.console_gone(self)
        await self.signaling.unwatch_queue(self.clinician.id, self)
        held, self._calls = self._calls, {}
        for call_id, subscription in held.items():
            if subscription is not None:
                await subscription.cancel()
            await self.signaling.to_call(call_id, messages.peer("left", CLINICIAN), but=CLINICIAN)

    def on_queue(self, snapshot: Snapshot) -> None:
        self.send(snapshot.message())

    def check_token(self, now: float) -> None:
        grace = self.signaling.settings.clinic_token_grace_seconds
        if not self.closing and now > self.token_expires_at + grace:
            self.error("token_expired", "Your session expired; sign in again.")
            self.close(4401)

    def account_disabled(self) -> None:
        if not self.closing:
            self.error("not_authenticated", "This session has ended, or the account is inactive.")
            self.close(4401)

    async def call_gone(self, call_id: uuid.UUID, reason: str) -> None:
        if self._calls.get(call_id) is not None:
            self.send(messages.ended(reason, call_id))
            await self._release(call_id)

    async def _renew(self, token: str) -> None:
        try:
            principal, claims = await self._verify(token)
        except NotAuthenticated:
            raise SignalingError(
                "not_authenticated", "That token is not valid; the current one still counts."
            ) from None
        if principal.id != self.clinician.id:
            raise SignalingError("forbidden", "A console renews its own user's token only.")
        self.token_expires_at = max(self.token_expires_at, claims.expires_at)
        self.session_id = claims.session_id
        expires = dt.datetime.fromtimestamp(self.token_expires_at, dt.UTC)
        self.send(
            {
                "type": "authenticated",
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
            }
        )

    async def take_call(self, appointment: Appointment) -> None:
        call_id = appointment.id
        if call_id not in self._calls:
            self._calls[call_id] = None
            subscription = await self.signaling.join_participant(
                call_id, CLINICIAN, self.id, lambda message: self._on_channel(call_id, message)
            )
            if call_id in self._calls:
                self._calls[call_id] = subscription
            else:
                # Taken over by another console (or ended) while subscribing.
                await subscription.cancel()
                return
        # Who of the guests is in the call, then negotiate (anew, for a console that came back).
        for peer in await self.signaling.present(appointment, CLINICIAN, guests_only=True):
            self.send({**peer, "appointment_id": str(call_id)})
        # With the number of chat messages: the console reads the history only when it lacks some.
        servers = self.signaling.ice_servers(appointment)
        count = await self.signaling.chat_count(call_id)
        self.send(messages.call(call_id, servers, chat_count=count))

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
        if self._calls.get(call_id) is None:
            raise SignalingError("not_in_call", "This console does not hold that call.")

    async def handle(self, text: str) -> None:
        message = messages.parse_clinic(text)
        if isinstance(message, messages.Ping):
            self.send(messages.pong())
            return
        if isinstance(message, messages.Auth):
            await self._renew(message.token)
            return
        call_id = message.appointment_id
        if isinstance(message, messages.Admit):
            if message.participant_id is not None:
                await self.signaling.admit_guest(self.clinician.id, call_id, message.participant_id)
                return
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
            await self.signaling.to_call(
                call_id, messages.peer_message(CLINICIAN, message.data), but=CLINICIAN
            )
        elif isinstance(message, messages.ClinicChat):
            self._holding(call_id)
            await self.signaling.chat(
                call_id,
                sender=CLINICIAN,
                name=self.clinician.name,
                text=message.text,
                limit=self.chat_limit,
            )
        elif isinstance(message, messages.ClinicVideo):
            self._holding(call_id)
            await self.signaling.media_request(
                call_id, CLINICIAN, "video", {"enabled": message.enabled}
            )
        elif isinstance(message, messages.ClinicScreen):
            self._holding(call_id)
            await self.signaling.media_request(
                call_id, CLINICIAN, "screen", {"enabled": message.enabled}
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
