"""Chat in the call, in Chromium: the patient (phone width) and the clinician write to each other
with the keyboard alone, messages land in each page's live region, the open panel leaves the
video uncovered, and axe finds nothing serious on either page with the chat open. What was said
before shows again after a reload (the console reads it over HTTP, once per call it shows, not
on a reconnection; the patient's page is sent it on its socket)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from playwright.async_api import Locator, Page, Request, Route, WebSocket, expect
from sqlalchemy import func, select

from app.audit import AuditEvent
from app.db import Database
from tests.e2e.conftest import PHONE, Pages, shot
from tests.e2e.helpers import assert_accessible, consent_and_join, sign_in, video_advances
from tests.factories import Staff
from tests.signaling.helpers import Visit, make_visit

PATIENT = "Pat Chatwell"


async def tab_to(page: Page, test_id: str, limit: int = 120) -> None:
    """Press Tab until the element with this test id has the focus (keyboard only)."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate("() => document.activeElement?.dataset?.testid || null")
        if focused == test_id:
            return
    raise AssertionError(f"Tab never reached {test_id!r}")


def messages(page: Page) -> Locator:
    """The chat messages inside the page's live region (role="log")."""
    return page.get_by_role("log", name="Chat messages").get_by_test_id("chat-message")


async def admitted(pages: Pages, staff: Staff, db: Database) -> tuple[Visit, Page, Page]:
    """The patient (at phone width) joins and the clinician admits them."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler, name=PATIENT)
    patient = await pages.page(viewport=PHONE)
    await consent_and_join(patient, visit.token)
    clinician = await pages.page()
    await sign_in(clinician, staff.clinician, lands_on="/clinic")
    item = clinician.get_by_test_id("queue-item").filter(has_text=PATIENT)
    await item.get_by_test_id("admit").click()
    return visit, patient, clinician


class TestChat:
    async def test_patient_and_clinician_write_to_each_other_with_the_keyboard(
        self, pages: Pages, staff: Staff, db: Database, axe_source: str, artifacts: Path
    ) -> None:
        visit, patient, clinician = await admitted(pages, staff, db)
        await expect(patient.get_by_test_id("chat-toggle")).to_be_visible()

        # The patient opens the chat and writes two lines: Shift+Enter, then Enter sends.
        await tab_to(patient, "chat-toggle")
        await patient.keyboard.press("Enter")
        await expect(patient.get_by_test_id("chat-input")).to_be_focused()
        await patient.keyboard.type("Hello doctor")
        await patient.keyboard.press("Shift+Enter")
        await patient.keyboard.type("can you see my rash?")
        await patient.keyboard.press("Enter")
        sent = messages(patient)
        await expect(sent).to_have_count(1)
        await expect(sent.first).to_contain_text(f"{PATIENT} (you)")
        await expect(sent.first.locator(".chat-text")).to_have_text(
            "Hello doctor\ncan you see my rash?"
        )
        await expect(patient.get_by_test_id("chat-input")).to_have_value("")

        # The console's chat is closed: its button counts the unread message.
        await expect(clinician.get_by_test_id("chat-toggle")).to_contain_text("1 new")
        await tab_to(clinician, "chat-toggle")
        await clinician.keyboard.press("Enter")
        received = messages(clinician)
        await expect(received).to_have_count(1)
        await expect(received.first).to_contain_text(PATIENT)
        await expect(received.first.locator("time")).not_to_be_empty()
        await expect(received.first.locator(".chat-text")).to_have_text(
            "Hello doctor\ncan you see my rash?"
        )
        await expect(clinician.get_by_test_id("chat-toggle")).not_to_contain_text("new")
        # The clinician answers with the Send button, reached by Tab.
        await expect(clinician.get_by_test_id("chat-input")).to_be_focused()
        await clinician.keyboard.type("Yes, hold it closer to the camera.")
        await clinician.keyboard.press("Tab")
        await expect(clinician.get_by_test_id("chat-send")).to_be_focused()
        await clinician.keyboard.press("Enter")
        await expect(messages(clinician)).to_have_count(2)
        await expect(messages(patient)).to_have_count(2)
        await expect(messages(patient).nth(1)).to_contain_text(staff.clinician.user.name)
        await expect(messages(patient).nth(1).locator(".chat-text")).to_have_text(
            "Yes, hold it closer to the camera."
        )

        # At phone width the open chat sits under the picture, never over it.
        stage = await patient.locator("#tiles").bounding_box()
        panel = await patient.locator(".chat").bounding_box()
        assert stage is not None
        assert panel is not None
        assert panel["y"] >= stage["y"] + stage["height"]
        width = await patient.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"]
        await shot(patient, artifacts, "chat-patient-phone")
        await assert_accessible(patient, axe_source, "visit: call with the chat open (390 px)")
        await assert_accessible(clinician, axe_source, "console: call with the chat open")

        # Kept with the visit, in order.
        async with httpx.AsyncClient(base_url=pages.server.url) as http:
            kept = await http.get(
                f"/api/v1/appointments/{visit.appointment_id}/chat",
                headers=staff.clinician.headers,
            )
        assert [m["text"] for m in kept.json()["items"]] == [
            "Hello doctor\ncan you see my rash?",
            "Yes, hold it closer to the camera.",
        ]
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


async def say(page: Page, text: str) -> None:
    """Write one message in the page's chat (opening the panel if it is closed)."""
    if await page.get_by_test_id("chat-toggle").get_attribute("aria-expanded") != "true":
        await page.get_by_test_id("chat-toggle").click()
    await page.get_by_test_id("chat-input").fill(text)
    await page.get_by_test_id("chat-input").press("Enter")


