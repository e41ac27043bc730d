"""The console beyond admit and end: no-show, recording with and without the patient's consent,
and the practice's birth-date check on the patient's side."""

from __future__ import annotations

import datetime as dt
import re

from playwright.async_api import expect

from app.db import Database
from tests.conftest import ServerFactory
from tests.e2e.conftest import PHONE, Pages
from tests.e2e.helpers import consent_and_join, sign_in, video_advances
from tests.factories import Staff
from tests.live import LiveServer
from tests.signaling.helpers import make_visit


class TestNoShow:
    async def test_marking_a_no_show_closes_the_visit_for_the_patient(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Absent")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Absent")
        await item.get_by_test_id("no-show").click()
        dialog = clinician.get_by_role("dialog", name="Mark Pat Absent as a no-show?")
        await dialog.get_by_role("button", name="Mark as no-show").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
        await expect(patient.locator("#ended-text")).to_contain_text("not there in time")
        await expect(item).to_have_count(0)


class TestRecording:
    async def test_recording_with_the_patients_consent_shows_on_both_sides(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Recorded")
        patient = await pages.page(viewport=PHONE)
        await patient.goto(f"/visit/{visit.token}")
        await patient.get_by_label("I also agree that the visit may be recorded").check()
        await patient.get_by_test_id("consent-accept").click()
        await patient.get_by_test_id("join").click()
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Recorded")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(clinician)
        await expect(clinician.locator("#call-consent")).to_contain_text("recording agreed")
        await clinician.get_by_role("button", name="Start recording").click()
        await expect(patient.locator("#recording-badge")).to_be_visible()
        await expect(clinician.locator("#recording-badge")).to_be_visible()
        await clinician.get_by_role("button", name="Stop recording").click()
        await expect(patient.locator("#recording-badge")).to_be_hidden()
        await clinician.get_by_test_id("end-call").click()

    async def test_without_it_the_console_says_why_recording_cannot_start(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Private")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Private")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(clinician)
        await clinician.get_by_role("button", name="Start recording").click()
        await expect(clinician.locator("#call-message")).to_contain_text(
            "has not agreed to recording"
        )
        await expect(patient.locator("#recording-badge")).to_be_hidden()
        await clinician.get_by_test_id("end-call").click()


class TestBirthDateCheck:
    async def test_the_patient_confirms_their_birth_date_then_joins(
        self,
        pages: Pages,
        live_server_factory: ServerFactory,
        server_settings: dict[str, str],
        staff: Staff,
        db: Database,
        server: LiveServer,
    ) -> None:
        # One process serves a database without Redis (a second one is refused): this test's
        # server takes the place of the usual one.
        server.stop()
        strict = live_server_factory(**server_settings, visit_birth_date_check="true")
        pages.server = strict
        visit = await make_visit(
            db,
            staff.clinician,
            by=staff.scheduler,
            name="Pat Checked",
            birth_date=dt.date(1980, 5, 17),
        )
        patient = await pages.page(viewport=PHONE)
        await patient.goto(f"/visit/{visit.token}")
        await expect(
            patient.get_by_role("heading", name="Please confirm it is you")
        ).to_be_visible()
        await patient.get_by_label("Your date of birth").fill("1981-05-17")
        await patient.get_by_role("button", name="Continue").click()
        await expect(patient.locator("#verify-error")).to_contain_text("does not match")
        await patient.get_by_label("Your date of birth").fill("1980-05-17")
        await patient.get_by_role("button", name="Continue").click()
        await expect(
            patient.get_by_role("heading", name=re.compile("Dr. Ada Test"))
        ).to_be_visible()
        await patient.get_by_test_id("consent-accept").click()
        await patient.get_by_test_id("join").click()
        # The socket took the verification too: the patient is checked in.
        await expect(patient.locator("#waiting-position")).to_have_text("You are next.")


class TestConsoleReload:
    async def test_a_reloaded_console_takes_its_call_back(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Patient")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Patient")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(clinician)
        await clinician.reload()
        await expect(
            clinician.get_by_role("heading", name="In call with Pat Patient")
        ).to_be_visible()
        await video_advances(clinician)
        await video_advances(patient)
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
