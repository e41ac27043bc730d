"""The scheduler's guests of a booked appointment, in Chromium at phone width: add an interpreter
(a field the API refuses is marked next to it), their own link shown; a third guest refused with
the limit; one removed (confirmed: their link then closed); axe-core on the dialog."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import expect

from app.db import Database
from tests.e2e.conftest import PHONE, Pages
from tests.e2e.helpers import assert_accessible, sign_in
from tests.e2e.test_schedule import ZONE, show_week_of
from tests.factories import Staff, local_instant, next_weekday
from tests.signaling.helpers import make_visit

INTERPRETER = "Ines Interpreter"
CAREGIVER = "Carl Caregiver"


class TestScheduleGuests:
    async def test_add_an_interpreter_refuse_a_third_remove_one(
        self, pages: Pages, staff: Staff, db: Database, axe_source: str
    ) -> None:
        day = next_weekday(days_ahead=8)
        start = local_instant(day, "09:40", ZONE)
        visit = await make_visit(
            db, staff.clinician, by=staff.scheduler, start=start, name="Pat Guested"
        )
        guests_url = f"/api/v1/appointments/{visit.appointment_id}/participants"

        page = await pages.page(viewport=PHONE)
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await show_week_of(page, staff, day)
        await page.get_by_test_id("appointment").filter(has_text="Pat Guested").click()
        dialog = page.locator("#appointment-dialog")
        guests = dialog.get_by_role("region", name="Guests")
        await expect(guests.locator("#guest-status")).to_have_text("No guests.")

        # From the keyboard alone: the form opens on the role; an email the API refuses is
        # marked next to its field, which gets the focus; Enter in a field sends the form.
        await guests.get_by_role("button", name="Add a guest…").focus()
        await page.keyboard.press("Enter")
        role = guests.get_by_label("Role")
        await expect(role).to_be_focused()
        await expect(role).to_have_value("interpreter")
        await page.keyboard.press("Tab")
        await expect(guests.get_by_label("Guest's name (required)")).to_be_focused()
        await page.keyboard.type(INTERPRETER)
        await page.keyboard.press("Tab")
        email = guests.get_by_label("Email (optional: the invitation is sent there)")
        await expect(email).to_be_focused()
        await page.keyboard.type("not-an-address")
        await page.keyboard.press("Enter")
        await expect(guests.locator("#guest-email-error")).to_contain_text("valid email address")
        await expect(email).to_have_attribute("aria-invalid", "true")
        await expect(email).to_be_focused()
        await expect(guests.get_by_test_id("guest-item")).to_have_count(0)
        await page.keyboard.press("Control+A")
        await page.keyboard.press("Backspace")
        await page.keyboard.press("Enter")

        item = guests.get_by_test_id("guest-item")
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text(INTERPRETER)
        await expect(item).to_contain_text("Interpreter")
        await expect(item).to_contain_text("Invited")
        link = item.get_by_test_id("guest-link")
        await expect(link).to_be_focused()
        await expect(link).to_have_value(
            re.compile(r"^http://testserver/visit/[A-Za-z0-9_\-]{22,}$")
        )
        await expect(
            guests.get_by_label(f"{INTERPRETER}'s own link (give it only to them)")
        ).to_be_visible()
        token = (await link.input_value()).rsplit("/", 1)[1]

        # Someone else adds a caregiver meanwhile: this page's third is refused, clearly.
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            other = await http.post(
                guests_url,
                json={"role": "caregiver", "name": CAREGIVER},
                headers=staff.admin.headers,
            )
            assert other.status_code == 201, other.text
        await guests.get_by_role("button", name="Add a guest…").click()
        await guests.get_by_label("Role").select_option("clinician")
        await guests.get_by_label("Guest's name (required)").fill("Dr. Third Colleague")
        await guests.get_by_test_id("guest-add").click()
        await expect(guests.get_by_test_id("guest-error")).to_have_text(
            "This visit already has two guests, the most it can have. Remove one to add another."
        )
        await expect(item).to_have_count(2)
        await expect(item.nth(1)).to_contain_text(CAREGIVER)
        await expect(guests.get_by_role("button", name="Add a guest…")).to_be_disabled()
        await expect(guests.locator("#guest-form")).to_be_hidden()
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await assert_accessible(page, axe_source, "schedule: an appointment's guests (390 px)")

        # Remove the interpreter (confirmed): their link closes at once.
        await item.filter(has_text=INTERPRETER).get_by_test_id("guest-remove").click()
        confirm = page.get_by_role("dialog", name=f"Remove {INTERPRETER} from the visit?")
        await confirm.get_by_role("button", name="Remove").click()
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text(CAREGIVER)
        await expect(guests.locator("#guest-status")).to_contain_text(f"{INTERPRETER} is removed")
        await expect(guests.get_by_role("heading", name="Guests")).to_be_focused()
        await expect(guests.get_by_role("button", name="Add a guest…")).to_be_enabled()
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            assert (await http.get(f"/api/v1/visits/{token}")).status_code == 410
            listed = await http.get(guests_url, headers=staff.admin.headers)
        assert [g["name"] for g in listed.json()["items"]] == [CAREGIVER]
