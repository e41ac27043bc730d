"""The patient's visit and the clinician's console, in two browser contexts."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import expect

from app.db import Database
from tests.e2e.conftest import PHONE, Launch, Pages, shot
from tests.e2e.helpers import consent_and_join, sign_in, video_advances
from tests.factories import Staff
from tests.signaling.helpers import make_visit


class TestWholeVisit:
    async def test_consent_join_admit_both_videos_play_then_the_clinician_ends(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Whole")
        patient = await pages.page(viewport=PHONE)
        await patient.goto(f"/visit/{visit.token}")
        await expect(
            patient.get_by_role("heading", name=re.compile("Dr. Ada Test"))
        ).to_be_visible()
        await expect(patient.locator("#network-status")).to_have_text(
            re.compile("works well|relay|could not")
        )
        await patient.get_by_role("button", name="Start the check").click()
        await expect(patient.locator("#camera-status")).to_have_text(re.compile("work"))
        await video_advances(patient, "local-video")
        await shot(patient, artifacts, "01-patient-device-check")
        await patient.get_by_test_id("consent-accept").click()
        await expect(patient.get_by_test_id("join")).to_be_enabled()
        await shot(patient, artifacts, "02-patient-consent")
        await patient.get_by_test_id("join").click()
        await expect(patient.locator("#waiting-position")).to_have_text("You are next.")
        await expect(patient).to_have_title(re.compile("Waiting room"))
        await shot(patient, artifacts, "03-patient-waiting-room")

        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Whole")
        await expect(item).to_contain_text("Waiting")
        await expect(item).to_contain_text("Connection test: direct")
        await shot(clinician, artifacts, "04-clinician-queue")
        await item.get_by_test_id("admit").click()

        await expect(
            clinician.get_by_role("heading", name="In call with Pat Whole")
        ).to_be_visible()
        await expect(patient).to_have_title(re.compile("your turn"))
        await video_advances(patient)
        await video_advances(clinician)
        await expect(clinician.locator("#call-consent")).to_contain_text("video visit agreed")
        # Call quality from the relay's stats messages.
        await expect(clinician.locator("#stats")).to_contain_text("kbit/s", timeout=15_000)
        await expect(patient.locator("#quality")).to_have_attribute(
            "data-level", re.compile("good|fair|poor")
        )
        await shot(patient, artifacts, "05-patient-in-call")
        await shot(clinician, artifacts, "06-clinician-in-call")

        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
        await expect(patient.locator("#ended-text")).to_contain_text("ended the visit")
        await expect(clinician.locator("#call-message")).to_contain_text("ended")
        await expect(clinician.get_by_test_id("queue-item")).to_have_count(0)
        await shot(patient, artifacts, "07-patient-ended")

    async def test_the_patient_mutes_and_turns_the_camera_off_and_the_clinician_sees_it(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Quiet")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Quiet")
        await item.get_by_test_id("admit").click()
        await video_advances(clinician)
        await patient.get_by_role("button", name="Mute").click()
        await patient.get_by_role("button", name="Camera off").click()
        await expect(patient.get_by_role("button", name="Unmute")).to_have_attribute(
            "aria-pressed", "true"
        )
        await expect(clinician.locator("#remote-note")).to_contain_text("turned the camera off")
        await expect(clinician.locator("#remote-note")).to_contain_text("is muted")
        await patient.get_by_test_id("leave").click()
        await expect(patient.get_by_role("heading", name="You left the call")).to_be_visible()
        await patient.get_by_role("button", name="Rejoin the call").click()
        await video_advances(patient)
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


class TestConsentDeclined:
    async def test_decline_explains_what_happens_and_keeps_the_patient_out(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Declines")
        patient = await pages.page(viewport=PHONE)
        await patient.goto(f"/visit/{visit.token}")
        await patient.get_by_test_id("consent-decline").click()
        info = patient.locator("#declined-info")
        await expect(info).to_be_visible()
        await expect(info).to_contain_text("has not been cancelled")
        await expect(info).to_contain_text("contact your clinic")
        await expect(patient.get_by_test_id("join")).to_be_disabled()
        await info.scroll_into_view_if_needed()
        await shot(patient, artifacts, "08-patient-declined")

        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await expect(clinician.locator("#queue-empty")).to_be_visible()
        await expect(clinician.get_by_test_id("queue-item")).to_have_count(0)

        # Changing one's mind works from the same page.
        await patient.get_by_test_id("consent-accept").click()
        await patient.get_by_test_id("join").click()
        await expect(
            clinician.get_by_test_id("queue-item").filter(has_text="Pat Declines")
        ).to_be_visible()


class TestCameraDenied:
    async def test_the_visit_goes_on_with_sound_only_and_says_so(
        self, pages: Pages, launch: Launch, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Audio")
        # No automatic "allow" for prompts, and only the microphone granted: the camera is denied.
        strict = await launch(fake_ui=False)
        context = await pages.context(viewport=PHONE, permissions=("microphone",), browser=strict)
        patient = await context.new_page()
        await patient.goto(f"/visit/{visit.token}")
        await patient.get_by_role("button", name="Start the check").click()
        status = patient.locator("#camera-status")
        await expect(status).to_contain_text("You did not allow the camera")
        await expect(status).to_contain_text("sound only")
        await expect(patient.locator("#mic-row")).to_be_visible()
        await shot(patient, artifacts, "09-patient-camera-denied")
        await patient.get_by_test_id("consent-accept").click()
        await patient.get_by_test_id("join").click()

        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Audio")
        await item.get_by_test_id("admit").click()
        await expect(patient.locator("#audio-only-note")).to_contain_text("sound only")
        await expect(patient.get_by_role("button", name="No camera")).to_be_disabled()
        # The patient still sees the clinician; the clinician hears the patient.
        await video_advances(patient)
        await clinician.wait_for_function(
            "() => { const v = document.querySelector('[data-testid=remote-video]');"
            " return v.srcObject && v.srcObject.getAudioTracks().length > 0; }"
        )
        await shot(patient, artifacts, "10-patient-audio-only-call")
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


class TestNetworkDrop:
    async def test_the_patient_drops_off_the_network_and_the_call_resumes(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Flaky")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Flaky")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(patient)
        await video_advances(clinician)

        await patient.context.set_offline(True)
        await expect(patient.locator("#reconnecting")).to_be_visible()
        await expect(patient.locator("#screen-call")).to_have_class(re.compile("is-reconnecting"))
        # The server noticed too: the console shows the patient reconnecting.
        item = clinician.get_by_test_id("queue-item").filter(has_text="Pat Flaky")
        await expect(item).to_contain_text("Reconnecting")
        await expect(clinician.locator("#remote-note")).to_contain_text("reconnecting")
        await shot(patient, artifacts, "11-patient-reconnecting")
        await shot(clinician, artifacts, "12-clinician-patient-reconnecting")

        await patient.context.set_offline(False)
        await expect(patient.locator("#reconnecting")).to_be_hidden()
        await expect(item).to_contain_text("In call")
        await expect(clinician.locator("#remote-note")).to_be_hidden()
        # A new peer connection on both sides of the relay for the patient; media flows again.
        await video_advances(patient)
        await video_advances(clinician)
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
