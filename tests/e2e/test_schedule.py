"""The scheduler's page: a week of slots; book, copy the link, download the invite, reschedule,
cancel, and a slot taken by someone else meanwhile."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from playwright.async_api import Page, expect

from tests.e2e.conftest import Pages, shot
from tests.e2e.helpers import sign_in
from tests.factories import Staff, booking_body, local_instant, next_weekday, rfc3339

ZONE = "America/New_York"  # Dr. Ada Test's time zone (tests.factories.make_staff)


async def show_week_of(page: Page, staff: Staff, day: dt.date) -> None:
    """Pick Dr. Ada Test and step forward to the week holding `day`.

    By id: every test's staff share the session's database, so there are many of that name.
    """
    await page.get_by_label("Clinician").select_option(value=str(staff.clinician.id))
    today = dt.datetime.now(ZoneInfo(ZONE)).date()
    weeks = (
        (day - dt.timedelta(days=day.weekday())) - (today - dt.timedelta(days=today.weekday()))
    ).days // 7
    for _ in range(weeks):
        await page.get_by_role("button", name="Next week →").click()
    await expect(page.locator(f"#day-{day.isoformat()}")).to_be_visible()


def slot(page: Page, start: dt.datetime) -> str:
    return f'[data-testid="free-slot"][data-start="{rfc3339(start)}"]'


class TestBookRescheduleCancel:
    async def test_the_whole_round(self, pages: Pages, staff: Staff, artifacts: Path) -> None:
        day = next_weekday(days_ahead=8)
        first = local_instant(day, "10:00", ZONE)
        later = local_instant(day, "14:00", ZONE)
        context = await pages.context()
        await context.grant_permissions(["clipboard-read", "clipboard-write"])
        page = await context.new_page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await show_week_of(page, staff, day)
        await expect(page.locator("#week-zone")).to_contain_text(ZONE)
        await shot(page, artifacts, "13-scheduler-week")

        await page.locator(slot(page, first)).click()
        dialog = page.locator("#book-dialog")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Patient's name (required)").fill("Pat Booked")
        await dialog.get_by_label("Email").fill("pat@example.org")
        await dialog.get_by_label("Mobile phone, international format").fill("+15551234567")
        await dialog.get_by_label("Reason for the visit").fill("Follow-up")
        await shot(page, artifacts, "14-scheduler-booking")
        await dialog.get_by_role("button", name="Book").click()

        details = page.locator("#appointment-dialog")
        await expect(details).to_be_visible()
        await expect(details.locator("#appointment-note")).to_contain_text("Booked")
        link = await details.locator("#visit-link").input_value()
        assert re.fullmatch(r"http://testserver/visit/[A-Za-z0-9_\-]{22,}", link)
        await details.get_by_role("button", name="Copy link").click()
        await expect(details.locator("#copy-status")).to_have_text("Link copied.")
        assert await page.evaluate("() => navigator.clipboard.readText()") == link
        async with page.expect_download() as waiting:
            await details.get_by_role("button", name="Download invite (.ics)").click()
        download = await waiting.value
        assert download.suggested_filename == f"visit-{day.isoformat()}.ics"
        invite = await asyncio.to_thread(Path(await download.path()).read_text)
        assert "BEGIN:VEVENT" in invite
        assert link in invite.replace("\r\n ", "")
        await shot(page, artifacts, "15-scheduler-booked")

        # Reschedule: pick a new free time in the week.
        await details.get_by_role("button", name="Reschedule").click()
        await expect(page.locator("#reschedule-bar")).to_contain_text("Pat Booked")
        await page.locator(slot(page, later)).click()
        await expect(details.locator("#appointment-note")).to_contain_text("Moved")
        assert await details.locator("#visit-link").input_value() == link
        await details.get_by_role("button", name="Close").click()
        booked = page.get_by_test_id("appointment").filter(has_text="Pat Booked")
        await expect(booked).to_have_count(1)
        await expect(page.locator(slot(page, first))).to_be_visible()  # free again
        await expect(page.locator(slot(page, later))).to_have_count(0)

        # Cancel.
        await booked.click()
        await details.get_by_role("button", name="Cancel appointment…").click()
        await details.get_by_label("Reason for cancelling (optional)").fill("Patient asked")
        await details.get_by_role("button", name="Cancel the appointment").click()
        await expect(page.locator("#message")).to_contain_text("Cancelled Pat Booked's visit")
        await expect(booked).to_have_count(0)
        await expect(page.locator(slot(page, later))).to_be_visible()
        await shot(page, artifacts, "16-scheduler-cancelled")

        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            token = link.rsplit("/", 1)[1]
            assert (await http.get(f"/api/v1/visits/{token}")).status_code == 410


class TestSlotTakenMeanwhile:
    async def test_a_clear_message_and_the_details_are_kept(
        self, pages: Pages, staff: Staff, artifacts: Path
    ) -> None:
        day = next_weekday(days_ahead=8)
        start = local_instant(day, "11:00", ZONE)
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await show_week_of(page, staff, day)
        await page.locator(slot(page, start)).click()
        dialog = page.locator("#book-dialog")
        await dialog.get_by_label("Patient's name (required)").fill("Pat Second")

        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            taken = await http.post(
                "/api/v1/appointments",
                json=booking_body(staff.clinician.id, start, name="Pat First"),
                headers=staff.admin.headers,
            )
            assert taken.status_code == 201, taken.text

        await dialog.get_by_role("button", name="Book").click()
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#message")).to_contain_text("was booked by someone else")
        await expect(
            page.get_by_test_id("appointment").filter(has_text="Pat First")
        ).to_be_visible()
        await expect(page.locator(slot(page, start))).to_have_count(0)
        await shot(page, artifacts, "17-scheduler-slot-taken")
        # Another time: the form opens with what was typed.
        await page.locator(slot(page, local_instant(day, "11:20", ZONE))).click()
        await expect(dialog.get_by_label("Patient's name (required)")).to_have_value("Pat Second")
        await dialog.get_by_role("button", name="Book").click()
        await expect(page.locator("#appointment-note")).to_contain_text("Booked")
