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

The database holds the state (status, presence, host); channels only carry news of it, and
may lose some (pub/sub delivers at most once; Redis may restart). So each process also
reconciles its own sockets with the database on every heartbeat (signaling.liveness): a patient
marked reconnecting while their socket is here is connected again (the process was stalled, or
taken for dead); a row naming a socket this process no longer holds starts its grace period; a
socket whose patient connected elsewhere, or whose visit moved on, is closed; a relay whose call
ended or moved to another host is closed; a console holding a call that ended is told. A call
never ends because of a lapse of liveness: only a patient whose connection is really gone runs
out of grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select

from app.audit import record_event
from app.auth.models import User
from app.config import Settings
from app.db import Database, create_engine, utcnow
from app.events import Event
from app.ice import ice_servers
from scheduling import calls, consent, lifecycle
from scheduling.models import Appointment, Status
from signaling import messages
from signaling.broker import Broker, BrokerUnavailable, Subscription
from signaling.errors import SignalingError
from signaling.liveness import Liveness
from signaling.media import NOTHING, Consent, MediaPlane
from signaling.queue import Snapshot, build

logger = logging.getLogger("televisit.signaling")

PATIENT, CLINICIAN = "patient", "clinician"
SWEEP_SECONDS = 1.0
ORPHAN_CHECK_SECONDS = 3.0
# Presences naming processes that have no heartbeat row at all are looked for this often.
ORPHAN_SCAN_SECONDS = 60.0
# The typical consult length (and the clinician's time zone) is re-read at most this often.
CONSULT_CACHE_SECONDS = 60.0
# Consoles of deactivated users are closed within this (plus a read of the users table).
ACCOUNT_CHECK_SECONDS = 2.0
IN_ROOM = (Status.WAITING.value, Status.IN_CALL.value)


class QueueWatcher(Protocol):
    def on_queue(self, snapshot: Snapshot) -> None: ...


class PatientLink(Protocol):
    """A patient's socket in this process, as the reconciliation sees it."""

    @property
    def id(self) -> str: ...

    @property
    def appointment_id(self) -> uuid.UUID: ...

    @property
    def checked_in(self) -> bool: ...

    def on_presence(self, row: calls.Presence | None) -> None:
        """What the database says of this patient now: close the socket if it is not theirs
        any more (another socket took over, or the visit moved on)."""
        ...


class ConsoleLink(Protocol):
    """A clinician's console in this process, as its guard and the reconciliation see it."""

    @property
    def clinician_id(self) -> uuid.UUID: ...

    def held_calls(self) -> Collection[uuid.UUID]: ...

    def check_token(self, now: float) -> None:
        """Close the console if its latest token has been expired for too long."""
        ...

    def account_disabled(self) -> None: ...

    async def call_gone(self, call_id: uuid.UUID, reason: str) -> None:
        """A call it holds ended without the console being told (the message was lost)."""
        ...


