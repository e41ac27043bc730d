"""Consent as signaling carries it: the relay's own readings, and the news of a decision.

The relay trusts what it reads (`read_consent`, one query by primary key on a connection of its
own, four times a second: signaling.media.ConsentGuard, `ConsentReader`); a decision's event
only hurries the news along: the call's relay first, wherever it runs (its owner applies it in
order with the call's other requests), then the end of the call or of the wait. Whichever
process comes first (the one that took the withdrawal, or the relay's on its reading) announces
the end, once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import Engine

from app.audit import record_event
from app.config import Settings
from app.db import Database, create_engine, create_sqlite_thread_engine, utcnow
from app.events import Event
from scheduling import calls, consent, lifecycle
from scheduling.models import Status
from signaling import messages
from signaling.media import NOTHING, Consent, GuestConsent
from signaling.participants import PATIENT
from signaling.visits import Visits


class ConsentReader:
    """The standing consent of calls under way, read on a connection of its own.

    The relay asks four times a second, and fails closed when an answer is late (media.gate),
    so a reading is one statement (the calls left-joined to their guests: consent.of_calls) in
    as few turns of the event loop as the database allows: each turn waits behind whatever else
    the loop has ready, which in a busy relay is forwarding (bench/consent_lag.py):
    - PostgreSQL: one round trip, in autocommit (no BEGIN and COMMIT around the one statement);
    - SQLite in a file: the statement runs whole on a thread of the reader's own, through a
      synchronous connection: one hop to it and back (through aiosqlite, every call of the
      driver is a hop: several per reading);
    - SQLite in memory (some tests): on the process's own engine, as any request.
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self._thread: ThreadPoolExecutor | None = None
        self._sync: Engine | None = None
        self._own: Database | None = None
        self.db = db
        if ":memory:" in settings.database_url:
            return
        if settings.is_sqlite:
            self._sync = create_sqlite_thread_engine(settings)
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="consent-reader")
        else:
            own = settings.model_copy(update={"db_pool_size": 1})
            self._own = self.db = Database(create_engine(own))

    async def read(self, call_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Consent]:
        """Each call's consent as committed now, its guests' included (a guest the reading does
        not name is allowed nothing); calls not under way are left out."""
        if not call_ids:
            return {}
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(self._thread, self._read_here, list(call_ids))
        elif self._own is not None:
            async with self._own.engine.connect() as connection:
                alone = await connection.execution_options(isolation_level="AUTOCOMMIT")
                found = await consent.of_calls(alone, call_ids)
        else:
            async with self.db.session(write=False) as session:
                found = await consent.of_calls(session, call_ids)
        return {
            call_id: Consent(
                row.standing.video_visit,
                row.standing.recording,
                row.seq,
                guests={
                    key: GuestConsent(
                        lifecycle.VIDEO_VISIT in guest.granted,
                        "recording" in guest.granted,
                        guest.seq,
                    )
                    for key, guest in row.guests.items()
                },
            )
            for call_id, row in found.items()
            if row.status == Status.IN_CALL
        }

    def _read_here(self, call_ids: list[uuid.UUID]) -> dict[uuid.UUID, consent.CallConsent]:
        """On the reader's thread: the one statement on its own connection."""
        assert self._sync is not None
        with self._sync.connect() as connection:
            return consent.calls_consent(connection.execute(consent.calls_consent_query(call_ids)))

    async def standing(self, appointment_id: uuid.UUID) -> Consent:
        """The call's consent as its row says now (nothing, if it is not under way)."""
        return (await self.read([appointment_id])).get(appointment_id, NOTHING)

    async def close(self) -> None:
        if self._own is not None:
            await self._own.dispose()
        if self._thread is not None and self._sync is not None:
            # The connection belongs to the reader's thread (sqlite3 checks): closed there.
            await asyncio.get_running_loop().run_in_executor(self._thread, self._sync.dispose)
            self._thread.shutdown(wait=False)


class ConsentEvents:
    def __init__(self, visits: Visits) -> None:
        self.visits, self.db = visits, visits.db
        self.hosting, self.participants = visits.hosting, visits.participants

    async def call_over(self, call_id: uuid.UUID) -> None:
        """The relay here found the patient's consent gone, or the call no longer under way:
        close it here first (that needs neither Redis nor the database), then say so."""
        await self.hosting.unhost(call_id)
        appointment = await calls.get(self.db, call_id)
        if appointment is None:
            return
        if appointment.status == Status.IN_CALL:
            # A withdrawal ends its call in its own transaction; a call still under way without
            # consent predates that: end it now.
            ended = await calls.end_call(self.db, call_id, reason="consent_withdrawn", now=utcnow())
            if ended is not None:
                await self.visits.finish_call(ended.id, ended.clinician_id, "consent_withdrawn")
            return
        await self.visits.announce_end(appointment.id, appointment.clinician_id)

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

    async def changed(self, event: Event) -> None:
        """A decision committed: what it does to the visit is in the database already
        (scheduling.consent.take_effect); this only hurries the news along."""
        data = event.data
        call_id = event.appointment_id
        # The call's relay first, wherever it runs: the patient's media stops before anything
        # is announced. If this is lost, the relay's own reading finds it within a second.
        await self.hosting.route(
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
            await self.visits.announce_end(call_id, clinician_id)
        elif data.get("left_queue"):
            await self.participants.close_participant(
                call_id, PATIENT, messages.ended("consent_withdrawn"), 4403
            )
            await self.visits.fanout.changed(clinician_id)