class TestChatHistory:
    async def test_a_console_reloaded_mid_call_shows_what_was_said_once_each(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit, patient, clinician = await admitted(pages, staff, db)
        await video_advances(clinician)
        await say(patient, "first, from the patient")
        await expect(messages(patient)).to_have_count(1)
        await say(clinician, "second, from the clinician")
        await expect(messages(patient)).to_have_count(2)

        # The reloaded console's read of the history is held until a live message has come in
        # meanwhile: that one is in the history too, and shows once, after the earlier ones.
        released = asyncio.Event()
        held: list[str] = []

        async def hold(route: Route) -> None:
            held.append(route.request.url)
            await released.wait()
            await route.continue_()

        await clinician.route(f"**/api/v1/appointments/{visit.appointment_id}/chat", hold)
        await clinician.reload()
        await expect(
            clinician.get_by_role("heading", name=f"In call with {PATIENT}")
        ).to_be_visible()
        await video_advances(clinician)
        await clinician.get_by_test_id("chat-toggle").click()
        await say(patient, "third, during the reload")
        await expect(messages(clinician)).to_have_count(1)
        assert held, "the console never asked for the chat's history"
        released.set()
        texts = [
            "first, from the patient",
            "second, from the clinician",
            "third, during the reload",
        ]
        await expect(messages(clinician).locator(".chat-text")).to_have_text(texts)
        await expect(messages(clinician).nth(1)).to_contain_text("(you)")
        # Live messages go on after the history, each once.
        await say(patient, "fourth, after it")
        await expect(messages(clinician).locator(".chat-text")).to_have_text(
            [*texts, "fourth, after it"]
        )
        await expect(clinician.get_by_test_id("chat-toggle")).not_to_contain_text("new")
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()

    async def test_a_console_reads_the_history_only_when_it_lacks_messages(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        """Each read of the history is a staff read in the audit trail: none at the take of a
        call without messages, none for a socket back after missing nothing, one for a socket
        back after missing a message."""
        reads: list[str] = []
        sockets: list[WebSocket] = []
        # The sockets (by their order of opening) on which the server handed over the call.
        taken_on: list[int] = []
        heard = asyncio.Event()

        def on_request(request: Request) -> None:
            if request.url.endswith("/chat"):
                reads.append(request.url)

        def on_socket(socket: WebSocket) -> None:
            index = len(sockets)
            sockets.append(socket)

            def on_frame(frame: str | bytes) -> None:
                if '"type": "call"' in str(frame):
                    taken_on.append(index)
                    heard.set()

            socket.on("framereceived", on_frame)

        async def taken_again() -> None:
            """Until the call is handed over on a socket opened after the last one that had it."""
            last = max(taken_on)
            async with asyncio.timeout(60):
                while max(taken_on) <= last:
                    heard.clear()
                    await heard.wait()

        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name=PATIENT)
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        clinician.on("request", on_request)
        clinician.on("websocket", on_socket)
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text=PATIENT)
        await item.get_by_test_id("admit").click()
        await video_advances(clinician)
        await clinician.get_by_test_id("chat-toggle").click()
        await say(patient, "before the reconnection")
        await expect(messages(clinician)).to_have_count(1)

        # The browser says the network went and came back: the console's socket is dropped and
        # opened again, and the server hands it the call again; it missed nothing.
        await clinician.evaluate("() => window.dispatchEvent(new Event('offline'))")
        await clinician.evaluate("() => window.dispatchEvent(new Event('online'))")
        await taken_again()
        await video_advances(clinician)
        await say(patient, "after the reconnection")
        await expect(messages(clinician).locator(".chat-text")).to_have_text(
            ["before the reconnection", "after the reconnection"]
        )
        assert reads == []
        assert await chat_reads(db, visit.appointment_id) == 0

        # Offline for real: a message is said while the console's socket is gone, and read with
        # the history when it is back.
        await clinician.context.set_offline(True)
        await expect(clinician.locator("#socket-banner")).to_be_visible()
        await say(patient, "while the console was away")
        await expect(messages(patient)).to_have_count(3)
        await clinician.context.set_offline(False)
        await taken_again()
        await expect(messages(clinician).locator(".chat-text")).to_have_text(
            ["before the reconnection", "after the reconnection", "while the console was away"]
        )
        assert len(reads) == 1
        await until_audited(db, visit.appointment_id, 1)
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
        assert await chat_reads(db, visit.appointment_id) == 1

    async def test_a_patient_reloaded_mid_call_shows_what_was_said(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        _visit, patient, clinician = await admitted(pages, staff, db)
        await video_advances(clinician)
        await say(patient, "first, from the patient")
        await say(clinician, "second, from the clinician")
        await expect(messages(patient)).to_have_count(2)

        await patient.reload()
        await expect(patient.get_by_test_id("join")).to_be_enabled()
        await patient.get_by_test_id("join").click()
        await video_advances(patient)
        # Earlier messages are neither unread nor announced: the closed panel counts none.
        await expect(patient.get_by_test_id("chat-toggle")).not_to_contain_text("new")
        await patient.get_by_test_id("chat-toggle").click()
        texts = ["first, from the patient", "second, from the clinician"]
        await expect(messages(patient).locator(".chat-text")).to_have_text(texts)
        await expect(messages(patient).first).to_contain_text(f"{PATIENT} (you)")
        await expect(messages(patient).nth(1)).to_contain_text(staff.clinician.user.name)
        await expect(messages(patient).nth(1)).not_to_contain_text("(you)")
        # The live messages go on after them, each once.
        await say(clinician, "third, after the reload")
        await expect(messages(patient).locator(".chat-text")).to_have_text(
            [*texts, "third, after the reload"]
        )
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


async def chat_reads(db: Database, appointment_id: uuid.UUID) -> int:
    """The staff reads of the visit's chat in the audit trail."""
    async with db.session(write=False) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "chat.list")
            .where(AuditEvent.resource_id == str(appointment_id))
        )
    return int(count or 0)


async def until_audited(db: Database, appointment_id: uuid.UUID, reads: int) -> None:
    async with asyncio.timeout(30):
        while await chat_reads(db, appointment_id) < reads:  # noqa: ASYNC110 (the database)
            await asyncio.sleep(0.1)
