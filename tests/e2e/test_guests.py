"""Guests in a visit, in Chromium: three and four people in one call, each in a browser context.

The clinician invites an interpreter from the console in the middle of a call; the interpreter
opens their own link (the same page as the patient's), agrees, waits, and is admitted from under
the patient's queue item. Every page then shows a tile per person whose video advances; a
caregiver makes four. The clinician shares the screen (Chromium's fake screen: `getDisplayMedia`
runs headless with the fake-UI and fake-device flags the other browser tests use); removal,
a guest's withdrawal and the patient's follow. axe runs on the 3- and 4-tile layouts at phone
width. Few tests on purpose: each step of a browser test costs seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from app.db import Database
from tests.e2e.conftest import PHONE, Pages, shot
from tests.e2e.helpers import (
    admit_guest,
    assert_accessible,
    consent_and_join,
    invite,
    sign_in,
    video_advances,
)
from tests.factories import Staff
from tests.signaling.helpers import make_visit

# Every tile but one's own: its <video> plays a live sound track and shows frames (or its tile
# says the link is too weak for video, see ADVANCED); resolves to the clocks (or null while
# some tile is not there yet).
REMOTE_CLOCKS = """
([people]) => {
  const tiles = [...document.querySelectorAll('[data-testid="participant-tile"]')];
  if (tiles.length !== people) return null;
  const videos = tiles.map((t) => t.querySelector("video:not(#local-video)")).filter(Boolean);
  if (videos.length !== people - 1) return null;
  for (const v of videos) {
    const sound = v.srcObject && v.srcObject.getAudioTracks()[0];
    if (!sound || sound.readyState !== "live" || v.paused) return null;
    const weak = [...v.parentElement.querySelectorAll(".paused-tile")]
      .some((p) => !p.hidden && /connection is weak/.test(p.textContent));
    if (!(v.videoWidth > 0 && v.readyState >= 2) && !weak) return null;
  }
  return videos.map((v) => v.currentTime);
}
"""

# Every other person's clock moved on; or, where it did not, their tile says their link is too
# weak for video (on a loaded machine the relay may pause one person's video for bandwidth for
# real: a starved relay looks like a congested link; the tile must then say so, with the sound
# going on). At least one picture must move.
ADVANCED = """
([people, before]) => {
  const tiles = [...document.querySelectorAll('[data-testid="participant-tile"]')]
    .filter((t) => t.querySelector("video:not(#local-video)"));
  if (tiles.length !== people - 1) return false;
  let moving = 0;
  for (const [i, tile] of tiles.entries()) {
    if (tile.querySelector("video:not(#local-video)").currentTime > before[i] + 0.5) {
      moving += 1;
      continue;
    }
    const said = [...tile.querySelectorAll(".paused-tile")].filter((p) => !p.hidden);
    if (!said.some((p) => /connection is weak/.test(p.textContent))) return false;
  }
  return moving > 0;
}
"""

# The shared screen's picture: frames at the fake screen's size, and its clock moving on.
SCREEN_ADVANCES = """
async () => {
  const v = document.querySelector('[data-testid="screen-tile"] video');
  if (!v || !(v.videoWidth > 0 && v.readyState >= 2 && !v.paused)) return false;
  const t = v.currentTime;
  await new Promise((r) => setTimeout(r, 700));
  return v.currentTime > t + 0.5;
}
"""


# What each tile shows, for the message of a failed wait.
TILES = """
() => [...document.querySelectorAll('[data-testid="participant-tile"]')].map((t) => {
  const v = t.querySelector("video:not(#local-video)");
  const said = [...t.querySelectorAll(".paused-tile")].filter((p) => !p.hidden);
  return {
    participant: t.dataset.participant,
    video: v && { width: v.videoWidth, ready: v.readyState, paused: v.paused, time: v.currentTime,
      tracks: v.srcObject ? v.srcObject.getTracks().map((k) => `${k.kind}:${k.readyState}`) : [] },
    says: said.map((p) => p.textContent.trim()).join(" "),
  };
})
"""


async def every_tile_advances(page: Page, people: int) -> None:
    """`people` tiles (oneself included), and every other person's video moves on."""
    try:
        clocks = await (await page.wait_for_function(REMOTE_CLOCKS, arg=[people])).json_value()
        await page.wait_for_function(ADVANCED, arg=[people, clocks])
    except PlaywrightTimeoutError as timeout:
        shown = await page.evaluate(TILES)
        raise AssertionError(f"{page.url}: {people} people expected; tiles: {shown}") from timeout


async def no_sideways_scrolling(page: Page) -> None:
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width


