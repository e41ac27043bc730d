"""The signaling runtime of one process: queues, participants, call hosts, and the sweeper.

Channels (through the broker, so any process can reach any socket):

- `queue:{clinician}`: "the queue changed". Each process with local watchers of that
  clinician (consoles, waiting patients) reads the queue once and pushes it to all of them.
- `participant:{appointment}:{role}`: messages for the patient's socket or for the console that
  holds the call, wherever they are; a new socket for the same participant takes over and the
  old one is closed.
- `media:{appointment}`: negotiation for the call's relay, subscribed by the one process that
  hosts it. Publishing reaches no one when that process died: the sender then takes the call
  over, and the participants negotiate again with the new host.

The database holds the state (status, presence, host); channels only carry news of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from app.audit import record_event
from app.config import Settings
from app.db import Database, utcnow
from app.events import Event
from scheduling import calls, consent
from scheduling.models import Appointment, Status
from signaling import messages
from signaling.broker import Broker, Liveness, Subscription
from signaling.ice import ice_servers
from signaling.media import Consent, MediaPlane
from signaling.queue import Snapshot, build

logger = logging.getLogger("televisit.signaling")

PATIENT, CLINICIAN = "patient", "clinician"
SWEEP_SECONDS = 1.0
ORPHAN_CHECK_SECONDS = 3.0
# The typical consult length is re-read at most this often per clinician.
CONSULT_CACHE_SECONDS = 60.0


class QueueWatcher(Protocol):
    def on_queue(self, snapshot: Snapshot) -> None: ...


ParticipantHandler = Callable[[dict[str, Any]], Awaitable[None]]


class SignalingError(Exception):
    """Answered to the socket as `{"type":"error","code","message"}`; the socket stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Signaling:
    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        broker: Broker,
        liveness: Liveness,
        process_id: str,
    ) -> None:
        self.db, self.settings, self.broker, self.liveness = db, settings, broker, liveness
        self.process_id = process_id
        self.media: MediaPlane | None = None
        self._watchers: dict[uuid.UUID, set[QueueWatcher]] = defaultdict(set)
        self._queue_subs: dict[uuid.UUID, Subscription] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._hosted: dict[uuid.UUID, Subscription] = {}
        self._consult: dict[uuid.UUID, tuple[int, float]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # Life --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start()
        await self.liveness.start()
        try:
            await self._adopt_orphans()
        except Exception as exc:
            # The database may not answer yet (readyz says so); the sweeper tries again.
            logger.warning("could not adopt orphans", extra={"error_type": type(exc).__name__})
        self._sweeper = asyncio.create_task(self._sweep(), name="signaling-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._refreshing.values()):
            task.cancel()
        if self.media is not None:
            await self.media.shutdown()
        await self.liveness.stop()
        await self.broker.stop()

    # Queue -------------------------------------------------------------------------------

    async def watch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        self._watchers[clinician_id].add(watcher)
        if clinician_id not in self._queue_subs:
            self._queue_subs[clinician_id] = await self.broker.subscribe(
                f"queue:{clinician_id}", lambda _message: self._queue_news(clinician_id)
            )

    async def unwatch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        watchers = self._watchers.get(clinician_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[clinician_id]
            subscription = self._queue_subs.pop(clinician_id, None)
            if subscription is not None:
                await subscription.cancel()

    async def queue_changed(self, clinician_id: uuid.UUID) -> None:
        await self.broker.post(f"queue:{clinician_id}", {"changed": str(clinician_id)})

    async def snapshot(self, clinician_id: uuid.UUID) -> Snapshot:
        rows = await calls.queue_rows(self.db, clinician_id)
        return build(rows, consult_seconds=await self._consult_seconds(clinician_id), now=utcnow())

    async def _queue_news(self, clinician_id: uuid.UUID) -> None:
        # Coalesce bursts: one read of the queue runs per clinician; news during it runs another.
        self._dirty.add(clinician_id)
        if clinician_id not in self._refreshing:
            self._refreshing[clinician_id] = asyncio.create_task(self._refresh(clinician_id))

    async def _refresh(self, clinician_id: uuid.UUID) -> None:
        try:
            while clinician_id in self._dirty:
                self._dirty.discard(clinician_id)
                watchers = self._watchers.get(clinician_id)
                if not watchers:
                    return
                snapshot = await self.snapshot(clinician_id)
                for watcher in list(self._watchers.get(clinician_id, ())):
                    watcher.on_queue(snapshot)
        except Exception as exc:
            logger.exception("queue refresh failed", extra={"error_type": type(exc).__name__})
        finally:
            self._refreshing.pop(clinician_id, None)

    async def _consult_seconds(self, clinician_id: uuid.UUID) -> int:
        cached = self._consult.get(clinician_id)
        if cached is not None and time.monotonic() - cached[1] < CONSULT_CACHE_SECONDS:
            return cached[0]
        seconds = await calls.typical_consult_seconds(self.db, clinician_id)
        self._consult[clinician_id] = (seconds, time.monotonic())
        return seconds

    # Participants --------------------------------------------------------------------------

    async def to_participant(self, call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        await self.broker.post(f"participant:{call_id}:{role}", {"send": message})

    async def close_participant(
        self, call_id: uuid.UUID, role: str, message: dict[str, Any], code: int
    ) -> None:
        await self.broker.post(f"participant:{call_id}:{role}", {"send": message, "close": code})

    async def join_participant(
        self, call_id: uuid.UUID, role: str, socket_id: str, handler: ParticipantHandler
    ) -> Subscription:
        """Subscribe a socket as this participant, after telling any earlier socket to go."""
        channel = f"participant:{call_id}:{role}"
        await self.broker.post(channel, {"takeover": socket_id})
        return await self.broker.subscribe(channel, handler)

    def ice_servers(self, appointment: Appointment) -> list[dict[str, Any]]:
        return ice_servers(self.settings, visit_end=appointment.end_at, now=utcnow())

    # Calls ---------------------------------------------------------------------------------

    async def admit(self, clinician_id: uuid.UUID, appointment_id: uuid.UUID) -> Appointment:
        now = utcnow()
        admitted = await calls.admit(
            self.db, appointment_id, clinician_id=clinician_id, host=self.process_id, now=now
        )
        if admitted is None:
            current = await calls.get(self.db, appointment_id)
            if current is None or current.clinician_id != clinician_id:
                raise SignalingError("not_found", "No such appointment in your queue.")
            if current.status == Status.WAITING:
                raise SignalingError("patient_not_connected", "The patient is reconnecting.")
            raise SignalingError("invalid_transition", f"The appointment is {current.status}.")
        await self.host_call(admitted)
        servers = self.ice_servers(admitted)
        await self.to_participant(admitted.id, PATIENT, messages.admitted(servers))
        await self.to_participant(admitted.id, PATIENT, messages.peer("joined", CLINICIAN))
        await self.queue_changed(clinician_id)
        return admitted

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
        await self.close_participant(marked.id, PATIENT, messages.ended("no_show"), 1000)
        await self.queue_changed(clinician_id)

    async def leave_waiting_room(self, appointment: Appointment) -> None:
        left = await calls.leave_queue(self.db, appointment.id, now=utcnow())
        if left is not None:
            await self.queue_changed(appointment.clinician_id)

    async def patient_dropped(self, appointment: Appointment) -> None:
        """The patient's socket closed without leaving: their place waits for the grace period."""
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        dropped = await calls.dropped(
            self.db, appointment.id, process=self.process_id, deadline=deadline
        )
        if dropped is not None:
            await self.queue_changed(appointment.clinician_id)

    async def device_checked(self, appointment: Appointment, verdict: str) -> None:
        await calls.set_connection_check(self.db, appointment.id, verdict)
        await self.queue_changed(appointment.clinician_id)

    async def calls_in_progress(self, clinician_id: uuid.UUID) -> list[Appointment]:
        return await calls.in_progress(self.db, clinician_id)

    async def record(self, clinician_id: uuid.UUID, call_id: uuid.UUID, action: str) -> None:
        """Recording starts only when every participant present consented to it."""
        refused = action == "start" and not (await self._standing(call_id)).recording
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
        await self.media_request(call_id, CLINICIAN, "record", {"action": action})

    async def finish_call(self, call_id: uuid.UUID, clinician_id: uuid.UUID, reason: str) -> None:
        """The call is over (already `completed` in the database): tell everyone, free the relay."""
        self._consult.pop(clinician_id, None)
        await self.media_request(call_id, CLINICIAN, "close", {}, reroute=False)
        await self.close_participant(call_id, PATIENT, messages.ended(reason), 1000)
        # One message: the console is told, then lets go of the call.
        await self.broker.post(
            f"participant:{call_id}:{CLINICIAN}",
            {"send": messages.ended(reason, call_id), "release": True},
        )
        await self.queue_changed(clinician_id)

    # Media routing -------------------------------------------------------------------------

    async def host_call(self, appointment: Appointment) -> None:
        """Run this call's relay here and take its negotiation channel."""
        if appointment.id in self._hosted:
            return
        if self.media is not None and not self.media.has_call(appointment.id):
            standing = await self._standing(appointment.id)
            await self.media.open_call(
                appointment.id, consent=standing, ice_servers=self.ice_servers(appointment)
            )
        # Tearing the relay down or starting a recording takes milliseconds: off the reader.
        self._hosted[appointment.id] = await self.broker.subscribe(
            f"media:{appointment.id}",
            lambda message: self._on_media(appointment.id, message),
            may_wait=True,
        )

    async def _unhost(self, call_id: uuid.UUID) -> None:
        subscription = self._hosted.pop(call_id, None)
        if subscription is not None:
            await subscription.cancel()
        if self.media is not None and self.media.has_call(call_id):
            await self.media.close_call(call_id)

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
        request = {"op": op, "role": role, **payload}
        if await self.broker.publish(f"media:{call_id}", request):
            return
        if not reroute:
            return
        # No process hosts the call any more (it died, or never opened it): take it over.
        appointment = await calls.get(self.db, call_id)
        if appointment is None or appointment.status != Status.IN_CALL:
            raise SignalingError("not_in_call", "This call is not under way.")
        host = appointment.call_host
        if host is not None and host != self.process_id and await self.liveness.alive(host):
            raise SignalingError("media_unavailable", "The call's relay did not answer.")
        claimed = await calls.claim_host(self.db, call_id, previous=host, process=self.process_id)
        if claimed is None:
            raise SignalingError("media_unavailable", "The call moved; try again.")
        await self.host_call(claimed)
        # The other participant's media went with the old host: they negotiate anew.
        other = PATIENT if role == CLINICIAN else CLINICIAN
        servers = self.ice_servers(claimed)
        again = messages.admitted(servers) if other == PATIENT else messages.call(call_id, servers)
        await self.to_participant(call_id, other, again)
        await self._on_media(call_id, request)

    async def _on_media(self, call_id: uuid.UUID, request: dict[str, Any]) -> None:
        op, role = request.get("op"), str(request.get("role"))
        if op == "close":
            await self._unhost(call_id)
            return
        if self.media is None:
            await self.to_participant(
                call_id, role, messages.error("media_unavailable", "No media relay runs here.")
            )
            return
        try:
            if op == "offer":
                await self.media.offer(call_id, role, str(request["sdp"]))
            elif op == "answer":
                await self.media.answer(call_id, role, str(request["sdp"]))
            elif op == "candidate":
                await self.media.candidate(call_id, role, request.get("candidate"))
            elif op == "leave":
                await self.media.leave(call_id, role)
            elif op == "consent":
                await self.media.consent(
                    call_id,
                    Consent(bool(request.get("video_visit")), bool(request.get("recording"))),
                )
            elif op == "record":
                await self.media.record(call_id, str(request.get("action")))
            elif op == "video":
                await self.media.video(call_id, role, enabled=bool(request.get("enabled")))
        except SignalingError as exc:
            await self.to_participant(call_id, role, messages.error(exc.code, exc.message))
        except Exception as exc:
            logger.exception("relay request failed", extra={"error_type": type(exc).__name__})
            await self.to_participant(
                call_id, role, messages.error("media_error", "The relay could not do that.")
            )

    async def _standing(self, appointment_id: uuid.UUID) -> Consent:
        async with self.db.session(write=False) as session:
            standing = await consent.standing(session, appointment_id)
        return Consent(video_visit=standing.video_visit, recording=standing.recording)

    # Domain events (from HTTP requests, after commit) --------------------------------------

    async def on_event(self, event: Event) -> None:
        if event.kind == "consent.recorded":
            await self._consent_changed(event)
        elif event.kind == "appointment.cancelled":
            await self.close_participant(
                event.appointment_id, PATIENT, messages.ended("cancelled"), 4410
            )
            clinician_id = event.data.get("clinician_id")
            if clinician_id:
                await self.queue_changed(uuid.UUID(str(clinician_id)))

    async def _consent_changed(self, event: Event) -> None:
        appointment = await calls.get(self.db, event.appointment_id)
        if appointment is None:
            return
        if appointment.status == Status.IN_CALL:
            # The relay applies the new standing at once, before anything else happens.
            await self.media_request(
                appointment.id,
                PATIENT,
                "consent",
                {"video_visit": event.data["video_visit"], "recording": event.data["recording"]},
                reroute=False,
            )
        if event.data.get("video_visit"):
            return
        now = utcnow()
        if appointment.status == Status.IN_CALL:
            ended = await calls.end_call(
                self.db, appointment.id, reason="consent_withdrawn", now=now
            )
            if ended is not None:
                await self.finish_call(ended.id, ended.clinician_id, "consent_withdrawn")
        elif appointment.status == Status.WAITING:
            left = await calls.leave_queue(self.db, appointment.id, now=now)
            if left is not None:
                await self.close_participant(
                    appointment.id, PATIENT, messages.ended("consent_withdrawn"), 4403
                )
                await self.queue_changed(appointment.clinician_id)

    # The sweeper: grace periods and processes that died ------------------------------------

    async def _sweep(self) -> None:
        last_orphan_check = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep_once()
                if time.monotonic() - last_orphan_check >= ORPHAN_CHECK_SECONDS:
                    last_orphan_check = time.monotonic()
                    await self._adopt_orphans()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("sweep failed", extra={"error_type": type(exc).__name__})

    async def sweep_once(self) -> None:
        for expired in await calls.expire_grace(self.db, now=utcnow()):
            if expired.was_in_call:
                await self.finish_call(expired.appointment_id, expired.clinician_id, "patient_left")
            else:
                await self.queue_changed(expired.clinician_id)

    async def _adopt_orphans(self) -> None:
        """Patients shown connected to a process that is gone: reconnecting, with their grace."""
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        for process in await calls.processes_with_patients(self.db):
            if await self.liveness.alive(process):
                continue
            clinicians = {
                c for _, c in await calls.process_gone(self.db, process, deadline=deadline)
            }
            for clinician_id in clinicians:
                await self.queue_changed(clinician_id)
