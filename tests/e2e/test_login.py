"""Signing in, where each role lands, wrong passwords, and a staff token that expires."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from app.db import Database
from tests.e2e.conftest import Pages, shot
from tests.e2e.helpers import consent_and_join, sign_in, video_advances
from tests.factories import PASSWORD, Staff
from tests.signaling.helpers import make_visit

# Make the page's stored token unusable, as if its 15 minutes were over.
EXPIRE_TOKEN = """() => {
    const key = "televisit.session";
    const session = JSON.parse(sessionStorage.getItem(key));
    session.token = "expired." + session.token;
    sessionStorage.setItem(key, JSON.stringify(session));
}"""


class TestSignIn:
    async def test_each_role_lands_on_its_page(self, pages: Pages, staff: Staff) -> None:
        page = await pages.page()
        await sign_in(page, staff.clinician, lands_on="/clinic")
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await sign_in(page, staff.admin, lands_on="/schedule")

    async def test_a_wrong_password_says_so(
        self, pages: Pages, staff: Staff, artifacts: Path
    ) -> None:
        page = await pages.page()
        await page.goto("/login")
        await page.get_by_test_id("login-email").fill(staff.clinician.user.email)
        await page.get_by_test_id("login-password").fill("not the password")
        await page.get_by_test_id("login-submit").click()
        await expect(page.locator("#login-error")).to_have_text(
            "That email and password do not match."
        )
        await expect(page).to_have_url(f"{pages.server.url}/login")
        await shot(page, artifacts, "18-login-error")

    async def test_pages_without_a_session_send_people_to_sign_in(self, pages: Pages) -> None:
        page = await pages.page()
        await page.goto("/clinic")
        await page.wait_for_url("**/login?next=%2Fclinic")
        await page.goto("/schedule")
        await page.wait_for_url("**/login?next=%2Fschedule")

    async def test_a_scheduler_opening_the_console_is_sent_to_the_schedule(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await page.goto("/clinic")
        await page.wait_for_url("**/schedule")


class TestExpiredToken:
    async def test_the_schedule_asks_for_the_password_and_carries_on(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        await expect(page.get_by_test_id("free-slot").first).to_be_visible()
        await page.evaluate(EXPIRE_TOKEN)
        await page.get_by_role("button", name="Next week →").click()
        dialog = page.locator("#reauth")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_label("Email")).to_have_value(staff.scheduler.user.email)
        await dialog.get_by_label("Password").fill(PASSWORD)
        await dialog.get_by_role("button", name="Sign in", exact=True).click()
        await expect(dialog).to_have_count(0)
        await expect(page.get_by_test_id("free-slot").first).to_be_visible()

    async def test_a_call_goes_on_while_the_clinician_signs_in_again(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        first = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Long")
        second = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Next")
        patient = await pages.page()
        await consent_and_join(patient, first.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Long")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(clinician)
        await clinician.evaluate(EXPIRE_TOKEN)

        # A new arrival makes the console reload today's schedule: the API refuses the token.
        newcomer = await pages.page()
        await consent_and_join(newcomer, second.token)
        await expect(clinician.locator("#arrival")).to_contain_text("Pat Next is waiting")
        dialog = clinician.locator("#reauth")
        await expect(dialog).to_be_visible()
        await video_advances(clinician)  # the call goes on behind the dialog
        await video_advances(patient)
        await shot(clinician, artifacts, "19-clinician-signs-in-again-during-a-call")
        await dialog.get_by_label("Password").fill(PASSWORD)
        await dialog.get_by_role("button", name="Sign in", exact=True).click()
        await expect(dialog).to_have_count(0)
        await expect(clinician.locator("#today")).to_contain_text("Pat Next")
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
