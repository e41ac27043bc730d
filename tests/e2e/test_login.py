"""Signing in, where each role lands, wrong passwords, tokens renewed silently, a session that
ends (the dialog), and signing out."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from playwright.async_api import WebSocket, expect

from app.db import Database
from tests.e2e.conftest import SERVER_SETTINGS, Pages, shot
from tests.e2e.helpers import assert_accessible, consent_and_join, sign_in, video_advances
from tests.factories import PASSWORD, Staff
from tests.signaling.helpers import make_visit

# Make the page's stored access token unusable, as if its 15 minutes were over.
EXPIRE_TOKEN = """() => {
    const key = "televisit.session";
    const session = JSON.parse(sessionStorage.getItem(key));
    session.token = "expired." + session.token;
    sessionStorage.setItem(key, JSON.stringify(session));
}"""
# End the page's session on the server behind its back (as a logout in another tab would).
END_SESSION_ELSEWHERE = """async () => {
    const session = JSON.parse(sessionStorage.getItem("televisit.session"));
    const response = await fetch("/api/v1/auth/logout", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: session.refreshToken }),
    });
    if (response.status !== 204) throw new Error(`logout answered ${response.status}`);
}"""
READ_SESSION = """() => JSON.parse(sessionStorage.getItem("televisit.session"))"""
READ_TOKEN = """() => JSON.parse(sessionStorage.getItem("televisit.session")).token"""


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
    async def test_a_refused_token_is_renewed_without_asking(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        # This week is shown (its free times may be over, late on a Friday).
        await expect(page.get_by_role("heading", name="(today)")).to_be_visible()
        await page.evaluate(EXPIRE_TOKEN)
        await page.get_by_role("button", name="Next week →").click()
        # The page keeps this week's days until next week's have been read (with the renewed
        # token): only their showing says the request went through; this week's free times
        # would be visible at once.
        await expect(page.get_by_role("heading", name="(today)")).to_have_count(0)
        await expect(page.get_by_test_id("free-slot").first).to_be_visible()
        await expect(page.locator("#reauth")).to_have_count(0)
        token = await page.evaluate(READ_TOKEN)
        assert not token.startswith("expired.")

    async def test_the_schedule_asks_for_the_password_once_the_session_ended(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.scheduler, lands_on="/schedule")
        # This week is shown (its free times may be over, late on a Friday).
        await expect(page.get_by_role("heading", name="(today)")).to_be_visible()
        await page.evaluate(END_SESSION_ELSEWHERE)
        await page.get_by_role("button", name="Next week →").click()
        dialog = page.locator("#reauth")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_label("Email")).to_have_value(staff.scheduler.user.email)
        await dialog.get_by_label("Password").fill(PASSWORD)
        await dialog.get_by_role("button", name="Sign in", exact=True).click()
        await expect(dialog).to_have_count(0)
        await expect(page.get_by_role("heading", name="(today)")).to_have_count(0)
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
        await clinician.evaluate(END_SESSION_ELSEWHERE)

        # The server closes the console's socket once its session has ended; the console asks
        # for the password, and the call goes on behind the dialog.
        dialog = clinician.locator("#reauth")
        await expect(dialog).to_be_visible(timeout=20_000)
        await video_advances(clinician)
        await video_advances(patient)
        await shot(clinician, artifacts, "19-clinician-signs-in-again-during-a-call")
        await dialog.get_by_label("Password").fill(PASSWORD)
        await dialog.get_by_role("button", name="Sign in", exact=True).click()
        await expect(dialog).to_have_count(0)
        # Signed in again, the console serves the queue: a new arrival shows.
        newcomer = await pages.page()
        await consent_and_join(newcomer, second.token)
        await expect(clinician.locator("#arrival")).to_contain_text("Pat Next is waiting")
        await expect(clinician.locator("#today")).to_contain_text("Pat Next")
        await video_advances(clinician)
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


class TestSilentRenewal:
    """Access tokens of 6 s, and a console closed 1 s after its token expired: the console
    renews before each expiry and hands the socket every new token, never asking."""

    @pytest.fixture
    def server_settings(self, tmp_path: Path) -> dict[str, str]:
        return {
            **SERVER_SETTINGS,
            "recordings_dir": str(tmp_path / "recordings"),
            "access_token_minutes": "0.1",
            "clinic_token_grace_seconds": "1",
        }

    async def test_the_console_renews_and_its_socket_stays_open_past_several_expiries(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        clinician = await pages.page()
        sockets: list[WebSocket] = []
        renewals: list[str] = []

        def on_socket(socket: WebSocket) -> None:
            if socket.url.endswith("/ws/clinic"):
                sockets.append(socket)
                socket.on(
                    "framereceived",
                    lambda frame: (
                        renewals.append(str(frame)) if '"authenticated"' in str(frame) else None
                    ),
                )

        clinician.on("websocket", on_socket)
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        first = await clinician.evaluate(READ_TOKEN)
        # Five lifetimes of the access token, at least.
        await clinician.wait_for_timeout(31_000)
        assert len(renewals) >= 5, renewals
        assert len(sockets) == 1
        assert not sockets[0].is_closed()
        await expect(clinician.locator("#reauth")).to_have_count(0)
        await expect(clinician.locator("#socket-banner")).to_be_hidden()
        assert await clinician.evaluate(READ_TOKEN) != first
        # The socket still serves the queue: a patient arriving now shows up.
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Late")
        patient = await pages.page()
        await consent_and_join(patient, visit.token)
        await expect(
            clinician.get_by_test_id("queue-item").filter(has_text="Pat Late")
        ).to_be_visible()
        assert len(sockets) == 1

    async def test_signing_out_ends_the_session(self, pages: Pages, staff: Staff) -> None:
        page = await pages.page()
        await sign_in(page, staff.clinician, lands_on="/clinic")
        session = await page.evaluate(READ_SESSION)
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url("**/login?reason=signed_out")
        answer = await page.request.post(
            "/api/v1/auth/refresh", data={"refresh_token": session["refreshToken"]}
        )
        assert answer.status == 401
        assert (await answer.json())["error"]["code"] == "session_ended"


class TestTwoFactor:
    """Admins must sign in with a code: the first time, they enrol on the sign-in page."""

    @pytest.fixture
    def server_settings(self, tmp_path: Path) -> dict[str, str]:
        return {
            **SERVER_SETTINGS,
            "recordings_dir": str(tmp_path / "recordings"),
            "require_2fa_admins": "true",
        }

    async def test_an_admin_enrols_then_signs_in_with_a_code(
        self, pages: Pages, staff: Staff, axe_source: str, artifacts: Path
    ) -> None:
        page = await pages.page()
        await sign_in(page, staff.admin, lands_on="/login")
        enrol = page.get_by_role("heading", name="Set up two-factor sign-in")
        await expect(enrol).to_be_visible()
        # The section shows before its key has come back from the server: wait for the key.
        await expect(page.get_by_test_id("enrol-key")).to_have_text(re.compile(r"^[A-Z2-7 ]{32,}$"))
        key = (await page.get_by_test_id("enrol-key").text_content() or "").replace(" ", "")
        totp = pyotp.TOTP(key)
        await assert_accessible(page, axe_source, "two-factor enrolment")
        await shot(page, artifacts, "20-two-factor-enrolment")
        await page.get_by_test_id("enrol-otp").fill("000000")
        await page.get_by_test_id("enrol-submit").click()
        await expect(page.locator("#enrol-error")).to_contain_text("not right")
        await page.get_by_test_id("enrol-otp").fill(totp.now())
        await page.get_by_test_id("enrol-submit").click()
        await page.wait_for_url("**/schedule")

        # Next time: the password first, then the code field appears.
        await page.goto("/login")
        await page.get_by_test_id("login-email").fill(staff.admin.user.email)
        await page.get_by_test_id("login-password").fill(PASSWORD)
        await page.get_by_test_id("login-submit").click()
        code = page.get_by_test_id("login-otp")
        await expect(code).to_be_visible()
        await expect(code).to_be_focused()
        await assert_accessible(page, axe_source, "sign-in asking for a code")
        await code.fill(totp.at(time.time() + 30))
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url("**/schedule")


class TestPasswordReset:
    async def test_a_reset_link_sets_a_new_password(
        self, pages: Pages, staff: Staff, axe_source: str, artifacts: Path
    ) -> None:
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            answer = await http.post(
                f"/api/v1/users/{staff.scheduler.id}/password-reset", headers=staff.admin.headers
            )
        token = answer.json()["reset_url"].split("#", 1)[1]
        page = await pages.page()
        await page.goto(f"/reset-password#{token}")
        await expect(page.get_by_role("heading", name="Set a new password")).to_be_visible()
        # The token leaves the address bar (and history) at once.
        await expect(page).to_have_url(f"{pages.server.url}/reset-password")
        await assert_accessible(page, axe_source, "password reset")
        new_password = "a fresh password from the link"
        await page.get_by_label("New password", exact=True).fill(new_password)
        await page.get_by_label("The same password again").fill(new_password + "x")
        await page.get_by_test_id("reset-submit").click()
        await expect(page.locator("#reset-error")).to_contain_text("differ")
        await assert_accessible(page, axe_source, "password reset with an error")
        await page.get_by_label("The same password again").fill(new_password)
        await page.get_by_test_id("reset-submit").click()
        done = page.get_by_role("heading", name="Your password is set")
        await expect(done).to_be_focused()
        await assert_accessible(page, axe_source, "password reset done")
        await shot(page, artifacts, "21-password-reset-done")
        await page.get_by_role("link", name="Sign in").click()
        await page.get_by_test_id("login-email").fill(staff.scheduler.user.email)
        await page.get_by_test_id("login-password").fill(new_password)
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url("**/schedule")

        # The link works once.
        again = await pages.page()
        await again.goto(f"/reset-password#{token}")
        await again.get_by_label("New password", exact=True).fill(new_password)
        await again.get_by_label("The same password again").fill(new_password)
        await again.get_by_test_id("reset-submit").click()
        await expect(again.locator("#reset-error")).to_contain_text("used already")