ParticipantHandler = Callable[[dict[str, Any]], Awaitable[None]]


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
        self.media: MediaPlane | None = None
        self._watchers: dict[uuid.UUID, set[QueueWatcher]] = defaultdict(set)
        # One subscription per channel, however many callers ask at once: each key holds the
        # task that subscribes, stored before its first await, so a second caller awaits it.
        self._queue_subs: dict[uuid.UUID, asyncio.Task[Subscription]] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._dirty: set[uuid.UUID] = set()
        self._hosted: dict[uuid.UUID, asyncio.Task[Subscription]] = {}
        self._consult: dict[uuid.UUID, tuple[int, float]] = {}
        self._zones: dict[uuid.UUID, tuple[ZoneInfo, float]] = {}
        # The sockets of this process, for the reconciliation and the consoles' guard.
        self._patients: dict[str, PatientLink] = {}
        self._consoles: set[ConsoleLink] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None
        self.broker.on_resubscribed = self._resync
        # The relay's consent readings (`read_consent`) have a connection of their own.
        self._consent_db = (
            db
            if ":memory:" in settings.database_url
            else Database(create_engine(settings.model_copy(update={"db_pool_size": 1})))
        )

    # Life --------------------------------------------------------------------------------

    async def start(self) -> None:
        # Refuses (ConfigurationError) to serve beside processes this one cannot reach.
        await self.liveness.register()
        await self.broker.start()
        self._heart = asyncio.create_task(self._heartbeat(), name="signaling-heartbeat")
        self._sweeper = asyncio.create_task(self._sweep(), name="signaling-sweeper")

    async def stop(self) -> None:
        for task in (self._sweeper, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in list(self._refreshing.values()):
            task.cancel()
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
        if self._consent_db is not self.db:
            await self._consent_db.dispose()

    # Queue -------------------------------------------------------------------------------

    async def watch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        self._watchers[clinician_id].add(watcher)
        subscribing = self._queue_subs.get(clinician_id)
        if subscribing is None:
            subscribing = self._queue_subs[clinician_id] = asyncio.create_task(
                self.broker.subscribe(
                    f"queue:{clinician_id}", lambda _message: self._queue_news(clinician_id)
                )
            )
        await asyncio.shield(subscribing)

    async def unwatch_queue(self, clinician_id: uuid.UUID, watcher: QueueWatcher) -> None:
        watchers = self._watchers.get(clinician_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[clinician_id]
            subscribing = self._queue_subs.pop(clinician_id, None)
            if subscribing is not None:
                await (await subscribing).cancel()

    async def queue_changed(self, clinician_id: uuid.UUID) -> None:
        """Tell every process watching this queue. Lost while Redis is away: each process
        reads its watched queues again once it is back (`_resync`)."""
        await self._post(f"queue:{clinician_id}", {"changed": str(clinician_id)})

    async def snapshot(self, clinician_id: uuid.UUID) -> Snapshot:
        rows = await calls.queue_rows(self.db, clinician_id, day=await self._today(clinician_id))
        return build(rows, consult_seconds=await self._consult_seconds(clinician_id), now=utcnow())

    async def _today(self, clinician_id: uuid.UUID) -> tuple[dt.datetime, dt.datetime]:
        """The clinician's day, in their time zone, as the queue shows it: from midnight to
        midnight, and as far past it as a patient may already check in."""
        cached = self._zones.get(clinician_id)
        if cached is None or time.monotonic() - cached[1] >= CONSULT_CACHE_SECONDS:
            async with self.db.session(write=False) as session:
                name = await session.scalar(select(User.timezone).where(User.id == clinician_id))
            try:
                zone = ZoneInfo(name or "UTC")
            except (ZoneInfoNotFoundError, ValueError):
                zone = ZoneInfo("UTC")
            cached = self._zones[clinician_id] = (zone, time.monotonic())
        zone = cached[0]
        today = utcnow().astimezone(zone).date()
        start = dt.datetime.combine(today, dt.time(), tzinfo=zone)
        end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tzinfo=zone)
        window = dt.timedelta(minutes=self.settings.checkin_minutes_before)
        return start.astimezone(dt.UTC), end.astimezone(dt.UTC) + window

    async def _resync(self) -> None:
        """Redis is back: what was posted while it was away is lost. Read every queue watched
        here again (consoles and waiting patients get the current one)."""
        for clinician_id in list(self._watchers):
            await self._queue_news(clinician_id)

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

    async def _post(self, channel: str, message: dict[str, Any]) -> bool:
        """Post news; while Redis is away it is lost, as pub/sub would lose it. What matters
        is caught by the reconciliation (sockets) and the resync (queues)."""
        try:
            await self.broker.post(channel, message)
        except BrokerUnavailable:
            logger.warning("message lost: redis unavailable")
            return False
        return True

    async def to_participant(self, call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        await self._post(f"participant:{call_id}:{role}", {"send": message})

    async def close_participant(
        self, call_id: uuid.UUID, role: str, message: dict[str, Any], code: int
    ) -> None:
        await self._post(f"participant:{call_id}:{role}", {"send": message, "close": code})

    async def join_participant(
        self, call_id: uuid.UUID, role: str, socket_id: str, handler: ParticipantHandler
    ) -> Subscription:
        """Subscribe a socket as this participant, after telling any earlier socket to go
        (if that is lost, the reconciliation closes the earlier patient socket)."""
        channel = f"participant:{call_id}:{role}"
        await self._post(channel, {"takeover": socket_id})
        return await self.broker.subscribe(channel, handler)

    # This process's sockets, for the reconciliation ----------------------------------------

    def patient_here(self, link: PatientLink) -> None:
        """Before its check-in is written: the heartbeat must not take its row for a socket
        this process does not hold."""
        self._patients[link.id] = link

    def patient_gone(self, link: PatientLink) -> None:
        """Before its close is written (`patient_dropped`)."""
        self._patients.pop(link.id, None)

    def console_here(self, link: ConsoleLink) -> None:
        self._consoles.add(link)

    def console_gone(self, link: ConsoleLink) -> None:
        self._consoles.discard(link)

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
        try:
            await self.host_call(admitted)
            servers = self.ice_servers(admitted)
            told = await self.broker.publish(
                f"participant:{admitted.id}:{PATIENT}", {"send": messages.admitted(servers)}
            )
            if not told:
                raise BrokerUnavailable("the patient's socket did not get the admission")
        except Exception as exc:
            await self._undo_admit(admitted)
            logger.warning("admission undone", extra={"error_type": type(exc).__name__})
            raise SignalingError(
                "admit_failed", "The call could not be set up; the patient is still waiting."
            ) from exc
        await self.to_participant(admitted.id, PATIENT, messages.peer("joined", CLINICIAN))
        await self.queue_changed(clinician_id)
        return admitted

    async def _undo_admit(self, admitted: Appointment) -> None:
        started = admitted.call_started_at
        if started is not None:
            await calls.unadmit(self.db, admitted.id, host=self.process_id, started_at=started)
        await self._unhost(admitted.id)

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

    async def leave_waiting_room(self, appointment: Appointment, connection: str) -> None:
        left = await calls.leave_queue(self.db, appointment.id, now=utcnow(), connection=connection)
        if left is not None:
            await self.queue_changed(appointment.clinician_id)

    async def patient_dropped(self, appointment: Appointment, connection: str) -> None:
        """The patient's socket closed without leaving: their place waits for the grace period
        (unless a newer socket of theirs is their presence by now)."""
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        dropped = await calls.dropped(
            self.db, appointment.id, connection=connection, deadline=deadline
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
        # One message: the console is told, then lets go of the call (if lost, the console's
        # process tells it on its next reconciliation).
        await self._post(
            f"participant:{call_id}:{CLINICIAN}",
            {"send": messages.ended(reason, call_id), "release": True},
        )
        await self.queue_changed(clinician_id)

    # Media routing -------------------------------------------------------------------------

    async def host_call(self, appointment: Appointment) -> None:
        """Run this call's relay here and take its negotiation channel (once, however many
        callers ask at the same time)."""
        hosting = self._hosted.get(appointment.id)
        if hosting is None:
            hosting = self._hosted[appointment.id] = asyncio.create_task(
                self._open_host(appointment)
            )
        try:
            await asyncio.shield(hosting)
        except Exception:
            if self._hosted.get(appointment.id) is hosting:
                del self._hosted[appointment.id]
            raise

    async def _open_host(self, appointment: Appointment) -> Subscription:
        if self.media is not None and not self.media.has_call(appointment.id):
            standing = await self._standing(appointment.id)
            await self.media.open_call(
                appointment.id, consent=standing, ice_servers=self.ice_servers(appointment)
            )
        # Tearing the relay down or starting a recording takes milliseconds: off the reader.
        return await self.broker.subscribe(
            f"media:{appointment.id}",
            lambda message: self._on_media(appointment.id, message),
            may_wait=True,
        )

    async def _unhost(self, call_id: uuid.UUID) -> None:
        hosting = self._hosted.pop(call_id, None)
        if hosting is not None:
            with contextlib.suppress(Exception):
                await (await hosting).cancel()
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
        try:
            if await self.broker.publish(f"media:{call_id}", request):
                return
        except BrokerUnavailable:
            if not reroute:
                return
            raise SignalingError(
                "media_unavailable", "The call's relay cannot be reached just now; try again."
            ) from None
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
                    Consent(
                        bool(request.get("video_visit")),
                        bool(request.get("recording")),
                        int(request.get("seq") or 0),
                    ),
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
        """The call's consent as its row says now (nothing, if it is not under way)."""
        return (await self.read_consent([appointment_id])).get(appointment_id, NOTHING)

    # Consent, as the relay checks it (signaling.media.ConsentGuard) -------------------------

    async def read_consent(self, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Consent]:
        """Asked by the relay several times a second: one query by primary key, on a connection
        of its own, so that requests holding the pool cannot make the relay doubt."""
        async with self._consent_db.session(write=False) as session:
            found = await consent.of_calls(session, call_ids)
        return {
            call_id: Consent(row.standing.video_visit, row.standing.recording, row.seq)
            for call_id, row in found.items()
            if row.status == Status.IN_CALL
        }

    async def call_over(self, call_id: uuid.UUID) -> None:
        """The relay here found the patient's consent gone, or the call no longer under way:
        close it here first (that needs neither Redis nor the database), then say so."""
        await self._unhost(call_id)
        appointment = await calls.get(self.db, call_id)
        if appointment is None:
            return
        if appointment.status == Status.IN_CALL:
            # A withdrawal ends its call in its own transaction; a call still under way without
            # consent predates that: end it now.
            ended = await calls.end_call(self.db, call_id, reason="consent_withdrawn", now=utcnow())
            if ended is not None:
                await self.finish_call(ended.id, ended.clinician_id, "consent_withdrawn")
            return
        await self._announce_end(appointment.id, appointment.clinician_id)

    async def _announce_end(self, call_id: uuid.UUID, clinician_id: uuid.UUID) -> None:
        """A call a withdrawal ended: whichever process comes first (the one announcing the
        withdrawal, the relay's) releases the host and tells everyone, exactly once."""
        released = await calls.release_host(self.db, call_id)
        if released is not None:
            await self.finish_call(call_id, clinician_id, released.end_reason or "ended")

    async def recording_refused(self, call_id: uuid.UUID) -> None:
        async with self.db.session(write=True) as session:
            await record_event(
                session,
                actor_id=None,
                actor_role="system",
                action="recording.start",
                resource_type="appointment",
                resource_id=call_id,
                outcome="recording_consent_required",
            )

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
        """A decision committed: what it does to the visit is in the database already
        (scheduling.consent.take_effect); this only hurries the news along."""
        data = event.data
        call_id = event.appointment_id
        # The call's relay first, wherever it runs: the patient's media stops before anything
        # is announced. If this is lost, the relay's own reading finds it within a second.
        await self.media_request(
            call_id,
            PATIENT,
            "consent",
            {
                "video_visit": bool(data.get("video_visit")),
                "recording": bool(data.get("recording")),
                "seq": int(data.get("seq") or 0),
            },
            reroute=False,
        )
        clinician_id = uuid.UUID(str(data["clinician_id"]))
        if data.get("ended"):
            await self._announce_end(call_id, clinician_id)
        elif data.get("left_queue"):
            await self.close_participant(
                call_id, PATIENT, messages.ended("consent_withdrawn"), 4403
            )
            await self.queue_changed(clinician_id)

    # The sweeper: grace periods, processes that died, consoles' tokens and accounts ---------

    async def _sweep(self) -> None:
        last_orphan_check = last_scan = last_account_check = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self._check_tokens()
                await self.sweep_once()
                now = time.monotonic()
                if now - last_account_check >= ACCOUNT_CHECK_SECONDS:
                    last_account_check = now
                    await self._check_accounts()
                if now - last_orphan_check >= ORPHAN_CHECK_SECONDS:
                    last_orphan_check = now
                    scan = now - last_scan >= ORPHAN_SCAN_SECONDS
                    if scan:
                        last_scan = now
                    await self._adopt_orphans(scan=scan)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("sweep failed", extra={"error_type": type(exc).__name__})

    async def sweep_once(self) -> None:
        live = await self.liveness.live_processes()
        for expired in await calls.expire_grace(self.db, now=utcnow(), live_processes=live):
            if expired.was_in_call:
                await self.finish_call(expired.appointment_id, expired.clinician_id, "patient_left")
            else:
                await self.queue_changed(expired.clinician_id)

    async def _adopt_orphans(self, *, scan: bool = False) -> None:
        """Patients shown connected to a process that is gone: reconnecting, with their grace.

        Judged only by a process whose own heartbeats have been steady for a liveness period:
        after a database outage every heartbeat is old, and the others get that long to write
        theirs. `scan` also looks for presences naming processes with no heartbeat row at all.
        """
        if not self.liveness.steady:
            return
        dead = await self.liveness.dead_processes()
        gone = list(dead)
        if scan:
            live = await self.liveness.live_processes()
            gone += [
                process
                for process in await calls.processes_with_patients(self.db)
                if process not in live and process not in gone
            ]
        if not gone:
            return
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        marked = await calls.process_gone(self.db, gone, deadline=deadline)
        await self.liveness.forget(dead)
        for clinician_id in {clinician for _, clinician in marked}:
            await self.queue_changed(clinician_id)

    def _check_tokens(self) -> None:
        now = time.time()
        for console in list(self._consoles):
            console.check_token(now)

    async def _check_accounts(self) -> None:
        """Consoles of users deactivated (or removed) since they authenticated are closed."""
        clinicians = {console.clinician_id for console in self._consoles}
        if not clinicians:
            return
        async with self.db.session(write=False) as session:
            active = set(
                (
                    await session.execute(
                        select(User.id).where(User.id.in_(clinicians), User.is_active.is_(True))
                    )
                ).scalars()
            )
        for console in list(self._consoles):
            if console.clinician_id not in active:
                console.account_disabled()

    # The heartbeat: this process lives, and its sockets agree with the database -----------

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.liveness.beat_every)
            try:
                async with asyncio.timeout(max(self.liveness.seconds, 1.0)):
                    if await self.liveness.beat():
                        logger.warning("heartbeat lapsed: taking this process's sockets back")
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.liveness.missed_beat()
                logger.warning("heartbeat failed", extra={"error_type": type(exc).__name__})

    async def reconcile(self) -> None:
        """Make the database agree with this process's sockets, and the sockets with it."""
        await self._reconcile_patients()
        await self._reconcile_hosts()
        await self._reconcile_consoles()

    async def _reconcile_patients(self) -> None:
        # Sockets checked in before the read: what the read says of them is at least as new
        # as their own check-in.
        judged = {link.id: link for link in self._patients.values() if link.checked_in}
        rows = await calls.presences(
            self.db,
            process=self.process_id,
            appointment_ids={link.appointment_id for link in self._patients.values()},
        )
        # Sockets held after the read: a row naming none of them is not held here. (A socket
        # is registered before its check-in is written, and let go before its close is.)
        held = set(self._patients)
        named = {row.connection: row for row in rows if row.connection}
        back = [
            connection
            for connection, row in named.items()
            if connection in held and row.presence == calls.RECONNECTING
        ]
        lost = [
            connection
            for connection, row in named.items()
            if connection not in held and row.process == self.process_id
        ]
        clinicians: set[uuid.UUID] = set()
        if back:
            reclaimed = await calls.reclaim(self.db, back, process=self.process_id)
            if reclaimed:
                logger.warning("patients taken back after a lapse", extra={"count": len(reclaimed)})
            clinicians |= {clinician for _, clinician in reclaimed}
        if lost:
            deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
            clinicians |= {
                clinician for _, clinician in await calls.release(self.db, lost, deadline=deadline)
            }
        for clinician_id in clinicians:
            await self.queue_changed(clinician_id)
        by_visit = {row.appointment_id: row for row in rows}
        for connection, link in judged.items():
            if connection in self._patients:
                link.on_presence(by_visit.get(link.appointment_id))

    async def _reconcile_hosts(self) -> None:
        """Relays here whose call ended, or that another process took over, are closed."""
        hosted = list(self._hosted)
        if not hosted:
            return
        hosts = await calls.hosts(self.db, hosted)
        for call_id in hosted:
            hosting = self._hosted.get(call_id)
            if hosting is None or not hosting.done():
                continue  # opening (an admission is under way)
            if hosts.get(call_id, "") != self.process_id:
                await self._unhost(call_id)

    async def _reconcile_consoles(self) -> None:
        held = {call_id for console in self._consoles for call_id in console.held_calls()}
        if not held:
            return
        known = await calls.statuses(self.db, held)
        for console in list(self._consoles):
            for call_id in list(console.held_calls()):
                status, reason = known.get(call_id, (Status.COMPLETED.value, None))
                if status != Status.IN_CALL.value:
                    await console.call_gone(call_id, reason or status)
