"""The administration page: users, consent texts, the audit log and its CSV, recordings."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Locator, Page, expect
from sqlalchemy import update

from app.db import Database
from scheduling.models import Appointment, Recording, Status
from tests.databases import own_database
from tests.e2e.conftest import PHONE, Pages, shot
from tests.e2e.helpers import assert_accessible
from tests.factories import PASSWORD, Person, Staff
from tests.live import LiveServer
from tests.signaling.helpers import grant, make_visit
from tests.webm import write_webm

NEW_PASSWORD = "a long enough password"


async def admin_page(pages: Pages, admin: Person, **options: object) -> Page:
    """Signed in as the admin from /login?next=/admin, on the administration page."""
    page = await pages.page(**options)
    await page.goto("/login?next=%2Fadmin")
    await page.get_by_test_id("login-email").fill(admin.user.email)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await page.wait_for_url("**/admin")
    await expect(page.locator("#consent-meta")).to_contain_text("version")
    await expect(page.locator("#audit-status")).to_contain_text("shown")
    await expect(page.locator("#recordings-status")).not_to_have_text("Loading the recordings…")
    return page


async def sign_in_status(server: LiveServer, email: str) -> int:
    """What `POST /api/v1/auth/token` answers this account with its first password."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post(
            "/api/v1/auth/token", data={"username": email, "password": NEW_PASSWORD}
        )
    return response.status_code


async def add_user(page: Page, email: str, name: str, password: str = NEW_PASSWORD) -> Locator:
    """Fill and send the add-user dialog (a scheduler in Berlin); the dialog."""
    await page.get_by_test_id("add-user").click()
    dialog = page.locator("#user-dialog")
    await dialog.get_by_label("Email").fill(email)
    await dialog.get_by_label("Name").fill(name)
    await dialog.get_by_label("Role").select_option("scheduler")
    await dialog.get_by_label("Time zone").fill("Europe/Berlin")
    await dialog.get_by_label("First password").fill(password)
    await dialog.get_by_role("button", name="Add").click()
    return dialog


def user_item(page: Page, name: str) -> Locator:
    return page.get_by_test_id("user-item").filter(has_text=name)


class TestWhoMayOpenIt:
    async def test_without_a_session_it_asks_to_sign_in(self, pages: Pages) -> None:
        page = await pages.page()
        await page.goto("/admin")
        await page.wait_for_url("**/login?next=%2Fadmin")

    async def test_a_scheduler_is_told_it_is_for_administrators(
        self, pages: Pages, staff: Staff, axe_source: str
    ) -> None:
        page = await pages.page(viewport=PHONE)
        await page.goto("/login")
        await page.get_by_test_id("login-email").fill(staff.scheduler.user.email)
        await page.get_by_test_id("login-password").fill(PASSWORD)
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url("**/schedule")
        await expect(page.locator("#admin-link")).to_be_hidden()
        await page.goto("/admin")
        await expect(
            page.get_by_role("heading", name="This page is for administrators")
        ).to_be_focused()
        await expect(page.locator("#not-admin-text")).to_contain_text("scheduler")
        await expect(page.locator("#admin-content")).to_be_hidden()
        await expect(page.get_by_role("link", name="Go to the schedule")).to_be_visible()
        await assert_accessible(page, axe_source, "admin: not an administrator")

    async def test_admins_find_it_from_the_schedule(self, pages: Pages, staff: Staff) -> None:
        page = await pages.page()
        await page.goto("/login")
        await page.get_by_test_id("login-email").fill(staff.admin.user.email)
        await page.get_by_test_id("login-password").fill(PASSWORD)
        await page.get_by_test_id("login-submit").click()
        await page.wait_for_url("**/schedule")
        await page.get_by_role("link", name="Administration").click()
        await page.wait_for_url("**/admin")
        await expect(page.get_by_role("heading", name="Users")).to_be_visible()


