"""What each process does on its own clock: the sweeper and the heartbeat.

The sweeper (every second) closes consoles whose token expired, ends grace periods that ran
out, closes consoles of deactivated users (every 2 s), and hands the patients of processes that
stopped beating their grace period (every 3 s, and every 60 s those of processes with no
heartbeat row at all). The heartbeat writes this process's liveness, then reconciles its sockets
with the database: a patient marked reconnecting while their socket is here is connected again; a
row naming a socket this process no longer holds starts its grace period; a socket whose patient
connected elsewhere, or whose visit moved on, is closed; a call hosted here that ended or moved
to another host is closed (a close of the hosting generation the reconciliation saw, through the
call's owner, so a call hosted again meanwhile stays); a console holding a call that ended is
told. Guests' sockets (scheduling.guest_calls) are kept the same way as patients': their grace
periods, their processes gone, their reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Collection, Sequence

from app.config import Settings
from app.db import utcnow
from scheduling import calls, guest_calls
from scheduling.models import Status
from signaling.liveness import Liveness
from signaling.local import LocalSockets
from signaling.visits import Visits

logger = logging.getLogger("televisit.signaling")

SWEEP_SECONDS = 1.0
ORPHAN_CHECK_SECONDS = 3.0
# Presences naming processes that have no heartbeat row at all are looked for this often.
ORPHAN_SCAN_SECONDS = 60.0
# Consoles of deactivated users are closed within this (plus a read of the users table).
ACCOUNT_CHECK_SECONDS = 2.0


class Upkeep:
    def __init__(
        self, *, settings: Settings, liveness: Liveness, sockets: LocalSockets, visits: Visits
    ) -> None:
        self.settings, self.liveness = settings, liveness
        self.sockets, self.visits = sockets, visits
        self.db, self.process_id = visits.db, visits.process_id
        self.fanout, self.hosting = visits.fanout, visits.hosting
        self._sweeper: asyncio.Task[None] | None = None
        self._heart: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._heart = asyncio.create_task(self._heartbeat(), name="signaling-heartbeat")
        self._sweeper = asyncio.create_task(self._sweep(), name="signaling-sweeper")

    async def stop(self) -> None:
        for task in (self._sweeper, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # The sweeper ---------------------------------------------------------------------------

    async def _sweep(self) -> None:
        last_orphan_check = last_scan = last_account_check = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.sockets.check_tokens()
                await self.sweep_once()
                now = time.monotonic()
                if now - last_account_check >= ACCOUNT_CHECK_SECONDS:
                    last_account_check = now
                    await self.sockets.check_accounts()
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
                await self.visits.finish_call(
                    expired.appointment_id, expired.clinician_id, "patient_left"
                )
            else:
                await self.fanout.changed(expired.clinician_id)
        await self.visits.guests.expire_grace(live)

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
            holding = [
                *await calls.processes_with_patients(self.db),
                *await guest_calls.processes_with_guests(self.db),
            ]
            gone += [process for process in holding if process not in live and process not in gone]
        if not gone:
            return
        deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
        marked = await calls.process_gone(self.db, gone, deadline=deadline)
        guests = await guest_calls.process_gone(self.db, gone, deadline=deadline)
        await self.liveness.forget(dead)
        clinicians = {clinician for _, clinician in marked}
        clinicians |= await guest_calls.clinicians_of(self.db, guests)
        for clinician_id in clinicians:
            await self.fanout.changed(clinician_id)

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
        await self._reconcile_guests()
        await self._reconcile_hosts()
        await self._reconcile_consoles()

    async def _reconcile_patients(self) -> None:
        patients = self.sockets.patients
        # Sockets checked in before the read: what the read says of them is at least as new
        # as their own check-in.
        judged = {link.id: link for link in patients.values() if link.checked_in}
        rows = await calls.presences(
            self.db,
            process=self.process_id,
            appointment_ids={link.appointment_id for link in patients.values()},
        )
        back, lost = self._judge(rows, patients)
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
            await self.fanout.changed(clinician_id)
        by_visit = {row.appointment_id: row for row in rows}
        for connection, link in judged.items():
            if connection in patients:
                link.on_presence(by_visit.get(link.appointment_id))

    def _judge(
        self, rows: Sequence[calls.Presence | guest_calls.Presence], held: Collection[str]
    ) -> tuple[list[str], list[str]]:
        """Of the connections rows name: those held here but marked reconnecting (`back`), and
        those of this process not held here any more (`lost`). `held` is read after the rows:
        a socket is registered before its check-in is written, and let go before its close is.
        """
        named = {row.connection: row for row in rows if row.connection}
        back = [c for c, row in named.items() if c in held and row.presence == calls.RECONNECTING]
        lost = [c for c, row in named.items() if c not in held and row.process == self.process_id]
        return back, lost

    async def _reconcile_guests(self) -> None:
        """The guests' sockets here, as `_reconcile_patients` does the patients'."""
        guests = self.sockets.guests
        judged = {link.id: link for link in guests.values() if link.checked_in}
        rows = await guest_calls.presences(
            self.db,
            process=self.process_id,
            guest_ids={link.guest_id for link in guests.values()},
        )
        back, lost = self._judge(rows, guests)
        visits = set(await guest_calls.reclaim(self.db, back, process=self.process_id))
        if lost:
            deadline = utcnow() + dt.timedelta(seconds=self.settings.reconnect_grace_seconds)
            visits |= set(await guest_calls.release(self.db, lost, deadline=deadline))
        for clinician_id in await guest_calls.clinicians_of(self.db, visits):
            await self.fanout.changed(clinician_id)
        by_guest = {row.guest_id: row for row in rows}
        for connection, link in judged.items():
            if connection in guests:
                link.on_presence(by_guest.get(link.guest_id))

    async def _reconcile_hosts(self) -> None:
        """Calls hosted here whose call ended, or that another process took over, are closed:
        the hosting seen before the read, not one opened since (an admission, a takeover)."""
        hosted = self.hosting.hosted()
        if not hosted:
            return
        hosts = await calls.hosts(self.db, list(hosted))
        for call_id, generation in hosted.items():
            if hosts.get(call_id, "") != self.process_id:
                await self.hosting.unhost(call_id, generation)

    async def _reconcile_consoles(self) -> None:
        consoles = self.sockets.consoles
        held = {call_id for console in consoles for call_id in console.held_calls()}
        if not held:
            return
        known = await calls.statuses(self.db, held)
        for console in list(consoles):
            for call_id in list(console.held_calls()):
                status, reason = known.get(call_id, (Status.COMPLETED.value, None))
                if status != Status.IN_CALL.value:
                    await console.call_gone(call_id, reason or status)
