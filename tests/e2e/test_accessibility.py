"""axe-core on every page and every screen that matters: no serious or critical violation."""

from __future__ import annotations

from playwright.async_api import expect

from app.db import Database
from tests.e2e.conftest import PHONE, Pages
from tests.e2e.helpers import assert_accessible, consent_and_join, sign_in, video_advances
from tests.factories import Staff
from tests.signaling.helpers import make_visit


class TestAxe:
    async def test_login(self, pages: Pages, axe_source: str) -> None:
        page = await pages.page(viewport=PHONE)
        await page.goto("/login")
        await assert_accessible(page, axe_source, "login")
        await page.get_by_test_id("login-submit").click()
        await expect(page.locator("#login-error")).to_have_text("Enter your email and password.")
        await assert_accessible(page, axe_source, "login with an error")

    async def test_patient_and_console_through_a_visit(
        self, pages: Pages, staff: Staff, db: Database, axe_source: str
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Axe")
        patient = await pages.page(viewport=PHONE)
        await patient.goto(f"/visit/{visit.token}")
        await patient.get_by_role("button", name="Start the check").click()
        await expect(patient.locator("#mic-row")).to_be_visible()
        await assert_accessible(patient, axe_source, "visit: device check and consent")
        # Nothing wider than the phone: no sideways scrolling.
        width = await patient.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await patient.get_by_test_id("consent-decline").click()
        await expect(patient.locator("#declined-info")).to_be_visible()
        await assert_accessible(patient, axe_source, "visit: declined")
        await consent_and_join(patient, visit.token)
        await assert_accessible(patient, axe_source, "visit: waiting room")

        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Axe")
        await expect(item).to_be_visible()
        await assert_accessible(clinician, axe_source, "console: queue")
        await item.get_by_test_id("admit").click()
        await video_advances(clinician)
        await video_advances(patient)
        await assert_accessible(clinician, axe_source, "console: call")
        await assert_accessible(patient, axe_source, "visit: call")
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
        await assert_accessible(patient, axe_source, "visit: ended")
        await assert_accessible(clinician, axe_source, "console: after the call")

    async def test_a_link_that_does_not_work(self, pages: Pages, axe_source: str) -> None:
        page = await pages.page(viewport=PHONE)
        await page.goto("/visit/not-a-real-link-at-all-0000000000")
        await expect(page.get_by_role("heading", name="This link does not work")).to_be_visible()
        await assert_accessible(page, axe_source, "visit: unknown link")

    async def test_schedule_and_its_dialogs(
        self, pages: Pages, staff: Staff, axe_source: str
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await page.get_by_label("Clinician").select_option(value=str(staff.clinician.id))
        await page.get_by_role("button", name="Next week →").click()
        first = page.get_by_test_id("free-slot").first
        await expect(first).to_be_visible()
        await assert_accessible(page, axe_source, "schedule: week")
        await first.click()
        await page.get_by_label("Patient's name (required)").fill("Pat Axe")
        await assert_accessible(page, axe_source, "schedule: booking dialog")
        await page.locator("#book-dialog").get_by_role("button", name="Book").click()
        await expect(page.locator("#appointment-note")).to_contain_text("Booked")
        await assert_accessible(page, axe_source, "schedule: appointment dialog")

    async def test_phone_width_schedule(self, pages: Pages, staff: Staff, axe_source: str) -> None:
        page = await pages.page(viewport=PHONE)
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await expect(page.locator("#week-title")).to_contain_text("Week of")
        await assert_accessible(page, axe_source, "schedule: phone width")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