class TestTwoFactorRequired:
    @pytest.fixture
    def server_settings(self, server_settings: dict[str, str]) -> dict[str, str]:
        """The usual settings (the conftest's fixture of this name), with 2FA for admins."""
        return {**server_settings, "require_2fa_admins": "true"}

    async def test_an_admin_without_it_is_sent_to_set_it_up(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await pages.page()
        await page.goto("/login?next=%2Fadmin")
        await page.get_by_test_id("login-email").fill(staff.admin.user.email)
        await page.get_by_test_id("login-password").fill(PASSWORD)
        await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_role("heading", name="Set up two-factor sign-in")).to_be_visible()
        # Straight to the page instead, with the session the sign-in left.
        await page.goto("/admin")
        problem = page.locator("#page-problem")
        await expect(problem).to_contain_text("Set up two-factor sign-in before using this page")
        await expect(page.locator("#admin-content")).to_be_hidden()
        await problem.get_by_role("link", name="Sign in again to set it up").click()
        await page.wait_for_url("**/login?next=%2Fadmin")


class TestUsers:
    async def test_add_a_user(self, pages: Pages, staff: Staff, artifacts: Path) -> None:
        page = await admin_page(pages, staff.admin)
        await expect(user_item(page, staff.clinician.user.email)).to_be_visible()
        dialog = await add_user(page, "dana.new@clinic.example", "Dana New", password="short")
        await expect(dialog.locator("#user-error")).to_contain_text("at least 10 characters")
        await dialog.get_by_label("First password").fill(NEW_PASSWORD)
        await dialog.get_by_role("button", name="Add").click()
        await expect(dialog).to_be_hidden()
        await expect(page.locator("#users-message")).to_have_text(
            "Dana New was added as scheduler."
        )
        item = user_item(page, "Dana New")
        await expect(item).to_contain_text("dana.new@clinic.example · Europe/Berlin")
        await expect(item).to_contain_text("Scheduler")

        # The same email again: said plainly, in the dialog.
        await page.get_by_test_id("add-user").click()
        await dialog.get_by_label("Email").fill("dana.new@clinic.example")
        await dialog.get_by_label("Name").fill("Dana Again")
        await dialog.get_by_label("First password").fill(NEW_PASSWORD)
        await dialog.get_by_role("button", name="Add").click()
        await expect(dialog.locator("#user-error")).to_have_text(
            "There is already an account with that email."
        )
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()

    async def test_change_deactivate_and_reactivate_a_user(
        self, pages: Pages, staff: Staff, artifacts: Path
    ) -> None:
        page = await admin_page(pages, staff.admin)
        dialog = await add_user(page, "erin.moves@clinic.example", "Erin Moves")
        item = user_item(page, "Erin Moves")
        await item.get_by_role("button", name="Edit Erin Moves").click()
        await dialog.get_by_label("Role").select_option("clinician")
        await dialog.get_by_label("Name").fill("Erin Moved")
        await dialog.get_by_role("button", name="Save").click()
        await expect(page.locator("#users-message")).to_have_text(
            "Erin Moved's account was changed."
        )
        await expect(page.get_by_role("button", name="Edit Erin Moved")).to_be_focused()
        item = user_item(page, "Erin Moved")
        await expect(item).to_contain_text("Clinician")

        await item.get_by_test_id("deactivate").click()
        await page.get_by_role("dialog").get_by_role("button", name="Deactivate").click()
        await expect(page.locator("#users-message")).to_have_text("Erin Moved is deactivated.")
        await expect(item).to_contain_text("Deactivated")
        await expect(item.get_by_test_id("reactivate")).to_be_focused()
        await page.locator("#users-title").scroll_into_view_if_needed()
        await shot(page, artifacts, "30-admin-users")
        assert await sign_in_status(pages.server, "erin.moves@clinic.example") == 401

        await item.get_by_test_id("reactivate").click()
        await expect(page.locator("#users-message")).to_have_text("Erin Moved can sign in again.")
        await expect(item).not_to_contain_text("Deactivated")
        assert await sign_in_status(pages.server, "erin.moves@clinic.example") == 200

    async def test_a_password_reset_link_is_shown_once_with_a_copy_button(
        self, pages: Pages, staff: Staff
    ) -> None:
        page = await admin_page(pages, staff.admin)
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        item = user_item(page, staff.clinician.user.email)
        await item.get_by_test_id("reset-password").click()
        dialog = page.locator("#reset-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog.get_by_test_id("reset-url")).not_to_have_value("")
        link = await dialog.get_by_test_id("reset-url").input_value()
        assert link.startswith("http://testserver/reset-password#")
        await dialog.get_by_role("button", name="Copy link").click()
        await expect(dialog.locator("#reset-copy-status")).to_have_text("Link copied.")
        assert await page.evaluate("() => navigator.clipboard.readText()") == link
        await dialog.get_by_role("button", name="Done").click()
        await expect(dialog).to_be_hidden()
        assert await dialog.get_by_test_id("reset-url").input_value() == ""
        # The link works: its token sets a new password, once.
        token = link.split("#", 1)[1]
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            body = {"token": token, "password": "a brand new password"}
            used = await http.post("/api/v1/auth/password-reset", json=body)
            assert used.status_code == 204, used.text
            again = await http.post("/api/v1/auth/password-reset", json=body)
            assert again.status_code >= 400


class TestConsentTexts:
    @pytest.fixture
    def database_url(self, tmp_path: Path) -> Iterator[str]:
        """A database of its own: the text published here would be every later test's."""
        with own_database("sqlite", tmp_path) as url:
            yield url

    async def test_publish_a_version_and_see_which_one_a_visit_agreed_to(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Agreed")
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            current = (await http.get(f"/api/v1/visits/{visit.token}")).json()["consent"]
            await grant(http, visit.token, ("video_visit", "recording"))
        page = await admin_page(pages, staff.admin)
        version = current["version"]
        await expect(page.get_by_test_id("consent-version")).to_contain_text(f"version {version},")
        await expect(page.get_by_test_id("consent-current")).to_have_text(current["text"])

        # The text unchanged is not a new version.
        await page.get_by_role("button", name=f"Publish as version {version + 1}").click()
        await expect(page.locator("#consent-error")).to_contain_text("This is the current text")
        text = "We will see each other on video. You may stop at any time. (New wording.)"
        await page.get_by_label("Text of the new version").fill(text)
        await page.get_by_role("button", name=f"Publish as version {version + 1}").click()
        await page.get_by_role("dialog").get_by_role("button", name="Publish").click()
        await expect(page.locator("#consent-status")).to_have_text(
            f"Version {version + 1} is published and is now the current text."
        )
        await expect(page.get_by_test_id("consent-current")).to_have_text(text)
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            shown = (await http.get(f"/api/v1/visits/{visit.token}")).json()["consent"]
        assert (shown["version"], shown["text"]) == (version + 1, text)

        await page.get_by_label("Visit", exact=True).select_option(str(visit.appointment_id))
        records = page.get_by_test_id("consent-records")
        await expect(records.locator("tbody tr")).to_have_count(1)
        row = records.locator("tbody tr").first
        await expect(row).to_contain_text("patient")
        await expect(row).to_contain_text("Agreed")
        await expect(row).to_contain_text("video visit, recording")
        await expect(row).to_contain_text(f"version {version}")
        await shot(page, artifacts, "31-admin-consent")


class TestAuditLog:
    async def test_filter_page_older_and_download_the_csv(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Audited")
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            # Each read is an audit event: well over one page of 100.
            for _ in range(3):
                response = await http.get(
                    f"/api/v1/appointments/{visit.appointment_id}",
                    headers=staff.clinician.headers,
                )
                assert response.status_code == 200
            for _ in range(105):
                response = await http.get(
                    "/api/v1/audit-events", params={"limit": 1}, headers=staff.admin.headers
                )
                assert response.status_code == 200
        page = await admin_page(pages, staff.admin)
        rows = page.get_by_test_id("audit-row")
        await expect(rows).to_have_count(100)
        older = page.get_by_test_id("audit-older")
        await older.click()
        # The trail is shared with earlier tests (it cannot be emptied): two pages at most.
        await expect(rows).not_to_have_count(100)
        shown = await rows.count()
        assert 3 + 105 <= shown <= 200  # every read above, over two pages
        await expect(rows.filter(has_text="appointment.read")).to_have_count(3)

        # Filters: one record's events, then one person's.
        await page.get_by_label("Record id").fill(str(visit.appointment_id))
        await page.get_by_role("button", name="Show", exact=True).click()
        await expect(rows).to_have_count(3)
        await expect(rows.first).to_contain_text(staff.clinician.user.name)
        await shot(page, artifacts, "32-admin-audit")
        await page.get_by_label("Record id").fill("")
        await page.get_by_label("Who").select_option(str(staff.clinician.id))
        await page.get_by_role("button", name="Show", exact=True).click()
        await expect(rows).to_have_count(3)
        await page.get_by_label("Who").select_option("")

        # A time range in the admin's zone: nothing from a year ago.
        await page.locator("#audit-from").fill("2020-01-01T00:00")
        await page.locator("#audit-to").fill("2020-01-02T00:00")
        await page.get_by_role("button", name="Show", exact=True).click()
        await expect(page.locator("#audit-status")).to_have_text("No events match.")
        await page.locator("#audit-from").fill("")
        await page.locator("#audit-to").fill("")

        async with page.expect_download() as waiting:
            await page.get_by_test_id("audit-csv").click()
        download = await waiting.value
        assert download.suggested_filename.startswith("audit-events-")
        assert download.suggested_filename.endswith(".csv")
        text = await asyncio.to_thread(Path(await download.path()).read_text)
        table = list(csv.DictReader(io.StringIO(text)))
        assert len(table) > shown  # everything, not one page: the reads above included
        assert {row["action"] for row in table} >= {"appointment.read", "audit.list"}
        await expect(page.locator("#audit-status")).to_have_text("The CSV is downloaded.")


def _webm(path: Path) -> int:
    """A real two-second VP8 WebM, as a call's recording would be; its size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_webm(path)
    return path.stat().st_size


async def _recorded_visit(
    db: Database, staff: Staff, folder: Path, name: str, days_ago: int
) -> tuple[uuid.UUID, int]:
    """A visit that took place days ago with one finished recording on disk."""
    held = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=days_ago)
    visit = await make_visit(db, staff.clinician, by=staff.scheduler, start=held, name=name)
    recording_id = uuid.uuid4()
    size = await asyncio.to_thread(_webm, folder / f"{recording_id}.webm")
    async with db.session(write=True) as session:
        await session.execute(
            update(Appointment)
            .where(Appointment.id == visit.appointment_id)
            .values(status=Status.COMPLETED.value)
        )
        session.add(
            Recording(
                id=recording_id,
                appointment_id=visit.appointment_id,
                file_name=f"{recording_id}.webm",
                started_at=held + dt.timedelta(minutes=2),
                ended_at=held + dt.timedelta(minutes=9),
                bytes=size,
                stop_reason="stopped",
            )
        )
    return recording_id, size


class TestRecordings:
    async def test_play_and_download_with_the_retention_shown(
        self,
        pages: Pages,
        staff: Staff,
        db: Database,
        server_settings: dict[str, str],
        artifacts: Path,
    ) -> None:
        recording_id, size = await _recorded_visit(
            db, staff, Path(server_settings["recordings_dir"]), "Pat Recorded", 1
        )
        page = await admin_page(pages, staff.admin)
        await expect(page.get_by_test_id("retention")).to_contain_text(
            "Recordings are kept 30 days after the call"
        )
        # Other tests' calls may have left recordings in the shared database: this one's.
        item = page.get_by_test_id("recording-item").filter(has_text="Pat Recorded")
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text(f"Pat Recorded with {staff.clinician.user.name}")
        await expect(item).to_contain_text("7 min")

        await item.get_by_role("button", name="Play").click()
        player = page.get_by_test_id("recording-player")
        await expect(player).to_be_visible()
        await page.wait_for_function(
            "() => { const v = document.querySelector('#player'); "
            "return v.readyState >= 1 && v.videoWidth === 160; }"
        )
        await shot(page, artifacts, "33-admin-recording")
        await page.locator("#player-dialog").get_by_role("button", name="Close").click()
        await expect(player).to_be_hidden()

        async with page.expect_download() as waiting:
            await item.get_by_role("button", name="Download").click()
        download = await waiting.value
        assert download.suggested_filename.endswith(f"-{str(recording_id)[:8]}.webm")
        body = await asyncio.to_thread(Path(await download.path()).read_bytes)
        assert len(body) == size
        assert body.startswith(b"\x1a\x45\xdf\xa3")  # EBML: the WebM itself

    async def test_delete_a_recording_from_the_list_of_all(
        self, pages: Pages, staff: Staff, db: Database, server_settings: dict[str, str]
    ) -> None:
        recording_id, _ = await _recorded_visit(
            db, staff, Path(server_settings["recordings_dir"]), "Pat Deleted", 2
        )
        page = await admin_page(pages, staff.admin)
        item = page.get_by_test_id("recording-item").filter(has_text="Pat Deleted")
        await expect(item).to_have_count(1)
        await expect(item).to_contain_text("deleted after")
        await item.get_by_test_id("delete-recording").click()
        await page.get_by_role("dialog").get_by_role("button", name="Delete").click()
        await expect(page.locator("#recordings-status")).to_have_text("The recording is deleted.")
        await expect(item).to_have_count(0)
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            gone = await http.get(
                f"/api/v1/recordings/{recording_id}/file", headers=staff.admin.headers
            )
        assert gone.status_code == 404


class TestAccessibility:
    @pytest.mark.parametrize("width", ["phone", "desktop"])
    async def test_the_page_and_its_dialogs(
        self,
        pages: Pages,
        staff: Staff,
        db: Database,
        axe_source: str,
        width: str,
        artifacts: Path,
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Axe")
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            await grant(http, visit.token)
        options = {"viewport": PHONE} if width == "phone" else {}
        page = await admin_page(pages, staff.admin, **options)
        await assert_accessible(page, axe_source, f"admin ({width})")
        await shot(page, artifacts, f"34-admin-{width}")
        if width == "phone":
            scroll = await page.evaluate("() => document.documentElement.scrollWidth")
            assert scroll <= PHONE["width"]
        await page.get_by_label("Visit", exact=True).select_option(str(visit.appointment_id))
        await expect(page.get_by_test_id("consent-records").locator("tbody tr")).to_have_count(1)
        await page.get_by_test_id("add-user").click()
        await page.locator("#user-dialog").get_by_role("button", name="Add").click()
        await expect(page.locator("#user-error")).not_to_be_empty()
        await assert_accessible(page, axe_source, f"admin: add-user dialog ({width})")
        await page.keyboard.press("Escape")
        await expect(page.locator("#user-dialog")).to_be_hidden()
        await assert_accessible(page, axe_source, f"admin: consent records ({width})")


class TestKeyboard:
    async def test_the_audit_log_pages_from_the_keyboard(
        self, pages: Pages, staff: Staff, server: LiveServer
    ) -> None:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for _ in range(101):
                await http.get(
                    "/api/v1/audit-events", params={"limit": 1}, headers=staff.admin.headers
                )
        page = await admin_page(pages, staff.admin)
        rows = page.get_by_test_id("audit-row")
        await expect(rows).to_have_count(100)
        await page.get_by_test_id("audit-older").focus()
        await page.keyboard.press("Enter")
        await expect(rows).not_to_have_count(100)
        assert 100 < await rows.count() <= 200
        # The keyboard stays with the log: on Older, or on the table once there is no older page.
        await expect(page.locator("#audit-older:focus, #audit-table:focus")).to_have_count(1)
