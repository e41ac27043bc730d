"""The worker every process runs: claim due notifications, send each, record what happened.

At most once, across processes and restarts:

1. Claim: due `queued` rows become `claimed` by a token new for this claim, with a short
   lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two processes never take one row; on
   SQLite the write lock serialises the claims).
2. Before anything leaves, one conditional UPDATE turns `claimed` (by this token) into
   `sending`, counts the attempt and sets a lease longer than the bounded send can last. A
   claim that is no longer ours (the lease ended, the visit moved or was cancelled) changes no
   row, and nothing is sent.
3. The outcome is written by the claim's owner: `sent`; back to `queued` with a backoff only
   when the transport is sure nothing was handed over; else `failed`.

A process that dies leaves its rows `claimed` (nothing attempted: the lease ends and another
process sends them) or `sending` (perhaps handed over: when the lease ends they become `failed`
with `outcome_unknown`, never sent again). Nothing is ever sent twice; what a death can cost is
the few notifications it was sending at that instant, and those are marked, not lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import uuid
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import User
from app.config import Settings
from app.db import Database, utcnow
from scheduling import calendar, visits
from scheduling.models import Appointment, Status, VisitGuest
from scheduling.notifications import messages, transport
from scheduling.notifications.models import Channel, Kind, Notification, State
from scheduling.notifications.transport import Outcome, Result

logger = logging.getLogger("televisit.notifications")

# Sends in flight at once in one process.
SENDS_AT_ONCE = 8
# A claim not turned into a send within this long goes back to the queue.
CLAIM_LEASE = dt.timedelta(seconds=10)
# Beyond the longest a send may take, before a `sending` row is taken for dead.
LEASE_MARGIN = dt.timedelta(seconds=10)
MAX_BACKOFF_SECONDS = 3600.0
UNKNOWN = "outcome_unknown"
# How long a clean stop waits for sends in flight; one still going is left `sending` (and so
# ends `failed` when its lease does: it may have been handed over).
STOP_WAIT_SECONDS = 10.0


def send_deadline(settings: Settings) -> float:
    """The longest one send may take: a few of its bounded steps."""
    return settings.notify_timeout_seconds * 4


def backoff(settings: Settings, attempts: int) -> dt.timedelta:
    seconds = settings.notify_retry_seconds * 2 ** max(attempts - 1, 0)
    return dt.timedelta(seconds=min(seconds, MAX_BACKOFF_SECONDS))


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    token: str
    kind: Kind
    channel: Channel
    attempts: int
    recipient: str
    visit: messages.Visit
    ics: bytes | None


class Worker:
    def __init__(self, *, db: Database, settings: Settings, link_key: bytes) -> None:
        self.db = db
        self.settings = settings
        self.link_key = link_key
        # "<pid>.<random>": which process, and which worker in it; each claim adds its own part.
        self.identity = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.deadline = send_deadline(settings)
        self.send_lease = dt.timedelta(seconds=self.deadline) + LEASE_MARGIN
        self._smtp = settings.smtp
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._smtp is not None or self.settings.sms_webhook_url is not None

    # Life --------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.enabled:
            return
        # httpx logs every request's URL at INFO; a gateway's URL may carry a credential.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.notify_timeout_seconds), follow_redirects=False
        )
        self._loop = asyncio.create_task(self._run(), name="notifications")

    async def stop(self) -> None:
        """Claim nothing more; let sends in flight finish (up to STOP_WAIT_SECONDS), then close."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._sends:
            await asyncio.wait(self._sends, timeout=min(self.deadline + 1, STOP_WAIT_SECONDS))
            left = list(self._sends)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        poll = self.settings.notify_poll_seconds
        reaped = -poll
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before the work: a send ending meanwhile wakes the wait below at once.
            self._wake.clear()
            claimed = 0
            try:
                if loop.time() - reaped >= poll:
                    await self.reap()
                    reaped = loop.time()
                free = SENDS_AT_ONCE - len(self._sends)
                if free > 0:
                    jobs = await self.claim(free)
                    claimed = len(jobs)
                    for token, row_id in jobs:
                        task = asyncio.create_task(self._send(row_id, token))
                        self._sends.add(task)
                        task.add_done_callback(self._sent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "notification queue not read", extra={"error_type": type(exc).__name__}
                )
            if claimed and len(self._sends) < SENDS_AT_ONCE:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._wake.set()

    # The steps ---------------------------------------------------------------------------

    async def reap(self) -> int:
        """Leases that ended: claims go back to the queue, sends become `failed`."""
        now = utcnow()
        async with self.db.session(write=True) as session:
            await session.execute(
                update(Notification)
                .where(Notification.status == State.CLAIMED.value, Notification.lease_until < now)
                .values(status=State.QUEUED.value, claimed_by=None, lease_until=None)
            )
            result = await session.execute(
                update(Notification)
                .where(Notification.status == State.SENDING.value, Notification.lease_until < now)
                .values(status=State.FAILED.value, lease_until=None, last_error=UNKNOWN)
                .returning(Notification.id)
            )
            lost = len(result.all())
        if lost:
            logger.warning(
                "notifications whose sender died mid-send marked failed (never sent again)",
                extra={"event": "notification.unknown", "count": lost},
            )
        return lost

    async def claim(self, limit: int) -> list[tuple[str, uuid.UUID]]:
        now = utcnow()
        token = f"{self.identity}.{uuid.uuid4().hex[:12]}"
        due = (
            select(Notification.id)
            .where(Notification.status == State.QUEUED.value, Notification.due_at <= now)
            .order_by(Notification.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        async with self.db.session(write=True) as session:
            result = await session.execute(
                update(Notification)
                .where(Notification.id.in_(due.scalar_subquery()))
                .values(status=State.CLAIMED.value, claimed_by=token, lease_until=now + CLAIM_LEASE)
                .returning(Notification.id)
            )
            return [(token, row_id) for row_id in result.scalars().all()]

    async def _send(self, row_id: uuid.UUID, token: str) -> None:
        try:
            job = await self.begin(row_id, token)
            if job is None:
                return
            result = await self.deliver(job)
            await self.finish(job, result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("notification not sent", extra={"error_type": type(exc).__name__})

    async def begin(self, row_id: uuid.UUID, token: str) -> Job | None:
        """`claimed` -> `sending` if the claim still holds and the visit still wants it."""
        now = utcnow()
        async with self.db.session(write=True) as session:
            row = await session.get(Notification, row_id, populate_existing=True)
            if row is None or row.claimed_by != token or row.status != State.CLAIMED.value:
                return None
            appointment = await session.get(Appointment, row.appointment_id)
            clinician = await session.get(User, appointment.clinician_id) if appointment else None
            guest = None
            if row.participant_id is not None:
                guest = await session.get(VisitGuest, row.participant_id)
            if (
                appointment is None
                or clinician is None
                or not _still_wanted(row, appointment)
                or (row.participant_id is not None and (guest is None or guest.removed_at))
            ):
                await _set(
                    session, row_id, token, {"status": State.CANCELLED.value, "lease_until": None}
                )
                return None
            moved = await _set(
                session,
                row_id,
                token,
                {
                    "status": State.SENDING.value,
                    "attempts": Notification.attempts + 1,
                    "lease_until": now + self.send_lease,
                },
                expect=State.CLAIMED,
            )
            if not moved:
                return None
            return self._job(row, token, appointment, clinician, guest)

    def _job(
        self,
        row: Notification,
        token: str,
        appointment: Appointment,
        clinician: User,
        guest: VisitGuest | None = None,
    ) -> Job:
        """What to send and to whom: the patient, or the guest the row is for (their link)."""
        kind, channel = Kind(row.kind), Channel(row.channel)
        salt = appointment.link_salt if guest is None else guest.link_salt
        url = visits.visit_url(self.settings.public_base, visits.token_for(self.link_key, salt))
        visit = messages.Visit(
            notification_id=row.id,
            kind=kind,
            start_at=appointment.start_at,
            timezone=appointment.patient_timezone or clinician.timezone,
            clinician_name=clinician.name,
            visit_url=url,
            guest_role=None if guest is None else guest.role,
        )
        ics = None
        if channel is Channel.EMAIL and kind is not Kind.REMINDER:
            ics = calendar.invitation(
                appointment, clinician_name=clinician.name, visit_url=url, domain=self.domain
            )
        if guest is None:
            email, phone = appointment.patient_email, appointment.patient_phone
        else:
            email, phone = guest.email, guest.phone
        recipient = email if channel is Channel.EMAIL else phone
        return Job(
            id=row.id,
            token=token,
            kind=kind,
            channel=channel,
            attempts=row.attempts + 1,
            recipient=recipient or "",
            visit=visit,
            ics=ics,
        )

    @property
    def domain(self) -> str:
        return self.settings.public_url.host or "televisit"

    async def deliver(self, job: Job) -> Result:
        if not job.recipient:
            return Result(Outcome.FAILED, "no_recipient")
        if job.channel is Channel.EMAIL:
            if self._smtp is None or self.settings.mail_from is None:
                return Result(Outcome.FAILED, "mail_not_configured")
            message = messages.mail(
                job.visit,
                sender=self.settings.mail_from,
                recipient=job.recipient,
                domain=self.domain,
                ics=job.ics,
            )
            return await transport.send_mail(
                self._smtp,
                message,
                step_seconds=self.settings.notify_timeout_seconds,
                deadline=self.deadline,
            )
        url, token = self.settings.sms_webhook_url, self.settings.sms_webhook_token
        if url is None or token is None or self._http is None:
            return Result(Outcome.FAILED, "sms_not_configured")
        return await transport.send_sms(
            self._http,
            url=str(url),
            token=token.get_secret_value(),
            to=job.recipient,
            text=messages.sms_text(job.visit),
            key=job.id,
            deadline=self.deadline,
        )

    async def finish(self, job: Job, result: Result) -> None:
        """Write the outcome; tried again for a while, since a send done and not written
        would later be taken for unknown."""
        now = utcnow()
        values: dict[str, object]
        if result.outcome is Outcome.SENT:
            values = {"status": State.SENT.value, "sent_at": now, "last_error": None}
        elif result.outcome is Outcome.RETRY and job.attempts < self.settings.notify_attempts:
            values = {
                "status": State.QUEUED.value,
                "due_at": now + backoff(self.settings, job.attempts),
                "claimed_by": None,
                "last_error": result.error,
            }
        else:
            values = {"status": State.FAILED.value, "last_error": result.error or UNKNOWN}
        for wait in (0.0, 0.5, 2.0, 5.0):
            await asyncio.sleep(wait)
            try:
                async with self.db.session(write=True) as session:
                    await _set(session, job.id, job.token, {**values, "lease_until": None})
                break
            except Exception as exc:
                error = type(exc).__name__
        else:
            logger.warning("notification outcome not written", extra={"error_type": error})
            return
        log = logger.info if result.outcome is Outcome.SENT else logger.warning
        log(
            "notification %s",
            values["status"],
            extra={
                "event": f"notification.{values['status']}",
                "reason": f"{job.kind.value}/{job.channel.value}",
                "code": result.error,
                "count": job.attempts,
            },
        )


def _still_wanted(row: Notification, appointment: Appointment) -> bool:
    if row.kind == Kind.CANCELLED.value:
        return appointment.status == Status.CANCELLED.value
    if appointment.status == Status.CANCELLED.value:
        return False
    if row.kind == Kind.REMINDER.value:
        return appointment.status == Status.BOOKED.value
    return True


async def _set(
    session: AsyncSession,
    row_id: uuid.UUID,
    token: str,
    values: dict[str, object],
    *,
    expect: State | None = None,
) -> bool:
    """Change a row this claim holds (in `expect`, or still ours: `sending`, or `failed` by a
    lease that ended while the send went on)."""
    states = (
        [expect.value]
        if expect is not None
        else [State.CLAIMED.value, State.SENDING.value, State.FAILED.value]
    )
    result = await session.execute(
        update(Notification)
        .where(
            Notification.id == row_id,
            Notification.claimed_by == token,
            Notification.status.in_(states),
        )
        .values(**values)
        .returning(Notification.id)
        # The row read before keeps what it read (the attempt is counted from it).
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None
