"""Sound first: the "Audio only" button on both pages, and the relay's `video` messages shown.

Real pages against a real server and relay, as in test_visit.py. What flows is read from the
pages' own peer connections (`getStats`): an init script keeps a list of the peer connections
a page makes and changes nothing else. The sound is the clock: "video stopped" means no video
frame was decoded while some seconds of sound arrived.

The relay's "bandwidth" pause needs a link that cannot carry video, which loopback never is;
it is driven for real by bench/network.py (a thin link between network namespaces).
Here `TestWeakConnectionWords` only renders those words with the pages' own module, and says so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from playwright.async_api import Page, expect

from app.db import Database
from tests.e2e.conftest import PHONE, Pages, shot
from tests.e2e.helpers import (
    assert_accessible,
    consent_and_join,
    page_kind,
    sign_in,
    video_advances,
)
from tests.factories import Staff
from tests.signaling.helpers import make_visit

# Keeps every RTCPeerConnection the page makes in window.__peerConnections (read only).
TRACK_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.__peerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      window.__peerConnections.push(this);
    }
  };
})();
"""

# Inbound RTP totals of the page's call (its newest connected peer connection).
INBOUND = """
async () => {
  const open = (window.__peerConnections || []).filter((pc) => pc.connectionState === "connected");
  const pc = open[open.length - 1];
  const totals = { audioPackets: 0, videoFrames: 0 };
  if (!pc) return totals;
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    if (s.kind === "audio") totals.audioPackets += s.packetsReceived || 0;
    if (s.kind === "video") totals.videoFrames += s.framesDecoded || 0;
  });
  return totals;
}
"""

# Whether `key` has reached `target` (polled in the page until it has).
REACHED = f"""
async ([key, target]) => (await ({INBOUND.strip()})())[key] >= target
"""

# The other person's sound is playing: their audio track is live and receiving, the element
# that plays it is not paused (a paused video must not silence them).
SOUND_PLAYS = """
() => {
  const v = document.querySelector('[data-testid="remote-video"]');
  const audio = v && v.srcObject ? v.srcObject.getAudioTracks()[0] : null;
  return Boolean(audio) && audio.readyState === "live" && !audio.muted && !v.paused;
}
"""

# The sound-only tile is gone. On a loaded machine the relay may meanwhile pause video for
# "bandwidth" for real (a starved relay looks like a congested link to the browsers' delay-based
# estimate); the tile then rightly says so instead, and the status with it.
TILE_GONE = """
() => {
  const tile = document.querySelector('[data-testid="remote-paused"]');
  const status = document.querySelector('[data-testid="video-status"]').textContent;
  return tile.hidden || (/connection is weak/.test(tile.textContent) && /weak/.test(status));
}
"""

# Opus packets come every 20 ms: 50 are one second of sound.
ONE_SECOND_OF_SOUND = 50


async def inbound(page: Page) -> dict[str, int]:
    totals: dict[str, int] = await page.evaluate(INBOUND)
    return totals


async def reached(page: Page, key: str, target: int) -> dict[str, int]:
    """Wait until the page's inbound `key` reaches `target`; the totals after that."""
    await page.wait_for_function(REACHED, arg=[key, target], polling=100)
    return await inbound(page)


async def video_stops_and_sound_goes_on(page: Page) -> None:
    """Once what was in flight is through, no video frame while three seconds of sound arrive."""
    after = await inbound(page)
    async with asyncio.timeout(40):
        while True:
            before = after
            after = await reached(
                page, "audioPackets", before["audioPackets"] + ONE_SECOND_OF_SOUND
            )
            if after["videoFrames"] == before["videoFrames"]:
                break
    later = await reached(page, "audioPackets", after["audioPackets"] + 3 * ONE_SECOND_OF_SOUND)
    assert later["videoFrames"] == after["videoFrames"], (after, later)
    await page.wait_for_function(SOUND_PLAYS)


async def video_flows(page: Page) -> None:
    """Frames are decoded again and the picture moves on."""
    await reached(page, "videoFrames", (await inbound(page))["videoFrames"] + 20)
    await video_advances(page)


