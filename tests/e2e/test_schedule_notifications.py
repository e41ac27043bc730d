"""The scheduler's page shows what was sent to the patient: a server that sends mail through a
real SMTP server (aiosmtpd on loopback); the dialog's list, and axe on it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.e2e.conftest import SERVER_SETTINGS, Pages, shot
from tests.e2e.helpers import assert_accessible, sign_in
from tests.e2e.test_schedule import ZONE, show_week_of, slot
from tests.factories import Staff, local_instant, next_weekday
from tests.outside import MailServer


@pytest.fixture
def server_settings(tmp_path: Path, mail: MailServer) -> dict[str, str]:
    return {
        **SERVER_SETTINGS,
        "recordings_dir": str(tmp_path / "recordings"),
        "smtp_url": mail.url,
        "mail_from": "Clinic <visits@clinic.example.org>",
        "notify_poll_seconds": "0.2",
    }


class TestDeliveryState:
    async def test_invitation_sent_and_reminders_due(
        self, pages: Pages, staff: Staff, mail: MailServer, axe_source: str, artifacts: Path
    ) -> None:
        day = next_weekday(days_ahead=9)
        start = local_instant(day, "11:00", ZONE)
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await show_week_of(page, staff, day)
        await page.locator(slot(page, start)).click()
        dialog = page.locator("#book-dialog")
        await dialog.get_by_label("Patient's name (required)").fill("Pat Messages")
        await dialog.get_by_label("Email").fill("pat.messages@example.org")
        await dialog.get_by_label("Patient's time zone").fill("Europe/Paris")
        await dialog.get_by_role("button", name="Book").click()

        details = page.locator("#appointment-dialog")
        messages = details.get_by_test_id("deliveries")
        await expect(messages.get_by_role("listitem")).to_have_count(3)
        # Sent once the worker has it; the page looks again by itself.
        await expect(messages.get_by_role("listitem").first).to_contain_text(
            "Invitation by email: sent"
        )
        await expect(messages).to_contain_text("Reminder 24 h before by email: due")
        await expect(messages).to_contain_text("Reminder 1 h before by email: due")
        await shot(page, artifacts, "17-scheduler-messages")
        await assert_accessible(page, axe_source, "schedule: appointment dialog with messages")

        [received] = mail.inbox.to("pat.messages@example.org")
        paris = start.astimezone(dt.timezone(dt.timedelta(hours=1)))
        assert f"{paris:%H:%M} (Paris time)" in str(received.message["Subject"])
