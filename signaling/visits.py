"""A visit's steps as the sockets ask for them: admission, the end, no-show, the waiting room,
recording; and telling everyone when a call is over.

Each step is a transition of the appointment in the database (scheduling.calls, through the
state machine), then news: the call's relay is opened or closed through its owner
(signaling.hosting), participants and queues are told (signaling.participants,
signaling.fanout).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from app.audit import record_event
from app.config import Settings
from app.db import utcnow
from app.events import Event
from scheduling import calls, lifecycle
from scheduling.models import Appointment, Status
from signaling import messages
from signaling.broker import BrokerUnavailable
from signaling.errors import SignalingError
from signaling.fanout import QueueFanout
from signaling.guests import Guests
from signaling.hosting import Hosting
from signaling.participants import CLINICIAN, PATIENT

logger = logging.getLogger("televisit.signaling")


class Visits:
    def __init__(
        self, *, settings: Settings, fanout: QueueFanout, hosting: Hosting, guests: Guests
    ) -> None:
        self.settings, self.fanout, self.hosting = settings, fanout, hosting
        self.guests = guests
        self.db, self.broker, self.process_id = hosting.db, hosting.broker, hosting.process_id
        self.participants = hosting.participants
        self.standing, self.ice_servers = hosting.standing, hosting.ice_servers

    async def admit(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> Appointment:
        now = utcnow()
        admitted = await calls.admit(
            self.db, appointment_id, clinician_id=clinician_id, host=self.process_id, now=now
        )
        if admitted is None:
            current = await calls.get(self.db, appointment_id)
            if current is None or current.clinician_id != clinician_id:
                raise SignalingError("not_found", "No such appointment in your queue.")
            if current.status == Status.WAITING and lifecycle.VIDEO_VISIT not in (
                current.patient_consent.split()
            ):
                raise SignalingError(
                    "consent_required", "The patient's consent to the video visit does not stand."
                )
            if current.status == Status.WAITING:
                raise SignalingError("patient_not_connected", "The patient is reconnecting.")
            raise SignalingError("invalid_transition", f"The appointment is {current.status}.")
        # The call is `in_call` from here: if its relay cannot be opened or the patient's
        # socket cannot be told (Redis away, or not subscribed again yet after a restart), the
        # admission is undone, so no call is left that nobody is in.
        generation: int | None = None
        try:
            generation = await self.hosting.host(admitted)
            servers = self.ice_servers(admitted)
            told = await self.broker.publish(
                f"participant:{admitted.id}:{PATIENT}", {"send": messages.admitted(servers)}
            )
            if not told:
                raise BrokerUnavailable("the patient's socket did not get the admission")
        except Exception as exc:
            await self._undo_admit(admitted, generation)
            logger.warning("admission undone", extra={"error_type": type(exc).__name__})
            raise SignalingError(
                "admit_failed", "The call could not be set up; the patient is still waiting."
            ) from exc
        await self.participants.to_participant(
            admitted.id, PATIENT, messages.peer("joined", CLINICIAN)
        )
        await self.fanout.changed(clinician_id)
        return admitted

    async def _undo_admit(self, admitted: Appointment, generation: int | None) -> None:
        started = admitted.call_started_at
        if started is not None:
            await calls.unadmit(self.db, admitted.id, host=self.process_id, started_at=started)
        # Only what this admission opened (a hosting that failed to open left nothing).
        if generation is not None:
            await self.hosting.unhost(admitted.id, generation)

    async def end(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> None:
        ended = await calls.end_call(
            self.db, appointment_id, reason="ended", now=utcnow(), clinician_id=clinician_id
        )
        if ended is None:
            current = await calls.get(self.db, appointment_id)
            if current is None or current.clinician_id != clinician_id:
                raise SignalingError("not_found", "No such appointment in your queue.")
            raise SignalingError("invalid_transition", f"The appointment is {current.status}.")
        await self.finish_call(ended.id, ended.clinician_id, "ended")

    async def no_show(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> None:
        marked = await calls.no_show(
            self.db, appointment_id, clinician_id=clinician_id, now=utcnow()
        )
        if marked is None:
            current = await calls.get(self.db, appointment_id)
            if current is None or current.clinician_id != clinician_id:
                raise SignalingError("not_found", "No such appointment in your queue.")
            raise SignalingError("invalid_transition", f"The appointment is {current.status}.")
        await self.participants.close_participant(
            marked.id, PATIENT, messages.ended("no_show"), 1000
        )
        await self.guests.visit_over(marked.id, "no_show")
        await self.fanout.changed(clinician_id)

    async def leave_waiting_room(self, appointment: Appointment, connection: str) -> None:
        left = await calls.leave_queue(self.db, appointment.id, now=utcnow(), connection=connection)
        if left is not None:
            await self.fanout.changed(appointment.clinician_id)

    async def patient_dropped(self, appointment: Appointment, connection: str) -> None:
        """The patient's socket closed without leaving: their place waits for the grace period
        (unless a newer socket of theirs is their presence by now)."""
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        dropped = await calls.dropped(
            self.db, appointment.id, connection=connection, deadline=deadline
        )
        if dropped is not None:
            await self.fanout.changed(appointment.clinician_id)

    async def device_checked(self, appointment: Appointment, verdict: str) -> None:
        await calls.set_connection_check(self.db, appointment.id, verdict)
        await self.fanout.changed(appointment.clinician_id)

    async def record(self, clinician_id: uuid.UUID, call_id: uuid.UUID, action: str) -> None:
        """Recording starts only when every participant present consented to it.

        The relay decides: it applies the same rule (Consent.recording_stands) to the consent
        committed when it starts, and stops a recording when someone without the consent
        joins. This look first refuses at once, as the clinician's own audited refusal, and
        counts everyone in the call: a guest admitted without the recording consent whose
        media has not reached the relay yet is not present to the relay, which would start a
        recording only to stop it when their media arrives (everyone told "on", then "off")."""
        refused = action == "start" and not (await self.standing(call_id)).recording_stands(
            await self.guests.keys_in_call(call_id)
        )
        async with self.db.session(write=True) as session:
            await record_event(
                session,
                actor_id=clinician_id,
                actor_role=CLINICIAN,
                action=f"recording.{action}",
                resource_type="appointment",
                resource_id=call_id,
                outcome="recording_consent_required" if refused else "success",
            )
        if refused:
            raise SignalingError(
                "recording_consent_required",
                "Every participant must consent to recording first.",
            )
        await self.hosting.route(call_id, CLINICIAN, "record", {"action": action}, reroute=True)

    async def finish_call(self, call_id: uuid.UUID, clinician_id: uuid.UUID, reason: str) -> None:
        """The call is over (already `completed` in the database): tell everyone, free the relay."""
        self.fanout.consult_changed(clinician_id)
        await self.hosting.route(call_id, CLINICIAN, "close", {}, reroute=False)
        await self.participants.close_participant(call_id, PATIENT, messages.ended(reason), 1000)
        await self.guests.visit_over(call_id, reason)
        await self.participants.release_console(call_id, messages.ended(reason, call_id))
        await self.fanout.changed(clinician_id)

    async def announce_end(self, call_id: uuid.UUID, clinician_id: uuid.UUID) -> None:
        """A call a withdrawal ended: whichever process comes first (the one announcing the
        withdrawal, the relay's) releases the host and tells everyone, exactly once."""
        released = await calls.release_host(self.db, call_id)
        if released is not None:
            await self.finish_call(call_id, clinician_id, released.end_reason or "ended")

    async def cancelled(self, event: Event) -> None:
        await self.participants.close_participant(
            event.appointment_id, PATIENT, messages.ended("cancelled"), 4410
        )
        await self.guests.visit_over(event.appointment_id, "cancelled", 4410)
        clinician_id = event.data.get("clinician_id")
        if clinician_id:
            await self.fanout.changed(uuid.UUID(str(clinician_id)))