class TestGuests:
    async def test_interpreter_and_caregiver_join_a_call_share_screen_remove_withdraw_end(
        self, pages: Pages, staff: Staff, db: Database, axe_source: str, artifacts: Path
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Party")
        patient = await pages.page(viewport=PHONE)
        await consent_and_join(patient, visit.token)
        clinician = await pages.page()
        await sign_in(clinician, staff.clinician, lands_on="/clinic")
        await (
            clinician.get_by_test_id("queue-item")
            .filter(has_text="Pat Party")
            .get_by_test_id("admit")
            .click()
        )
        await video_advances(patient)
        await video_advances(clinician)

        # An interpreter, invited mid-call: own link, own consent, the waiting room.
        token = await invite(clinician, "interpreter", "Ines Interpreter")
        interpreter = await pages.page(viewport=PHONE)
        await consent_and_join(interpreter, token)
        await admit_guest(clinician, "Ines Interpreter")
        await expect(interpreter).to_have_title(re.compile("your turn"))
        for page in (patient, clinician, interpreter):
            await every_tile_advances(page, 3)
        # The patient sees who joined, by name and role.
        ines = patient.locator('[data-testid="participant-tile"][data-participant^="interpreter:"]')
        await expect(ines).to_contain_text("Ines Interpreter")
        await expect(ines).to_contain_text("Interpreter")
        await expect(
            interpreter.locator('[data-testid="participant-tile"][data-participant="patient"]')
        ).to_contain_text("Patient")
        # Muted, on the others' tiles.
        await interpreter.get_by_role("button", name="Mute").click()
        await expect(ines).to_contain_text("Muted")
        await shot(patient, artifacts, "40-patient-three-tiles")
        await assert_accessible(patient, axe_source, "visit: call of three, patient")
        await assert_accessible(interpreter, axe_source, "visit: call of three, interpreter")
        await no_sideways_scrolling(patient)

        # A caregiver makes four.
        token = await invite(clinician, "caregiver", "Cara Giver")
        caregiver = await pages.page(viewport=PHONE)
        await consent_and_join(caregiver, token)
        await admit_guest(clinician, "Cara Giver")
        for page in (patient, clinician, interpreter, caregiver):
            await every_tile_advances(page, 4)
        await shot(patient, artifacts, "41-patient-four-tiles")
        await shot(clinician, artifacts, "42-clinician-four-tiles")
        await assert_accessible(patient, axe_source, "visit: call of four, patient")
        await assert_accessible(caregiver, axe_source, "visit: call of four, caregiver")
        await assert_accessible(clinician, axe_source, "console: call of four")
        await no_sideways_scrolling(caregiver)

        # The clinician's screen: a larger extra tile on the patient's page, the camera small.
        await clinician.get_by_test_id("share-screen").click()
        await expect(clinician.get_by_test_id("share-screen")).to_have_attribute(
            "aria-pressed", "true"
        )
        screen = patient.get_by_test_id("screen-tile")
        await expect(screen).to_be_visible()
        await patient.wait_for_function(SCREEN_ADVANCES, arg=None)
        camera = patient.locator('[data-testid="participant-tile"][data-participant="clinician"]')
        screen_box, camera_box = await screen.bounding_box(), await camera.bounding_box()
        assert screen_box
        assert camera_box
        assert (
            screen_box["width"] * screen_box["height"]
            > 2 * camera_box["width"] * camera_box["height"]
        )
        await shot(patient, artifacts, "43-patient-screen-share")
        await assert_accessible(patient, axe_source, "visit: screen share")
        await clinician.get_by_test_id("share-screen").click()
        await expect(screen).to_have_count(0)

        # A removed guest's page says so; the call goes on for the other three.
        row = clinician.get_by_test_id("guest").filter(has_text="Cara Giver")
        await row.get_by_test_id("remove-participant").click()
        await clinician.get_by_role("button", name="Remove", exact=True).click()
        await expect(
            caregiver.get_by_role("heading", name="You were removed from this visit")
        ).to_be_visible()
        for page in (patient, clinician, interpreter):
            await every_tile_advances(page, 3)

        # The interpreter withdraws: only they leave.
        await interpreter.locator("#withdraw-call").click()
        await interpreter.get_by_role("button", name="Withdraw and leave the visit").click()
        await expect(interpreter.locator("#ended-text")).to_contain_text(
            "You withdrew your consent"
        )
        for page in (patient, clinician):
            await every_tile_advances(page, 2)
        await expect(patient.locator("#screen-call")).to_be_visible()

        # Back again (consent anew, admitted anew); then the patient's withdrawal ends it for all.
        await consent_and_join(interpreter, token_of(interpreter))
        await admit_guest(clinician, "Ines Interpreter")
        await every_tile_advances(interpreter, 3)
        await patient.locator("#withdraw-call").click()
        await patient.get_by_role("button", name="Withdraw and end the visit").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
        await expect(
            interpreter.get_by_role("heading", name="Your visit has ended")
        ).to_be_visible()
        await expect(clinician.locator("#call-message")).to_contain_text("withdrew consent")


def token_of(page: Page) -> str:
    return page.url.rsplit("/visit/", 1)[1]
