"""The signaling runtime of one process: `Signaling`, the façade the sockets, the app and the
relay use. What it does is done by one module each (see `docs/design.md`, "Signaling across
processes"):

- signaling.participants: messages for a call's participants, wherever their sockets are;
- signaling.fanout: queue fan-out to the consoles and waiting patients watching here;
- signaling.hosting: the calls hosted here, each with one owner (a task with a bounded inbox)
  that alone drives the call's relay and its `media:` subscription;
- signaling.visits: the visit's steps (admit, end, no-show, the waiting room, recording) and the
  news of a call's end;
- signaling.consent_events: the relay's consent readings and the news of a decision;
- signaling.local: this process's sockets and the consoles' guard (tokens, accounts);
- signaling.upkeep: the sweeper, the heartbeat and the reconciliation.

Channels (through the broker, so any process can reach any socket): `queue:{clinician}` ("the
queue changed"), `participant:{appointment}:{role}` (for the patient's socket or the console
holding the call), `media:{appointment}` (for the call's owner, in the one process that hosts
it; a publish that reaches no one makes the sender take the call over). The database holds the
state (status, presence, host); channels only carry news of it and may lose some, so each
process also reconciles its own sockets with the database on every heartbeat. A call never ends
because of a lapse of liveness: only a patient whose connection is really gone runs out of grace.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Collection
from typing import Any

from app.config import Settings
from app.db import Database, utcnow
from app.events import Event
from app.ice import ice_servers
from scheduling import calls
from scheduling.models import Appointment, Status, VisitGuest
from signaling import chat
from signaling.broker import Broker, Subscription
from signaling.consent_events import ConsentEvents, ConsentReader
from signaling.errors import SignalingError
from signaling.fanout import QueueFanout, QueueWatcher
from signaling.guests import Guests
from signaling.hosting import Hosting
from signaling.liveness import Liveness
from signaling.local import ConsoleLink, GuestLink, LocalSockets, PatientLink
from signaling.media import Consent, MediaPlane
from signaling.participants import CLINICIAN, PATIENT, ParticipantHandler, Participants
from signaling.queue import Snapshot
from signaling.upkeep import ORPHAN_CHECK_SECONDS, Upkeep
from signaling.visits import Visits

__all__ = [
    "CLINICIAN",
    "IN_ROOM",
    "ORPHAN_CHECK_SECONDS",
    "PATIENT",
    "ConsoleLink",
    "GuestLink",
    "ParticipantHandler",
    "PatientLink",
    "QueueWatcher",
    "Signaling",
    "SignalingError",
]

logger = logging.getLogger("televisit.signaling")

IN_ROOM = (Status.WAITING.value, Status.IN_CALL.value)


class Signaling:
    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        broker: Broker,
        process_id: str,
        liveness: Liveness | None = None,
    ) -> None:
        self.db, self.settings, self.broker = db, settings, broker
        self.process_id = process_id
        self.liveness = liveness or Liveness(
            db, process_id, fanout=broker.fanout, seconds=settings.liveness_seconds
        )
        # The relay's consent readings (`read_consent`) have a connection of their own.
        self._consent = ConsentReader(db, settings)
        self.participants = Participants(broker)
        self.queues = QueueFanout(
            db=db, settings=settings, broker=broker, participants=self.participants
        )
        self.hosting = Hosting(
            db=db,
            broker=broker,
            process_id=process_id,
            liveness=self.liveness,
            participants=self.participants,
            standing=self._consent.standing,
            ice_servers=self.ice_servers,
        )
        self.guests = Guests(settings=settings, fanout=self.queues, hosting=self.hosting)
        self.visits = Visits(
            settings=settings, fanout=self.queues, hosting=self.hosting, guests=self.guests
        )
        self.consent_events = ConsentEvents(self.visits)
        self.sockets = LocalSockets(db)
        self.upkeep = Upkeep(
            settings=settings, liveness=self.liveness, sockets=self.sockets, visits=self.visits
        )
        self.broker.on_resubscribed = self.queues.resync

    @property
    def media(self) -> MediaPlane | None:
        """The relay this process runs (set by the app); driven per call by its owner."""
        return self.hosting.media

    @media.setter
    def media(self, plane: MediaPlane | None) -> None:
        self.hosting.media = plane

    # Life --------------------------------------------------------------------------------

    async def start(self) -> None:
        # Refuses (ConfigurationError) to serve beside processes this one cannot reach.
        await self.liveness.register()
        await self.broker.start()
        self.upkeep.start()

    async def stop(self) -> None:
        await self.upkeep.stop()
        self.queues.stop()
        await self.hosting.stop()
        if self.media is not None:
            await self.media.shutdown()
        await self.broker.stop()
        try:
            # Patients still shown here (a socket whose close could not be written) start
            # their grace period now, rather than when others find this process gone.
            deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
            await calls.process_gone(self.db, [self.process_id], deadline=deadline)
            await self.liveness.unregister()
        except Exception as exc:
            logger.warning("could not sign off", extra={"error_type": type(exc).__name__})
        await self._consent.close()

    # Queues ------------------------------------------------------------------------------

    async def watch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        await self.queues.watch(clinician_id, watcher)

    async def unwatch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        await self.queues.unwatch(clinician_id, watcher)

    async def queue_changed(self, clinician_id: uuid.UUID) -> None:
        await self.queues.changed(clinician_id)

    async def snapshot(self, clinician_id: uuid.UUID) -> Snapshot:
        return await self.queues.snapshot(clinician_id)

    # Participants ------------------------------------------------------------------------

    async def to_participant(self, call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        await self.participants.to_participant(call_id, role, message)

    async def close_participant(
        self, call_id: uuid.UUID, role: str, message: dict[str, Any], code: int
    ) -> None:
        await self.participants.close_participant(call_id, role, message, code)

    async def join_participant(
        self, call_id: uuid.UUID, role: str, socket_id: str, handler: ParticipantHandler
    ) -> Subscription:
        return await self.participants.join(call_id, role, socket_id, handler)

    async def call_participants(self, call_id: uuid.UUID) -> list[str]:
        """The participant keys of everyone in the call: the one list of who a message for
        "everyone in the call" goes to (the patient, the clinician, each guest admitted)."""
        return await self.guests.keys_in_call(call_id)

    async def to_call(
        self, call_id: uuid.UUID, message: dict[str, Any], *, but: str | None = None
    ) -> None:
        """Send a message to everyone in the call (but `but`), wherever their sockets are."""
        await self.guests.to_call(call_id, message, but=but)

    async def present(
        self, appointment: Appointment, key: str, *, guests_only: bool = False
    ) -> list[dict[str, Any]]:
        """`peer joined` of everyone in the call but `key` (of its guests only): what a
        socket coming back into the call is told before `admitted` or `call`."""
        return await self.guests.present(appointment, but=key, guests_only=guests_only)

    async def chat(
        self, call_id: uuid.UUID, *, sender: str, name: str, text: str, limit: chat.ChatLimit
    ) -> None:
        """A participant's chat message: stored with the visit, then sent to everyone in it."""
        await chat.send(
            self.db, self.to_call, call_id, sender=sender, name=name, text=text, limit=limit
        )

    async def chat_count(self, call_id: uuid.UUID) -> int | None:
        """How many messages the call's chat has (for the console's `call`; None: unknown)."""
        return await chat.count(self.db, call_id)

    async def chat_history(self, call_id: uuid.UUID, participant: str) -> dict[str, Any] | None:
        """The `chat_history` this participant of the running call may be sent (None: none)."""
        return await chat.history(self.db, call_id, participant)

    # This process's sockets --------------------------------------------------------------

    def patient_here(self, link: PatientLink) -> None:
        self.sockets.patient_here(link)

    def patient_gone(self, link: PatientLink) -> None:
        self.sockets.patient_gone(link)

    def guest_here(self, link: GuestLink) -> None:
        self.sockets.guest_here(link)

    def guest_gone(self, link: GuestLink) -> None:
        self.sockets.guest_gone(link)

    def console_here(self, link: ConsoleLink) -> None:
        self.sockets.console_here(link)

    def console_gone(self, link: ConsoleLink) -> None:
        self.sockets.console_gone(link)

    def ice_servers(self, appointment: Appointment) -> list[dict[str, Any]]:
        return ice_servers(self.settings, visit_end=appointment.end_at, now=utcnow())

    # The visit ---------------------------------------------------------------------------

    async def admit(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> Appointment:
        return await self.visits.admit(clinician_id, appointment_id)

    async def admit_guest(
        self, clinician_id: uuid.UUID, appointment_id: uuid.UUID, participant_id: uuid.UUID
    ) -> None:
        await self.guests.admit(clinician_id, appointment_id, participant_id)

    async def guest_left(self, guest: VisitGuest, connection: str) -> bool:
        return await self.guests.left(guest, connection)

    async def guest_dropped(self, guest: VisitGuest, connection: str) -> None:
        await self.guests.dropped(guest, connection)

    async def end(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> None:
        await self.visits.end(clinician_id, appointment_id)

    async def no_show(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> None:
        await self.visits.no_show(clinician_id, appointment_id)

    async def leave_waiting_room(self, appointment: Appointment, connection: str) -> None:
        await self.visits.leave_waiting_room(appointment, connection)

    async def patient_dropped(self, appointment: Appointment, connection: str) -> None:
        await self.visits.patient_dropped(appointment, connection)

    async def device_checked(self, appointment: Appointment, verdict: str) -> None:
        await self.visits.device_checked(appointment, verdict)

    async def calls_in_progress(self, clinician_id: uuid.UUID) -> list[Appointment]:
        return await calls.in_progress(self.db, clinician_id)

    async def record(self, clinician_id: uuid.UUID, call_id: uuid.UUID, action: str) -> None:
        await self.visits.record(clinician_id, call_id, action)

    async def finish_call(self, call_id: uuid.UUID, clinician_id: uuid.UUID, reason: str) -> None:
        await self.visits.finish_call(call_id, clinician_id, reason)

    # Calls hosted here -------------------------------------------------------------------

    async def host_call(self, appointment: Appointment) -> None:
        """Run this call's relay here and take its negotiation channel (once, however many
        callers ask at the same time): through the call's owner."""
        await self.hosting.host(appointment)

    async def unhost_call(self, call_id: uuid.UUID) -> None:
        """Stop hosting the call here (its owner closes the relay and leaves the channel)."""
        await self.hosting.unhost(call_id)

    async def media_request(
        self,
        call_id: uuid.UUID,
        role: str,
        op: str,
        payload: dict[str, Any],
        *,
        reroute: bool = True,
    ) -> None:
        """Deliver a negotiation step to the call's relay, wherever it runs."""
        await self.hosting.route(call_id, role, op, payload, reroute=reroute)

    # Consent, as the relay checks it (signaling.media.ConsentGuard) ----------------------

    async def read_consent(self, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Consent]:
        return await self._consent.read(call_ids)

    async def call_over(self, call_id: uuid.UUID) -> None:
        await self.consent_events.call_over(call_id)

    async def recording_refused(self, call_id: uuid.UUID) -> None:
        await self.consent_events.recording_refused(call_id)

    # Domain events (from HTTP requests, after commit) ------------------------------------

    async def on_event(self, event: Event) -> None:
        if event.kind == "consent.recorded":
            await self.consent_events.changed(event)
        elif event.kind == "appointment.cancelled":
            await self.visits.cancelled(event)
        elif event.kind == "guest.consent.recorded":
            await self.guests.decided(event)
        elif event.kind == "guest.removed":
            await self.guests.removed(event)
        elif event.kind == "guest.added":
            # The console's queue item lists the visit's guests.
            await self.queue_changed(uuid.UUID(str(event.data["clinician_id"])))

    # The sweeper and the heartbeat -------------------------------------------------------

    async def sweep_once(self) -> None:
        await self.upkeep.sweep_once()

    async def reconcile(self) -> None:
        """Make the database agree with this process's sockets, and the sockets with it."""
        await self.upkeep.reconcile()
