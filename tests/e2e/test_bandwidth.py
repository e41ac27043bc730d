"""A thin subscriber lowers the publisher's browser: REMB through the relay, in real Chromium.

The patient's page runs in Chromium; the clinician is an aiortc peer on the console socket whose
receiver says, by REMB, that 150 kbit/s is what reaches it (what a browser behind a thin link
says). The relay must pass that on: Chromium's own target bitrate for the patient's video falls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Page

from app.db import Database
from media import bandwidth, hooks
from tests.e2e.conftest import Pages
from tests.e2e.helpers import consent_and_join
from tests.factories import Staff
from tests.live import LiveServer
from tests.media.clients import MediaClient, send_remb, until, without_estimate
from tests.signaling.helpers import console, make_visit

# The page's peer connections, kept where the test can read their stats.
KEEP_PEER_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__peerConnections = [];
  class Kept extends Original {
    constructor(...args) { super(...args); window.__peerConnections.push(this); }
  }
  window.RTCPeerConnection = Kept;
})();
"""
TARGET_BITRATE = """
async () => {
  for (const pc of window.__peerConnections.slice().reverse()) {
    if (pc.connectionState !== "connected") continue;
    for (const report of (await pc.getStats()).values()) {
      if (report.type === "outbound-rtp" && report.kind === "video" && report.targetBitrate) {
        return report.targetBitrate;
      }
    }
  }
  return null;
}
"""


@pytest.fixture
def loopback_peers() -> Iterator[None]:
    hooks.restrict_host_addresses(["127.0.0.1"])
    yield
    hooks.restrict_host_addresses(None)


async def target_bitrate(page: Page) -> float | None:
    value: Any = await page.evaluate(TARGET_BITRATE)
    return float(value) if value else None


class TestThinSubscriber:
    async def test_a_subscriber_at_150_kbps_makes_the_publishers_browser_lower_its_bitrate(
        self,
        pages: Pages,
        server: LiveServer,
        staff: Staff,
        db: Database,
        loopback_peers: None,
    ) -> None:
        visit = await make_visit(db, staff.clinician, by=staff.scheduler, name="Pat Thin")
        patient = await pages.page()
        await patient.add_init_script(KEEP_PEER_CONNECTIONS)
        await patient.goto(f"/visit/{visit.token}")
        await consent_and_join(patient, visit.token)
        async with console(server.ws_url, staff.clinician.token) as desk:
            await desk.send({"type": "admit", "appointment_id": str(visit.appointment_id)})
            call = await desk.expect("call", within=15)
            clinician = MediaClient(
                desk, colour=(30, 30, 220), tone=1000, appointment_id=str(visit.appointment_id)
            )
            try:
                await clinician.connect(call["ice_servers"])
                await until(lambda: clinician.received.video_frames > 30, 20)
                before: list[float] = []
                for _ in range(10):  # the browser's own estimate on a clean loopback path
                    await asyncio.sleep(0.5)
                    before.append(await target_bitrate(patient) or 0)
                assert max(before) > 200_000
                assert clinician.pc is not None
                receiver = next(
                    t.receiver
                    for t in clinician.pc.getTransceivers()
                    if t.kind == "video" and hooks.sources(t.receiver)
                )
                # From here on this peer says only what a thin link's browser would: its own
                # estimator (of a clean loopback path) is silenced.
                without_estimate(receiver)
                after: list[float] = []
                for _ in range(16):  # what a thin link's browser says, twice a second
                    await send_remb(receiver, 150_000)
                    await asyncio.sleep(0.5)
                    after.append(await target_bitrate(patient) or 0)
                # At most the REMB, or 25 % over it while the link shows no congestion (a REMB
                # follows what arrives: media.bandwidth.PROBE_FACTOR), far under the browser's own.
                limit = 150_000 * bandwidth.PROBE_FACTOR * 1.05
                assert max(after[-4:]) <= limit, (before, after)
                frames = clinician.received.video_frames
                await until(lambda: clinician.received.video_frames > frames + 10, 10)
            finally:
                await clinician.close_pc()