async def no_sideways_scrolling(page: Page) -> None:
    width = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 0


async def in_call(pages: Pages, staff: Staff, db: Database, name: str) -> tuple[Page, Page]:
    """A patient (phone width) and their clinician in a call, both videos playing."""
    visit = await make_visit(db, staff.clinician, by=staff.scheduler, name=name)
    patient = await pages.page(viewport=PHONE)
    await patient.add_init_script(TRACK_PEER_CONNECTIONS)
    await consent_and_join(patient, visit.token)
    clinician = await pages.page()
    await clinician.add_init_script(TRACK_PEER_CONNECTIONS)
    await sign_in(clinician, staff.clinician, lands_on="/clinic")
    await (
        clinician.get_by_test_id("queue-item").filter(has_text=name).get_by_test_id("admit").click()
    )
    await video_flows(patient)
    await video_flows(clinician)
    return patient, clinician


async def sound_only_and_back(
    chooser: Page,
    other: Page,
    *,
    press: Callable[[], Awaitable[None]],
    chooser_name: str,
    chooser_initials: str,
    axe_source: str,
    artifacts: Path,
    shots: str,
) -> None:
    """`chooser` presses "Audio only", then again: what each page says, and what flows."""
    button = chooser.get_by_test_id("audio-only")
    await expect(button).to_have_attribute("aria-pressed", "false")
    await press()

    # The chooser's page says what they chose; their camera is no longer sent.
    await expect(button).to_have_attribute("aria-pressed", "true")
    status = chooser.get_by_test_id("video-status")
    await expect(status).to_have_attribute("role", "status")
    await expect(status).to_contain_text("You switched to sound only")
    await expect(chooser.locator("#local-placeholder")).to_have_text("Your camera is not sent")
    await expect(chooser.get_by_role("button", name="Camera off")).to_be_disabled()
    await expect(chooser.get_by_test_id("remote-paused")).to_contain_text("you turned video off")
    # The other page hears it from the relay (its `video` message): words, and a tile with the
    # chooser's name in place of a frozen picture.
    other_status = other.get_by_test_id("video-status")
    await expect(other_status).to_contain_text(f"{chooser_name} switched to sound only")
    tile = other.get_by_test_id("remote-paused")
    await expect(tile).to_be_visible()
    await expect(tile).to_contain_text(chooser_name)
    await expect(other.locator("#remote-paused-initials")).to_have_text(chooser_initials)

    # No video either way; the sound goes on both ways.
    await video_stops_and_sound_goes_on(other)
    await video_stops_and_sound_goes_on(chooser)
    for page, who in ((chooser, "chose"), (other, "told")):
        await shot(page, artifacts, f"{shots}-{who}")
        await assert_accessible(page, axe_source, f"{page_kind(page)}: sound only, {who}")
        await no_sideways_scrolling(page)

    await press()
    await expect(button).to_have_attribute("aria-pressed", "false")
    await expect(status).not_to_contain_text("switched to sound only")
    await expect(other_status).not_to_contain_text("switched to sound only")
    await expect(chooser.locator("#local-placeholder")).to_be_hidden()
    await expect(chooser.get_by_role("button", name="Camera off")).to_be_enabled()
    # Video is back both ways; each tile goes once a new frame is on screen.
    await video_flows(other)
    await video_flows(chooser)
    await other.wait_for_function(TILE_GONE)
    await chooser.wait_for_function(TILE_GONE)


class TestPatientChoosesSoundOnly:
    async def test_both_pages_say_so_video_stops_sound_goes_on_and_video_comes_back(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path, axe_source: str
    ) -> None:
        patient, clinician = await in_call(pages, staff, db, "Pat Thin")
        # The call-quality table has the relay's estimate of what each side can receive.
        await expect(clinician.get_by_role("columnheader", name="Can receive")).to_be_visible()
        estimates = clinician.locator("#stats td:last-child")
        await expect(estimates.filter(has_text=re.compile(r"^\d+ kbit/s$")).first).to_be_visible()

        await sound_only_and_back(
            patient,
            clinician,
            press=patient.get_by_test_id("audio-only").click,
            chooser_name="Pat Thin",
            chooser_initials="PT",
            axe_source=axe_source,
            artifacts=artifacts,
            shots="20-patient-sound-only",
        )
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


