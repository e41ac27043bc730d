"""Guests in a visit, as signaling runs them: who is in a call, a guest's admission and
departure, their removal, their consent, and the end of the call for every guest.

The patient and the clinician are in a call from its admission to its end. A guest
(scheduling.guest_calls) waits in the waiting room on their own socket and is in the call from
the clinician's `admit` until they leave, withdraw their consent, are removed, or stay away past
the grace period; the call's end ends it for every guest. Everyone in the call is told of each
arrival and departure: `{"type":"peer","event":"joined"|"left","role","participant",
"participant_id","name"}`.

On admission the order is what the contract promises: everyone already in the call gets the
guest's `peer joined` (name and role), then the guest gets a `peer joined` for each of them, and
only then `admitted` (and the call's chat from their admission on: signaling.chat). The relay
forwards nothing of the guest's before they negotiate, which their client does on `admitted`:
the patient has seen who joined before hearing them.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from app.config import Settings
from app.db import utcnow
from app.events import Event
from app.participants import CLINICIAN, PATIENT, parse_key
from scheduling import calls, guest_calls, lifecycle
from scheduling import guests as guest_links
from scheduling import service as scheduling
from scheduling.models import Appointment, GuestStatus, Status, VisitGuest
from signaling import chat, messages
from signaling.broker import BrokerUnavailable
from signaling.errors import SignalingError
from signaling.fanout import QueueFanout
from signaling.hosting import Hosting

logger = logging.getLogger("televisit.signaling")

key_of = guest_calls.key_of


def peer(event: str, guest: VisitGuest) -> dict[str, Any]:
    """`peer joined` or `left` of a guest."""
    return messages.peer(
        "joined" if event == "joined" else "left",
        guest.role,
        participant=key_of(guest),
        participant_id=guest.id,
        name=guest.name,
    )


class Guests:
    def __init__(self, *, settings: Settings, fanout: QueueFanout, hosting: Hosting) -> None:
        self.settings, self.fanout, self.hosting = settings, fanout, hosting
        self.db, self.broker = hosting.db, hosting.broker
        self.participants = hosting.participants

    # Who is in the call ----------------------------------------------------------------------

    async def keys_in_call(self, call_id: uuid.UUID) -> list[str]:
        """The participant keys of everyone in the call: the patient, the clinician, and each
        guest admitted to it."""
        guests = await guest_calls.in_call(self.db, call_id)
        return [PATIENT, CLINICIAN, *(key_of(guest) for guest in guests)]

    async def to_call(
        self, call_id: uuid.UUID, message: dict[str, Any], *, but: str | None = None
    ) -> None:
        """Send a message to everyone in the call (but `but`), wherever their sockets are."""
        for key in await self.keys_in_call(call_id):
            if key != but:
                await self.participants.to_participant(call_id, key, message)

    async def present(
        self, appointment: Appointment, *, but: str, guests_only: bool = False
    ) -> list[dict[str, Any]]:
        """`peer joined` of everyone in the call but `but` (or of its guests only): what
        someone arriving in the call is told first (the names and roles of the others)."""
        found: list[dict[str, Any]] = []
        if not guests_only and but != PATIENT:
            found.append(
                messages.peer("joined", PATIENT, participant=PATIENT, name=appointment.patient_name)
            )
        if not guests_only and but != CLINICIAN:
            async with self.db.session(write=False) as session:
                name = await scheduling.clinician_name(session, appointment.clinician_id)
            found.append(messages.peer("joined", CLINICIAN, participant=CLINICIAN, name=name))
        for guest in await guest_calls.in_call(self.db, appointment.id):
            if key_of(guest) != but:
                found.append(peer("joined", guest))
        return found

    async def introduce(
        self, appointment: Appointment, key: str, *, guests_only: bool = False
    ) -> None:
        """Tell `key`'s socket who is in the call (before it is sent `admitted` or `call`)."""
        for message in await self.present(appointment, but=key, guests_only=guests_only):
            await self.participants.to_participant(appointment.id, key, message)

    # Admission -------------------------------------------------------------------------------

    async def admit(
        self, clinician_id: uuid.UUID, appointment_id: uuid.UUID, participant_id: uuid.UUID
    ) -> None:
        """The clinician admits a waiting guest into the running call."""
        appointment = await calls.get(self.db, appointment_id)
        if appointment is None or appointment.clinician_id != clinician_id:
            raise SignalingError("not_found", "No such appointment in your queue.")
        admitted = await guest_calls.admit(
            self.db, participant_id, appointment_id=appointment_id, now=utcnow()
        )
        if admitted is None:
            raise await self._refusal(appointment, participant_id)
        key = key_of(admitted)
        # Everyone in the call sees who joins (name, role) before the guest is even told.
        await self.to_call(appointment_id, peer("joined", admitted), but=key)
        await self.introduce(appointment, key)
        servers = self.hosting.ice_servers(appointment)
        try:
            told = await self.broker.publish(
                f"participant:{appointment_id}:{key}", {"send": messages.admitted(servers)}
            )
        except BrokerUnavailable:
            told = False
        if not told:
            # Their socket is gone (or Redis is): they stay waiting, nobody hears of them.
            assert admitted.admitted_at is not None
            await guest_calls.unadmit(self.db, admitted.id, admitted_at=admitted.admitted_at)
            await self.to_call(appointment_id, peer("left", admitted), but=key)
            await self.fanout.changed(clinician_id)
            raise SignalingError(
                "admit_failed", "The participant could not be reached; they are still waiting."
            )
        # Then what was said in the call from their admission on (what came in between).
        history = await chat.history(self.db, appointment_id, key)
        if history is not None:
            await self.participants.to_participant(appointment_id, key, history)
        async with self.db.session(write=True) as session:
            await guest_links.record_admitted(
                session,
                actor_id=clinician_id,
                actor_role=CLINICIAN,
                appointment_id=appointment_id,
                guest_id=admitted.id,
                role=admitted.role,
            )
        await self.fanout.changed(clinician_id)

    async def _refusal(self, appointment: Appointment, participant_id: uuid.UUID) -> SignalingError:
        """Why an admission did not apply, read again."""
        guest = await guest_calls.get(self.db, participant_id)
        current = await calls.get(self.db, appointment.id) or appointment
        if (
            guest is None
            or guest.appointment_id != appointment.id
            or guest.status == GuestStatus.REMOVED
        ):
            return SignalingError("not_found", "No such participant in this visit.")
        if current.status != Status.IN_CALL:
            return SignalingError(
                "not_in_call", "Admit the patient first: the call is not running."
            )
        if guest.status == GuestStatus.IN_CALL:
            return SignalingError("not_waiting", "The participant is in the call already.")
        if guest.status != GuestStatus.WAITING or guest.presence != calls.CONNECTED:
            return SignalingError("not_waiting", "The participant is not in the waiting room.")
        if lifecycle.VIDEO_VISIT not in guest.consent.split():
            return SignalingError(
                "consent_required", "The participant's consent to the video visit does not stand."
            )
        # The statement's one other condition, room for one more guest: not met while the
        # slots index caps a visit's guests at the same MAX_GUESTS (guest_calls.admit).
        return SignalingError("call_full", "The call has as many people as it may have.")

    # Departures ------------------------------------------------------------------------------

    async def gone(self, out: guest_calls.Out) -> None:
        """A guest is out of the room: if they were in the call, their media leaves the relay
        and everyone still in it is told."""
        call_id = out.guest.appointment_id
        if out.was_in_call:
            await self.hosting.route(call_id, out.key, "leave", {}, reroute=False)
            await self.to_call(call_id, peer("left", out.guest), but=out.key)

    async def left(self, guest: VisitGuest, connection: str) -> bool:
        """The guest's own `leave` (from the socket that is theirs): out of the room."""
        out = await guest_calls.leave(self.db, guest.id, connection=connection)
        if out is None:
            return False
        await self.gone(out)
        await self._queues_of([out])
        return True

    async def dropped(self, guest: VisitGuest, connection: str) -> None:
        """The guest's socket closed without leaving: their place waits the grace period."""
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        if await guest_calls.dropped(self.db, guest.id, connection=connection, deadline=deadline):
            await self._queues_of_visits([guest.appointment_id])

    async def expire_grace(self, live_processes: set[str]) -> None:
        """Guests whose grace period ran out: out of the room, out of the call."""
        gone = await guest_calls.expire_grace(self.db, now=utcnow(), live_processes=live_processes)
        for out in gone:
            await self.gone(out)
        await self._queues_of(gone)

    async def removed(self, event: Event) -> None:
        """A guest removed over HTTP (committed): their socket is closed at once, wherever it
        is, their media leaves the relay, and everyone in the call is told."""
        call_id = event.appointment_id
        guest = await guest_calls.get(self.db, uuid.UUID(str(event.data["participant_id"])))
        if guest is None:
            return
        key = key_of(guest)
        removal = messages.error("participant_removed", "You were removed from this visit.")
        await self.participants.close_participant(call_id, key, removal, 4410)
        if event.data.get("was_in_call", True):  # (the others never heard of a waiting one)
            await self.hosting.route(call_id, key, "leave", {}, reroute=False)
            await self.to_call(call_id, peer("left", guest), but=key)
        await self._queues_of_visits([call_id])

    async def decided(self, event: Event) -> None:
        """A guest's consent decision (committed; what it does to their place is done already,
        scheduling.consent.take_effect): a withdrawal takes that guest, and only them, out."""
        call_id, data = event.appointment_id, event.data
        key = str(data["participant"])
        # The call's relay first, wherever it runs: a withdrawal closes that guest's gate at
        # once (if this is lost, the relay's own reading finds it within a second).
        decision = {
            "video_visit": bool(data.get("video_visit")),
            "recording": bool(data.get("recording")),
            "seq": int(data.get("seq") or 0),
        }
        await self.hosting.route(call_id, key, "consent", decision, reroute=False)
        if data.get("video_visit") or not data.get("guest_left"):
            return
        if data.get("was_in_call", True):
            await self.hosting.route(call_id, key, "leave", {}, reroute=False)
            _role, guest_id = parse_key(key)
            guest = await guest_calls.get(self.db, guest_id) if guest_id else None
            if guest is not None:
                await self.to_call(call_id, peer("left", guest), but=key)
        withdrawn = messages.ended("consent_withdrawn")
        await self.participants.close_participant(call_id, key, withdrawn, 4403)
        await self._queues_of_visits([call_id])

    async def visit_over(self, call_id: uuid.UUID, reason: str, code: int = 1000) -> None:
        """The call ended or the visit closed: every guest's socket is ended."""
        gone = await guest_calls.call_over(self.db, call_id)
        for out in gone:
            await self.participants.close_participant(
                call_id, out.key, messages.ended(reason), code
            )

    async def _queues_of(self, gone: list[guest_calls.Out]) -> None:
        await self._queues_of_visits({out.guest.appointment_id for out in gone})

    async def _queues_of_visits(self, appointment_ids: Iterable[uuid.UUID]) -> None:
        for clinician_id in await guest_calls.clinicians_of(self.db, set(appointment_ids)):
            await self.fanout.changed(clinician_id)
