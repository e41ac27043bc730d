"""Guests in a visit, in Chromium: three and four people in one call, each in a browser context.

The clinician invites an interpreter from the console in the middle of a call; the interpreter
opens their own link (the same page as the patient's), agrees, waits, and is admitted from under
the patient's queue item. Every page then shows a tile per person whose video advances, and
hears every other person: each one's sound (found by the relay's `streams` message, transceiver
mid -> person) arrives with energy (Chromium's fake microphone beeps) and plays on their tile. A
caregiver makes four. The clinician shares the screen (Chromium's fake screen: `getDisplayMedia`
runs headless with the fake-UI and fake-device flags the other browser tests use); removal,
a guest's withdrawal and the patient's follow. axe runs on the 3- and 4-tile layouts at phone
width. A second test: a caregiver without the recording consent, admitted into a call being
recorded, stops the recording for everyone. Few tests on purpose: each step of a browser test
costs seconds.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeoutError
from sqlalchemy import select

from app.db import Database
from scheduling.models import Recording
from tests.e2e.conftest import PHONE, Pages, shot
from tests.e2e.helpers import (
    admit_guest,
    assert_accessible,
    consent_and_join,
    invite,
    page_kind,
    sign_in,
    video_advances,
)
from tests.factories import Staff
from tests.signaling.helpers import Visit, make_visit

# How long a page may wait for what the relay does (starting or stopping a recording) on a
# loaded machine, in ms.
RELAY = 20_000

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


# Read only: the page's peer connections, and the relay's latest `streams` items as the page
# received them (which of its transceivers, by mid, carries whom).
OBSERVE = """
(() => {
  const NativePeer = window.RTCPeerConnection;
  const NativeSocket = window.WebSocket;
  window.__peerConnections = [];
  window.__streams = null;
  window.RTCPeerConnection = class extends NativePeer {
    constructor(...args) { super(...args); window.__peerConnections.push(this); }
  };
  window.WebSocket = class extends NativeSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        try {
          const message = JSON.parse(event.data);
          if (message && message.type === "streams") window.__streams = message.items;
        } catch {}
      });
    }
  };
})();
"""

# For every other person (their tile): the sound track the relay says is theirs (the audio item
# of `streams` naming them, by mid), whether their tile plays that very track (unmuted, not
# paused), and its inbound RTP totals (energy, samples). Null while the call is not all there.
SOUND = """
async ([people]) => {
  const open = (window.__peerConnections || []).filter((pc) => pc.connectionState === "connected");
  const pc = open[open.length - 1];
  const items = window.__streams;
  const tiles = [...document.querySelectorAll('[data-testid="participant-tile"]')]
    .filter((t) => t.querySelector("video:not(#local-video)"));
  if (!pc || !items || tiles.length !== people - 1) return null;
  const stats = [...(await pc.getStats()).values()].filter(
    (s) => s.type === "inbound-rtp" && s.kind === "audio");
  const heard = {};
  for (const tile of tiles) {
    const key = tile.dataset.participant;
    const item = items.find((i) => i.participant === key && i.kind === "audio"
      && (i.source || "camera") === "camera");
    const transceiver = item && pc.getTransceivers().find((t) => t.mid === item.mid);
    const track = transceiver && transceiver.receiver.track;
    const video = tile.querySelector("video:not(#local-video)");
    const shown = video.srcObject ? video.srcObject.getAudioTracks() : [];
    const s = track && stats.find((x) => x.mid === item.mid || x.trackIdentifier === track.id);
    heard[key] = {
      mid: item ? item.mid : null,
      played: Boolean(track) && shown.includes(track) && !video.muted && !video.paused,
      energy: s ? s.totalAudioEnergy || 0 : null,
      samples: s ? s.totalSamplesReceived || 0 : null,
    };
  }
  return heard;
}
"""


async def everyone_is_heard(page: Page, people: int) -> None:
    """Every other person's sound is on their tile, playing, and its energy and samples grow
    (Chromium's fake microphone beeps: silence has no energy). Sampled every half second, for
    at most 40 samples."""
    before: dict[str, Any] | None = None
    now: dict[str, Any] | None = None
    for _ in range(40):
        now = await page.evaluate(SOUND, [people])
        if before is None or now is None or set(now) != set(before):
            before = now
        elif all(
            heard["played"]
            and heard["energy"] is not None
            and heard["energy"] > (before[key]["energy"] or 0)
            and heard["samples"] > (before[key]["samples"] or 0)
            for key, heard in now.items()
        ):
            return
        await page.wait_for_timeout(500)
    raise AssertionError(f"{page_kind(page)}: not everyone heard; first {before}, last {now}")


async def observed_page(pages: Pages, **options: Any) -> Page:
    page = await pages.page(**options)
    await page.add_init_script(OBSERVE)
    return page


async def every_tile_advances(page: Page, people: int) -> None:
    """`people` tiles (oneself included), and every other person's video moves on."""
    try:
        clocks = await (await page.wait_for_function(REMOTE_CLOCKS, arg=[people])).json_value()
        await page.wait_for_function(ADVANCED, arg=[people, clocks])
    except PlaywrightTimeoutError as timeout:
        shown = await page.evaluate(TILES)
        expected = f"{page_kind(page)}: {people} people expected; tiles: {shown}"
        raise AssertionError(expected) from timeout


async def no_sideways_scrolling(page: Page) -> None:
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width


async def call_of_two(
    pages: Pages, staff: Staff, db: Database, name: str, *, recording: bool = False
) -> tuple[Page, Page, Visit]:
    """The patient (agreeing to the recording too, if `recording`) admitted by the signed-in
    clinician, both videos moving: their pages, and the visit."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler, name=name)
    patient = await observed_page(pages, viewport=PHONE)
    await consent_and_join(patient, visit.token, recording=recording)
    clinician = await observed_page(pages)
    await sign_in(clinician, staff.clinician, lands_on="/clinic")
    await (
        clinician.get_by_test_id("queue-item").filter(has_text=name).get_by_test_id("admit").click()
    )
    await video_advances(patient)
    await video_advances(clinician)
    return patient, clinician, visit


class TestGuests:
    async def test_interpreter_and_caregiver_join_a_call_share_screen_remove_withdraw_end(
        self, pages: Pages, staff: Staff, db: Database, axe_source: str, artifacts: Path
    ) -> None:
        patient, clinician, _ = await call_of_two(pages, staff, db, "Pat Party")

        # An interpreter, invited mid-call: own link, own consent, the waiting room.
        token = await invite(clinician, "interpreter", "Ines Interpreter")
        interpreter = await observed_page(pages, viewport=PHONE)
        await consent_and_join(interpreter, token)
        await admit_guest(clinician, "Ines Interpreter")
        await expect(interpreter).to_have_title(re.compile("your turn"))
        for page in (patient, clinician, interpreter):
            await every_tile_advances(page, 3)
        for page in (patient, clinician, interpreter):
            await everyone_is_heard(page, 3)
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
        await interpreter.get_by_role("button", name="Unmute").click()
        await expect(ines).not_to_contain_text("Muted")
        await shot(patient, artifacts, "40-patient-three-tiles")
        await assert_accessible(patient, axe_source, "visit: call of three, patient")
        await assert_accessible(interpreter, axe_source, "visit: call of three, interpreter")
        await no_sideways_scrolling(patient)

        # A caregiver makes four.
        token = await invite(clinician, "caregiver", "Cara Giver")
        caregiver = await observed_page(pages, viewport=PHONE)
        await consent_and_join(caregiver, token)
        await admit_guest(clinician, "Cara Giver")
        for page in (patient, clinician, interpreter, caregiver):
            await every_tile_advances(page, 4)
        for page in (patient, clinician, interpreter, caregiver):
            await everyone_is_heard(page, 4)
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

    async def test_a_caregiver_without_the_recording_consent_stops_a_running_recording(
        self, pages: Pages, staff: Staff, db: Database
    ) -> None:
        """Patient and clinician in a call being recorded; an interpreter who agrees to recording
        is admitted: the recording goes on (in a second file part, which has them) and nobody's
        badge goes; a caregiver who left the recording box unticked is admitted (four in the
        call): the relay stops it (`participant_without_consent`), every page's badge goes, the
        call goes on."""
        patient, clinician, visit = await call_of_two(
            pages, staff, db, "Pat Recorded", recording=True
        )
        await clinician.locator("#record").click()
        await expect(clinician.locator("#record")).to_have_text("Stop recording", timeout=RELAY)
        for page in (patient, clinician):
            await expect(page.locator("#recording-badge")).to_be_visible(timeout=RELAY)
        assert await stop_reasons(db, visit.appointment_id) == [None]  # one, running

        token = await invite(clinician, "interpreter", "Ines Interpreter")
        interpreter = await observed_page(pages, viewport=PHONE)
        await consent_and_join(interpreter, token, recording=True)
        await admit_guest(clinician, "Ines Interpreter")
        # It keeps running through the calls' media (each tile's video moving on), the
        # interpreter's too: the first part finished as they joined, the second running.
        for page in (patient, clinician, interpreter):
            await every_tile_advances(page, 3)
        for page in (patient, clinician, interpreter):
            await expect(page.locator("#recording-badge")).to_be_visible(timeout=RELAY)
        assert await stop_reasons(db, visit.appointment_id, parts=2) == [
            "participant_joined",
            None,
        ]

        token = await invite(clinician, "caregiver", "Cara Giver")
        caregiver = await observed_page(pages, viewport=PHONE)
        await consent_and_join(caregiver, token)  # the recording box left unticked
        await admit_guest(clinician, "Cara Giver")
        for page in (patient, clinician, interpreter, caregiver):
            await expect(page.locator("#recording-badge")).to_be_hidden(timeout=RELAY)
        await expect(clinician.locator("#record")).to_have_text("Start recording", timeout=RELAY)
        await expect(clinician.locator("#record")).to_have_attribute("aria-pressed", "false")
        for page in (patient, clinician, interpreter, caregiver):
            await every_tile_advances(page, 4)
        assert await stop_reasons(db, visit.appointment_id, ended=True) == [
            "participant_joined",
            "participant_without_consent",
        ]


async def stop_reasons(
    db: Database, appointment_id: uuid.UUID, *, ended: bool = False, parts: int = 1
) -> list[str | None]:
    """The visit's recordings' stop reasons in the order they began (None: running), once
    there are `parts` of them; with `ended`, once every row says why it stopped (written after
    its file is closed); for at most 10 s."""
    reasons: list[str | None] = []
    for _ in range(100):
        async with db.session(write=False) as session:
            found = await session.execute(
                select(Recording.stop_reason)
                .where(Recording.appointment_id == appointment_id)
                .order_by(Recording.started_at)
            )
            reasons = list(found.scalars())
        # (a part is finished after the next has begun: only the latest may still run)
        if len(reasons) >= parts and None not in (reasons if ended else reasons[:-1]):
            break
        await asyncio.sleep(0.1)
    return reasons


def token_of(page: Page) -> str:
    return page.url.rsplit("/visit/", 1)[1]