class TestClinicianChoosesSoundOnly:
    async def test_from_the_keyboard_the_patient_is_told_and_video_comes_back(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path, axe_source: str
    ) -> None:
        patient, clinician = await in_call(pages, staff, db, "Pat Told")
        await clinician.get_by_test_id("audio-only").focus()
        await sound_only_and_back(
            clinician,
            patient,
            # The space bar on the focused button, both times (focus stays on it).
            press=lambda: clinician.keyboard.press("Space"),
            chooser_name="Dr. Ada Test",
            chooser_initials="AT",
            axe_source=axe_source,
            artifacts=artifacts,
            shots="21-clinician-sound-only",
        )
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()


# A RENDERING CHECK ONLY: the pages' own module (the one their scripts import) words a
# contract `video` message about a weak link and shows it in the page's own elements. No
# message goes through the socket and nothing in the page's state changes; the real pause
# comes from the relay on a thin link (bench/network.py).
SHOW_WEAK = """
async ([me, other, name, weakRole]) => {
  const script = document.querySelector('script[type="module"]').src;
  const m = await import(new URL("./soundonly.js", script).href);
  const states = new m.VideoStates();
  states.apply({ type: "video", role: weakRole, state: "paused", reason: "bandwidth" });
  const video = document.querySelector('[data-testid="remote-video"]');
  const words = m.soundOnlyWords({ me, other, name, chose: false, states });
  new m.SoundOnlyView(video).show({ ...words, name });
}
"""


class TestWeakConnectionWords:
    async def test_each_side_reads_whose_link_is_weak_and_the_pages_stay_accessible(
        self, pages: Pages, staff: Staff, db: Database, artifacts: Path, axe_source: str
    ) -> None:
        patient, clinician = await in_call(pages, staff, db, "Pat Weak")

        await patient.evaluate(SHOW_WEAK, ["patient", "clinician", "Dr. Ada Test", "patient"])
        status = patient.get_by_test_id("video-status")
        await expect(status).to_contain_text("Your connection is weak: sound only for now")
        await expect(patient.get_by_test_id("remote-paused")).to_contain_text(
            "Your connection is weak"
        )
        await shot(patient, artifacts, "23-patient-weak-connection")
        await assert_accessible(patient, axe_source, "visit: call, own link weak")
        await no_sideways_scrolling(patient)

        await patient.evaluate(SHOW_WEAK, ["patient", "clinician", "Dr. Ada Test", "clinician"])
        await expect(status).to_have_text(
            "Dr. Ada Test's connection is weak: sound only for now, both ways. "
            "The video comes back when it is better."
        )
        await assert_accessible(patient, axe_source, "visit: call, the clinician's link weak")

        await clinician.evaluate(SHOW_WEAK, ["clinician", "patient", "Pat Weak", "patient"])
        await expect(clinician.get_by_test_id("video-status")).to_contain_text(
            "Pat Weak's connection is weak: sound only for now, both ways"
        )
        # The patient's page stops sending its camera too: a tile, not a frozen picture.
        await expect(clinician.get_by_test_id("remote-paused")).to_contain_text(
            "Pat Weak's connection is weak"
        )
        await clinician.evaluate(SHOW_WEAK, ["clinician", "patient", "Pat Weak", "clinician"])
        await expect(clinician.get_by_test_id("remote-paused")).to_be_visible()
        await shot(clinician, artifacts, "24-clinician-weak-connection")
        await assert_accessible(clinician, axe_source, "console: call, own link weak")
        await clinician.get_by_test_id("end-call").click()
        await expect(patient.get_by_role("heading", name="Your visit has ended")).to_be_visible()
