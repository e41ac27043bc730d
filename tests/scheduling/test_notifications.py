"""Invitations, notices and reminders: a real SMTP server (aiosmtpd) and an SMS gateway on
loopback receive them; both databases; refusing and hanging servers; at most once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from icalendar import Calendar
from pydantic import ValidationError
from sqlalchemy import insert, select, update

from app.config import Settings
from app.db import Database, create_engine
from app.main import create_app
from scheduling import visits
from scheduling.models import Appointment
from scheduling.notifications.models import Notification
from scheduling.notifications.worker import Worker
from tests.conftest import TEST_SECRET
from tests.factories import Staff, booking_body, local_instant, next_weekday
from tests.outside import MailServer, Silent, SmsGateway

NY = "America/New_York"
TOKEN = "gateway-token-" + "y" * 20
FROM = "Televisit Clinic <visits@clinic.example.org>"


def slot(clock: str = "10:00", days_ahead: int = 7) -> dt.datetime:
    return local_instant(next_weekday(days_ahead), clock, NY)


def notify_settings(database_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "public_url": "http://testserver",
        "db_pool_size": 5,
        "mail_from": FROM,
        "notify_poll_seconds": 0.05,
        "notify_retry_seconds": 0.05,
        # Generous: a loaded machine must not make a sound send look like a hung server.
        "notify_timeout_seconds": 5.0,
        "notify_attempts": 3,
        **extra,
    }
    return Settings(**values)


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    server = SmsGateway().start()
    try:
        yield server
    finally:
        server.stop()


class Clinic:
    """The app with notifications on, a client, and the staff."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, staff: Staff) -> None:
        self.app, self.client, self.staff = app, client, staff

    async def book(self, start: dt.datetime, **patient: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/appointments",
            json=booking_body(self.staff.clinician.id, start, **patient),
            headers=self.staff.scheduler.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def notifications(self, appointment_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(
            f"/api/v1/appointments/{appointment_id}/notifications",
            headers=self.staff.scheduler.headers,
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def settled(
        self, appointment_id: str, *, count: int, seconds: float = 20.0
    ) -> list[dict[str, Any]]:
        """The appointment's notifications once `count` of them are no longer queued."""
        async with asyncio.timeout(seconds):
            while True:
                items = await self.notifications(appointment_id)
                if sum(item["status"] != "queued" for item in items) >= count:
                    return items
                await asyncio.sleep(0.05)


async def open_clinic(settings: Settings, staff: Staff) -> AsyncIterator[Clinic]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Clinic(app, client, staff)


@pytest.fixture
async def clinic(
    database_url: str, staff: Staff, mail: MailServer, gateway: SmsGateway
) -> AsyncIterator[Clinic]:
    settings = notify_settings(
        database_url,
        smtp_url=mail.url,
        sms_webhook_url=gateway.url,
        sms_webhook_token=TOKEN,
    )
    async for opened in open_clinic(settings, staff):
        yield opened


def unique_email() -> str:
    return f"pat-{uuid.uuid4().hex[:10]}@example.org"


def unique_phone() -> str:
    return f"+1415{uuid.uuid4().int % 10**7:07d}"


def invitations(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if item["kind"] == "invitation"]


def calendar_of(message: Any) -> Calendar:
    parts = [p for p in message.iter_attachments() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1
    return Calendar.from_ical(parts[0].get_content())


async def rows_of_ids(db: Database, ids: set[uuid.UUID]) -> list[Notification]:
    async with db.session(write=False) as session:
        result = await session.execute(select(Notification).where(Notification.id.in_(ids)))
        return list(result.scalars())


async def rows_of(db: Database, appointment_id: str) -> list[Notification]:
    async with db.session(write=False) as session:
        result = await session.execute(
            select(Notification).where(Notification.appointment_id == uuid.UUID(appointment_id))
        )
        return list(result.scalars())


class TestInvitation:
    async def test_mail_and_sms_at_booking(
        self, clinic: Clinic, mail: MailServer, gateway: SmsGateway
    ) -> None:
        address, phone = unique_email(), unique_phone()
        start = slot()
        booked = await clinic.book(start, email=address, phone=phone, timezone="Europe/Paris")
        items = await clinic.settled(booked["id"], count=2)
        invitations = [i for i in items if i["kind"] == "invitation"]
        assert {(i["channel"], i["status"], i["attempts"]) for i in invitations} == {
            ("email", "sent", 1),
            ("sms", "sent", 1),
        }
        assert all(i["sent_at"] for i in invitations)

        [received] = mail.inbox.to(address)
        message = received.message
        assert received.recipients == [address]
        assert message["To"] == address
        assert "visits@clinic.example.org" in message["From"]
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert booked["visit_url"] in text
        # Least data: no reason for the visit, no name; the time in the patient's zone, named.
        assert "Follow-up" not in received.raw.decode()
        assert "Pat Example" not in received.raw.decode()
        paris = start.astimezone(dt.timezone(dt.timedelta(hours=1)))
        assert f"{paris:%H:%M} (Paris time)" in text
        event = calendar_of(message).walk("VEVENT")[0]
        assert str(event["UID"]).startswith(booked["id"])
        assert event.decoded("DTSTART") == start
        assert str(event["URL"]) == booked["visit_url"]
        assert event.decoded("SEQUENCE") == 0

        [sms] = gateway.to(phone)
        assert sms.authorization == f"Bearer {TOKEN}"
        assert set(sms.body) == {"to", "text"}
        assert booked["visit_url"] in sms.body["text"]
        assert "Follow-up" not in sms.body["text"]
        assert len(sms.body["text"]) < 200

    async def test_clinicians_zone_named_without_the_patients(
        self, clinic: Clinic, mail: MailServer
    ) -> None:
        address = unique_email()
        start = slot("11:20")
        booked = await clinic.book(start, email=address)
        await clinic.settled(booked["id"], count=1)
        [received] = mail.inbox.to(address)
        assert (
            f"{start.astimezone(dt.timezone(dt.timedelta(hours=-5))):%H:%M} (New York time)"
            in (received.message["Subject"])
        )

    async def test_reminders_queued_at_the_hours_before(
        self, clinic: Clinic, db: Database, mail: MailServer
    ) -> None:
        address = unique_email()
        start = slot("13:00")
        booked = await clinic.book(start, email=address)
        await clinic.settled(booked["id"], count=1)
        reminders = [r for r in await rows_of(db, booked["id"]) if r.kind == "reminder"]
        assert sorted((r.hours, r.due_at) for r in reminders) == [
            (1, start - dt.timedelta(hours=1)),
            (24, start - dt.timedelta(hours=24)),
        ]
        assert {r.status for r in reminders} == {"queued"}
        # The day comes (the row made due): the reminder goes, once.
        async with db.session(write=True) as session:
            await session.execute(
                update(Notification)
                .where(Notification.id == next(r.id for r in reminders if r.hours == 24))
                .values(due_at=dt.datetime.now(dt.UTC))
            )
        items = await clinic.settled(booked["id"], count=2)
        assert [(i["kind"], i["hours"], i["status"]) for i in items if i["kind"] == "reminder"] == [
            ("reminder", 24, "sent"),
            ("reminder", 1, "queued"),
        ]
        assert len(mail.inbox.to(address)) == 2
        reminder = mail.inbox.to(address)[1].message
        assert reminder["Subject"].startswith("Reminder:")
        assert not list(reminder.iter_attachments())

    async def test_nothing_queued_without_email_or_phone(
        self, clinic: Clinic, db: Database
    ) -> None:
        booked = await clinic.book(slot("14:00"))
        assert await rows_of(db, booked["id"]) == []
        assert await clinic.notifications(booked["id"]) == []

    async def test_nothing_queued_without_a_channel(
        self, database_url: str, staff: Staff, db: Database
    ) -> None:
        async for clinic in open_clinic(notify_settings(database_url), staff):
            booked = await clinic.book(slot("14:20"), email=unique_email(), phone=unique_phone())
            assert await rows_of(db, booked["id"]) == []

    async def test_only_the_configured_channel(
        self, database_url: str, staff: Staff, db: Database, gateway: SmsGateway
    ) -> None:
        settings = notify_settings(
            database_url, sms_webhook_url=gateway.url, sms_webhook_token=TOKEN
        )
        async for clinic in open_clinic(settings, staff):
            phone = unique_phone()
            booked = await clinic.book(slot("14:40"), email=unique_email(), phone=phone)
            items = await clinic.settled(booked["id"], count=1)
            assert {i["channel"] for i in items} == {"sms"}
            assert len(gateway.to(phone)) == 1

    async def test_idempotent_replay_queues_nothing_more(
        self, clinic: Clinic, db: Database, mail: MailServer
    ) -> None:
        address = unique_email()
        body = booking_body(clinic.staff.clinician.id, slot("15:00"), email=address)
        headers = {**clinic.staff.scheduler.headers, "Idempotency-Key": uuid.uuid4().hex}
        first = await clinic.client.post("/api/v1/appointments", json=body, headers=headers)
        again = await clinic.client.post("/api/v1/appointments", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        await clinic.settled(first.json()["id"], count=1)
        assert len(await rows_of(db, first.json()["id"])) == 3
        assert len(mail.inbox.to(address)) == 1


class TestRescheduleAndCancel:
    async def test_reschedule_notice_and_reminders_move(
        self, clinic: Clinic, db: Database, mail: MailServer, gateway: SmsGateway
    ) -> None:
        address, phone = unique_email(), unique_phone()
        booked = await clinic.book(slot("10:00"), email=address, phone=phone)
        await clinic.settled(booked["id"], count=2)
        new_start = slot("15:20", days_ahead=9)
        response = await clinic.client.post(
            f"/api/v1/appointments/{booked['id']}/reschedule",
            json={"start": new_start.isoformat()},
            headers=clinic.staff.scheduler.headers,
        )
        assert response.status_code == 200, response.text
        items = await clinic.settled(booked["id"], count=4)
        assert sorted(
            (i["kind"], i["channel"], i["status"]) for i in items if i["kind"] != "reminder"
        ) == [
            ("invitation", "email", "sent"),
            ("invitation", "sms", "sent"),
            ("rescheduled", "email", "sent"),
            ("rescheduled", "sms", "sent"),
        ]
        reminders = [r for r in await rows_of(db, booked["id"]) if r.kind == "reminder"]
        assert len(reminders) == 4  # moved, not added
        assert {(r.due_at, r.sequence) for r in reminders} == {
            (new_start - dt.timedelta(hours=24), 1),
            (new_start - dt.timedelta(hours=1), 1),
        }
        invitation, notice = mail.inbox.to(address)
        assert "has moved" in notice.message["Subject"]
        event = calendar_of(notice.message).walk("VEVENT")[0]
        assert event.decoded("DTSTART") == new_start
        assert event.decoded("SEQUENCE") == 1
        assert str(event["UID"]) == str(calendar_of(invitation.message).walk("VEVENT")[0]["UID"])
        assert "has moved" in gateway.to(phone)[1].body["text"]

    async def test_cancel_notice_and_reminders_cancelled(
        self, clinic: Clinic, db: Database, mail: MailServer, gateway: SmsGateway
    ) -> None:
        address, phone = unique_email(), unique_phone()
        booked = await clinic.book(slot("11:00"), email=address, phone=phone)
        await clinic.settled(booked["id"], count=2)
        response = await clinic.client.post(
            f"/api/v1/appointments/{booked['id']}/cancel",
            json={"reason": "patient asked: back pain better"},
            headers=clinic.staff.scheduler.headers,
        )
        assert response.status_code == 200, response.text
        items = await clinic.settled(booked["id"], count=4)
        # Reminders cancelled (not shown); the notice sent on both channels.
        assert sorted((i["kind"], i["channel"], i["status"]) for i in items) == [
            ("cancelled", "email", "sent"),
            ("cancelled", "sms", "sent"),
            ("invitation", "email", "sent"),
            ("invitation", "sms", "sent"),
        ]
        rows = await rows_of(db, booked["id"])
        assert {r.status for r in rows if r.kind == "reminder"} == {"cancelled"}
        notice = mail.inbox.to(address)[1]
        assert "cancelled" in notice.message["Subject"]
        assert "back pain" not in notice.raw.decode()
        assert booked["visit_url"] not in notice.raw.decode()
        assert calendar_of(notice.message)["METHOD"] == "CANCEL"
        assert "cancelled" in gateway.to(phone)[1].body["text"]


class TestGuestInvitation:
    """A guest with an email or a phone gets their own link, sent to them, not the patient."""

    async def invite(self, clinic: Clinic, appointment_id: str, **guest: Any) -> dict[str, Any]:
        response = await clinic.client.post(
            f"/api/v1/appointments/{appointment_id}/participants",
            json={"role": "interpreter", "name": "Ina Qanary", **guest},
            headers=clinic.staff.clinician.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def test_the_guest_gets_their_own_link_by_mail_and_sms(
        self,
        clinic: Clinic,
        mail: MailServer,
        gateway: SmsGateway,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        patient_address, patient_phone = unique_email(), unique_phone()
        booked = await clinic.book(slot("15:00"), email=patient_address, phone=patient_phone)
        await clinic.settled(booked["id"], count=2)
        address, phone = unique_email(), unique_phone()
        guest = await self.invite(clinic, booked["id"], email=address, phone=phone)
        items = await clinic.settled(booked["id"], count=4)
        theirs = [i for i in items if i["participant_id"] == guest["id"]]
        assert sorted((i["kind"], i["channel"], i["status"]) for i in theirs) == [
            ("guest_invitation", "email", "sent"),
            ("guest_invitation", "sms", "sent"),
        ]
        assert {i["participant_id"] for i in items if i["kind"] == "invitation"} == {None}

        [received] = mail.inbox.to(address)
        assert received.recipients == [address]
        body = received.message.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content()
        assert guest["visit_url"] in text
        assert booked["visit_url"] not in received.raw.decode()
        assert "as the interpreter" in text
        # Nothing of the patient's: not their name, not the reason.
        assert "Pat Example" not in received.raw.decode()
        assert "Follow-up" not in received.raw.decode()
        assert str(calendar_of(received.message).walk("VEVENT")[0]["URL"]) == guest["visit_url"]
        assert len(mail.inbox.to(patient_address)) == 1  # the patient's invitation only
        [sms] = gateway.to(phone)
        assert guest["visit_url"] in sms.body["text"]
        assert len(gateway.to(patient_phone)) == 1

        # The visit is cancelled: the guest is told too, and their link is no longer sent.
        response = await clinic.client.post(
            f"/api/v1/appointments/{booked['id']}/cancel",
            json={},
            headers=clinic.staff.scheduler.headers,
        )
        assert response.status_code == 200
        items = await clinic.settled(booked["id"], count=8)
        assert sorted(
            (i["kind"], i["channel"]) for i in items if i["participant_id"] == guest["id"]
        ) == [
            ("cancelled", "email"),
            ("cancelled", "sms"),
            ("guest_invitation", "email"),
            ("guest_invitation", "sms"),
        ]
        notice = mail.inbox.to(address)[1]
        assert "cancelled" in notice.message["Subject"]
        assert guest["visit_url"] not in notice.raw.decode()
        assert "cancelled" in gateway.to(phone)[1].body["text"]

        # No log line carries the guest's name, contacts or link.
        logged = "\n".join(
            f"{record.name} {record.getMessage()} {record.__dict__}"
            for record in caplog.records
            if not record.name.startswith("mail.")
        )
        assert "notification" in logged
        token = guest["visit_url"].rsplit("/", 1)[1]
        for needle in ("Qanary", address, phone, phone[1:], token):
            assert needle not in logged

    async def test_nothing_for_a_guest_without_contacts_and_a_removed_guests_is_cancelled(
        self, clinic: Clinic, db: Database, mail: MailServer
    ) -> None:
        booked = await clinic.book(slot("15:20"))
        await self.invite(clinic, booked["id"])
        assert await rows_of(db, booked["id"]) == []
        # Queued for later (as if the worker had not come to it), then the guest is removed.
        guest = await self.invite(clinic, booked["id"], role="caregiver", email=unique_email())
        async with db.session(write=True) as session:
            await session.execute(
                update(Notification)
                .where(Notification.participant_id == uuid.UUID(guest["id"]))
                .values(status="queued", due_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
            )
        response = await clinic.client.delete(
            f"/api/v1/appointments/{booked['id']}/participants/{guest['id']}",
            headers=clinic.staff.clinician.headers,
        )
        assert response.status_code == 204
        rows = await rows_of(db, booked["id"])
        assert [(r.kind, r.status) for r in rows] == [("guest_invitation", "cancelled")]


class TestPrivacy:
    async def test_no_patient_data_or_link_in_any_log_line(
        self,
        clinic: Clinic,
        mail: MailServer,
        gateway: SmsGateway,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        canary = {"email": "zelda.qanary@example.org", "phone": "+15550009876"}
        mail.inbox.refusals[canary["email"]] = 1  # a retry, logged, too
        booked = await clinic.book(slot("16:20"), name="Zelda Qanary", **canary)
        await clinic.settled(booked["id"], count=2)
        response = await clinic.client.post(
            f"/api/v1/appointments/{booked['id']}/cancel",
            json={},
            headers=clinic.staff.scheduler.headers,
        )
        assert response.status_code == 200
        await clinic.settled(booked["id"], count=4)
        token = booked["visit_url"].rsplit("/", 1)[1]
        # Ours: every logger but the test's own SMTP server's (aiosmtpd's "mail.log").
        logged = "\n".join(
            f"{record.name} {record.getMessage()} {record.__dict__}"
            for record in caplog.records
            if not record.name.startswith("mail.")
        )
        assert "notification" in logged  # the worker did log
        for needle in ("Qanary", "qanary", "5550009876", token, TOKEN, "Follow-up"):
            assert needle not in logged


class TestAccess:
    async def test_other_clinician_gets_404(self, clinic: Clinic) -> None:
        booked = await clinic.book(slot("16:00"), email=unique_email())
        response = await clinic.client.get(
            f"/api/v1/appointments/{booked['id']}/notifications",
            headers=clinic.staff.other_clinician.headers,
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
        own = await clinic.client.get(
            f"/api/v1/appointments/{booked['id']}/notifications",
            headers=clinic.staff.clinician.headers,
        )
        assert own.status_code == 200
        missing = await clinic.client.get(
            f"/api/v1/appointments/{uuid.uuid4()}/notifications",
            headers=clinic.staff.admin.headers,
        )
        assert missing.status_code == 404
        anonymous = await clinic.client.get(f"/api/v1/appointments/{booked['id']}/notifications")
        assert anonymous.status_code == 401


class TestFailures:
    async def test_refusing_server_retried_until_it_takes_it(
        self, clinic: Clinic, mail: MailServer, db: Database
    ) -> None:
        address = unique_email()
        mail.inbox.refusals[address] = 2
        booked = await clinic.book(slot("10:40"), email=address)
        [item] = invitations(await clinic.settled(booked["id"], count=1))
        assert (item["status"], item["attempts"]) == ("sent", 3)
        assert len(mail.inbox.to(address)) == 1

    async def test_refusing_server_failed_after_the_attempts(
        self, clinic: Clinic, mail: MailServer, gateway: SmsGateway, db: Database
    ) -> None:
        address, phone = unique_email(), unique_phone()
        mail.inbox.refusals[address] = 10**6
        booked = await clinic.book(slot("12:00"), email=address, phone=phone)
        items = await clinic.settled(booked["id"], count=2)
        by_channel = {i["channel"]: i for i in items if i["kind"] == "invitation"}
        assert (by_channel["email"]["status"], by_channel["email"]["attempts"]) == ("failed", 3)
        assert by_channel["email"]["sent_at"] is None
        # Nothing lost: the failure is on record, and the other channel went.
        assert by_channel["sms"]["status"] == "sent"
        [row] = [
            r
            for r in await rows_of(db, booked["id"])
            if r.kind == "invitation" and r.channel == "email"
        ]
        assert row.last_error == "smtp_451"
        assert mail.inbox.to(address) == []

    async def test_rejected_recipient_fails_at_once(self, clinic: Clinic, mail: MailServer) -> None:
        mail.inbox.reject = True
        booked = await clinic.book(slot("12:20"), email=unique_email())
        [item] = invitations(await clinic.settled(booked["id"], count=1))
        assert (item["status"], item["attempts"]) == ("failed", 1)

    async def test_hanging_server_times_out_and_fails(
        self, database_url: str, staff: Staff, db: Database, gateway: SmsGateway
    ) -> None:
        silent = Silent()
        try:
            settings = notify_settings(
                database_url,
                smtp_url=silent.url,
                sms_webhook_url=gateway.url,
                sms_webhook_token=TOKEN,
                notify_timeout_seconds=0.5,
            )
            async for clinic in open_clinic(settings, staff):
                phone = unique_phone()
                booked = await clinic.book(slot("12:40"), email=unique_email(), phone=phone)
                items = await clinic.settled(booked["id"], count=2)
                by_channel = {i["channel"]: i for i in items if i["kind"] == "invitation"}
                assert (by_channel["email"]["status"], by_channel["email"]["attempts"]) == (
                    "failed",
                    3,
                )
                assert by_channel["sms"]["status"] == "sent"
                [row] = [
                    r
                    for r in await rows_of(db, booked["id"])
                    if r.kind == "invitation" and r.channel == "email"
                ]
                assert row.last_error == "SMTPConnectTimeoutError"
        finally:
            silent.close()

    async def test_no_answer_to_data_is_never_sent_again(
        self, database_url: str, staff: Staff, mail: MailServer, db: Database
    ) -> None:
        """The message arrived but its 250 did not: it may have been delivered, so it is
        `failed` (outcome unknown) after one attempt, never a second copy."""
        mail.inbox.data_hang = True
        settings = notify_settings(database_url, smtp_url=mail.url, notify_timeout_seconds=0.5)
        async for clinic in open_clinic(settings, staff):
            address = unique_email()
            booked = await clinic.book(slot("09:00"), email=address)
            [item] = invitations(await clinic.settled(booked["id"], count=1))
            assert (item["status"], item["attempts"]) == ("failed", 1)
            [row] = [r for r in await rows_of(db, booked["id"]) if r.kind == "invitation"]
            assert row.last_error in ("SMTPReadTimeoutError", "TimeoutError")
            await asyncio.sleep(0.5)  # retries would have come by now (backoff 0.05 s)
            assert len(mail.inbox.to(address)) == 1

    async def test_gateway_busy_then_takes_it(self, clinic: Clinic, gateway: SmsGateway) -> None:
        gateway.statuses = [503, 429]
        phone = unique_phone()
        booked = await clinic.book(slot("09:20"), phone=phone)
        [item] = invitations(await clinic.settled(booked["id"], count=1))
        assert (item["status"], item["attempts"]) == ("sent", 3)
        assert len(gateway.to(phone)) == 1
        assert gateway.to(phone)[0].idempotency_key


async def due_reminders(db: Database, staff: Staff, count: int) -> set[uuid.UUID]:
    """`count` booked appointments far ahead, each with an email reminder due now."""
    now = dt.datetime.now(dt.UTC)
    first = local_instant(next_weekday(200), "00:00", "UTC")
    appointments: list[dict[str, Any]] = []
    reminders: list[dict[str, Any]] = []
    for n in range(count):
        start = first + dt.timedelta(minutes=20 * n)
        appointment_id, salt = uuid.uuid4(), visits.new_salt()
        appointments.append(
            {
                "id": appointment_id,
                "clinician_id": staff.clinician.id,
                "start_at": start,
                "end_at": start + dt.timedelta(minutes=20),
                "status": "booked",
                "patient_name": "Pat Race",
                "patient_email": f"race-{n}-{uuid.uuid4().hex[:6]}@example.org",
                "link_salt": salt,
                "link_hash": visits.token_hash(visits.token_for(b"k" * 32, salt)),
                "sequence": 0,
                "created_by_id": staff.scheduler.id,
                "created_at": now,
                "updated_at": now,
            }
        )
        reminders.append(
            {
                "id": uuid.uuid4(),
                "appointment_id": appointment_id,
                "kind": "reminder",
                "channel": "email",
                "hours": 24,
                "sequence": 0,
                "status": "queued",
                "due_at": now,
                "attempts": 0,
                "created_at": now,
            }
        )
    async with db.session(write=True) as session:
        await session.execute(insert(Appointment), appointments)
        await session.execute(insert(Notification), reminders)
    return {uuid.UUID(str(row["id"])) for row in reminders}


class TestClaiming:
    async def test_two_workers_one_outbox_each_sent_once(
        self, database_url: str, staff: Staff, db: Database, mail: MailServer
    ) -> None:
        """Two workers with engines of their own (as two processes have) race over one
        outbox: every reminder arrives exactly once, and both did part of the work."""
        mail.inbox.data_delay = 0.02
        settings = notify_settings(database_url, smtp_url=mail.url)
        ids = await due_reminders(db, staff, 60)
        databases = [Database(create_engine(settings)) for _ in range(2)]
        workers = [
            Worker(db=database, settings=settings, link_key=b"k" * 32) for database in databases
        ]
        try:
            for worker in workers:
                await worker.start()
            async with asyncio.timeout(60):
                while True:
                    rows = await rows_of_ids(db, ids)
                    if all(r.status == "sent" for r in rows):
                        break
                    await asyncio.sleep(0.05)
        finally:
            for worker in workers:
                await worker.stop()
            for database in databases:
                await database.dispose()
        arrived = mail.inbox.message_ids()
        ours = {f"<{row_id}@testserver>" for row_id in ids}
        assert {key: arrived[key] for key in ours} == dict.fromkeys(ours, 1)
        assert {r.attempts for r in rows} == {1}
        # Both took part: the claims' tokens name both workers.
        assert {str(r.claimed_by).rsplit(".", 1)[0] for r in rows} == {
            worker.identity for worker in workers
        }


class TestSettings:
    @pytest.mark.parametrize(
        "url",
        [
            "http://mail.example.org:25",
            "smtp://",
            "smtp://mail.example.org:notaport",
            "smtp://user@mail.example.org:25",
            "smtps://mail.example.org:465?starttls=1",
            "smtp://mail.example.org:25?tls=1",
        ],
    )
    def test_malformed_smtp_url_refused(self, url: str) -> None:
        with pytest.raises(ValidationError, match="TELEVISIT_SMTP_URL is malformed"):
            Settings(smtp_url=url, mail_from=FROM)  # type: ignore[arg-type]  # parsed by pydantic

    def test_password_never_in_the_message(self) -> None:
        with pytest.raises(ValidationError) as raised:
            Settings(smtp_url="smtp://u:hunter2secret@h:99999", mail_from=FROM)  # type: ignore[arg-type]  # parsed by pydantic
        assert "hunter2secret" not in str(raised.value.errors()[0]["msg"])

    def test_forms_accepted(self) -> None:
        server = Settings(
            smtp_url="smtps://me%40x:p%3Ass@mail.example.org",  # type: ignore[arg-type]  # parsed
            mail_from=FROM,
        ).smtp
        assert server is not None
        assert (server.host, server.port, server.implicit_tls) == ("mail.example.org", 465, True)
        assert (server.username, server.password) == ("me@x", "p:ss")
        starttls = Settings(smtp_url="smtp://h:587?starttls=1", mail_from=FROM).smtp  # type: ignore[arg-type]  # parsed
        assert starttls is not None
        assert (starttls.starttls, starttls.port) == (True, 587)

    def test_reminder_hours(self) -> None:
        assert Settings().reminder_hours == (24, 1)
        assert Settings(reminder_hours="1, 48").reminder_hours == (48, 1)  # type: ignore[arg-type]  # parsed
        assert Settings(reminder_hours="").reminder_hours == ()  # type: ignore[arg-type]  # parsed
        with pytest.raises(ValidationError, match="TELEVISIT_REMINDER_HOURS"):
            Settings(reminder_hours="24,soon")  # type: ignore[arg-type]  # parsed

    def test_incomplete_channels_refused(self) -> None:
        with pytest.raises(ValidationError, match="TELEVISIT_MAIL_FROM"):
            Settings(smtp_url="smtp://h:25")  # type: ignore[arg-type]  # parsed
        with pytest.raises(ValidationError, match="TELEVISIT_SMS_WEBHOOK_TOKEN"):
            Settings(sms_webhook_url="https://sms.example.org/send")  # type: ignore[arg-type]  # parsed

    def test_serve_refuses_to_start(self, sqlite_url: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve", "--port", "1"],
            env={
                "PATH": "/usr/bin:/bin",
                "TELEVISIT_DATABASE_URL": sqlite_url,
                "TELEVISIT_SMTP_URL": "smtp://u:hunter2secret@mail.example.org:0",
                "TELEVISIT_MAIL_FROM": FROM,
            },
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        err = done.stderr.decode()
        assert "TELEVISIT_SMTP_URL is malformed" in err
        assert "hunter2secret" not in err + done.stdout.decode()
