"""Issue 11's figures: the relayed call on a thin link, against a direct call on the same link.

Two network namespaces of this script's own, joined by a veth pair with `tbf` on both ends
(bench/_netns.py): the clinic's side (10.77.0.1) runs `televisit serve` (its media relay offers
only that address) and the clinician's Chromium; the patient's side (10.77.0.2) runs the
patient's Chromium. Each Chromium is started by Playwright through a wrapper that runs
`ip netns exec NS chromium "$@"`, headless, fake camera and microphone.

Per scenario the two kinds of call alternate on the same link, each through the same camera
constraints (the pages' own, from app/pages/static/js/devices.js):
  - relayed: the product's pages. The clinician signs in on /clinic, the patient opens
    /visit/{token}, consents and joins, the clinician admits; media goes through the relay.
  - direct: two blank pages of the same origin with one RTCPeerConnection each (the pages'
    configuration, no ICE servers), SDP handed across by this script: browser to browser.
Setting up runs on a fast link; the scenario's rate is set just before the call starts.
Both pages sample their peer connection's getStats() every second; the figures are deltas over
a window after a warm-up, for each direction ("to the patient": what the patient's page
receives; "to the clinician": what the clinician's page receives):
  - video frames decoded per second, and seconds of the window without a decoded frame (the
    sum of the 1-s sampling intervals in which framesDecoded did not move);
  - audio concealed: concealedSamples / totalSamplesReceived;
  - packets lost: packetsLost / (packetsReceived + packetsLost), video and audio;
  - round trip: the median currentRoundTripTime of the page's selected ICE pair (for the
    relayed call, that page's leg to the relay);
  - relayed only: the relay's `video` messages each page received over its WebSocket, and
    whether the page showed "sound only" text at some point.
The drop scenario starts at 2 Mbit/s, falls to 150 kbit/s for 20 s and comes back: per 1-s
interval, audio concealed, from the fall until the end of the observation (15 s after the link
returns; the maximum is the figure), and the seconds from the link's return until the end of
the first 1-s interval that begins three in a row decoding >= 10 frames per second.

Run (as root): python bench/network.py [--scenarios 300,150,64,drop] [--rounds 1]
     [--warmup 10] [--window 30] [--server-tree DIR] [--json PATH]
     python bench/network.py --cleanup   (removes what a killed run left behind)
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    WebSocket,
    async_playwright,
    expect,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench import _netns as netns  # noqa: E402

PORT = 8077
ORIGIN = f"http://{netns.CLINIC_ADDR}:{PORT}"
SETUP_KBIT = 100_000  # while pages load and people sign in: not part of any figure
ADMIN_EMAIL = "bench-admin@example.org"
CLINICIAN_EMAIL = "bench-clinician@example.org"
CLINICIAN_NAME = "Dr. Net Bench"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}
# As the browser tests start Chromium (tests/e2e/conftest.py), without loopback candidates:
# here every candidate is a veth address.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    f"--unsafely-treat-insecure-origin-as-secure={ORIGIN}",
]

# In every page before its own scripts: remembers each RTCPeerConnection, and samples the
# newest open one that receives video, once a second, into window.__bench.samples.
TRACKER_JS = """
(() => {
  if (window.__bench) return;
  const Native = window.RTCPeerConnection;
  const pcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...args) { super(...args); pcs.push(this); }
  };
  const bench = { samples: [], timer: null };
  bench.current = () => {
    for (let i = pcs.length - 1; i >= 0; i--) {
      const pc = pcs[i];
      if (pc.signalingState === "closed") continue;
      if (pc.getTransceivers().some((t) => t.receiver.track.kind === "video")) return pc;
    }
    return null;
  };
  bench.state = () => { const pc = bench.current(); return pc ? pc.connectionState : "none"; };
  bench.sample = async () => {
    const pc = bench.current();
    const s = { t: 0, pc: pcs.indexOf(pc), state: pc ? pc.connectionState : "none", v: null, a: null, rtt: null, out: null };
    if (pc) {
      const report = await pc.getStats();
      const v = { frames: 0, recv: 0, lost: 0, bytes: 0, h: 0, keyframes: 0 };
      const a = { concealed: 0, total: 0, recv: 0, lost: 0, bytes: 0 };
      const out = { bytes: 0, h: 0, limit: "" };
      let pair = null;
      report.forEach((x) => { if (x.type === "transport" && x.selectedCandidatePairId) pair = x.selectedCandidatePairId; });
      report.forEach((x) => {
        if (x.type === "inbound-rtp" && x.kind === "video") {
          v.frames += x.framesDecoded || 0; v.recv += x.packetsReceived || 0;
          v.lost += x.packetsLost || 0; v.bytes += x.bytesReceived || 0;
          v.keyframes += x.keyFramesDecoded || 0; v.h = Math.max(v.h, x.frameHeight || 0);
          s.v = v;
        } else if (x.type === "inbound-rtp" && x.kind === "audio") {
          a.concealed += x.concealedSamples || 0; a.total += x.totalSamplesReceived || 0;
          a.recv += x.packetsReceived || 0; a.lost += x.packetsLost || 0; a.bytes += x.bytesReceived || 0;
          s.a = a;
        } else if (x.type === "outbound-rtp" && x.kind === "video") {
          out.bytes += x.bytesSent || 0; out.h = Math.max(out.h, x.frameHeight || 0);
          out.limit = x.qualityLimitationReason || out.limit;
          s.out = out;
        } else if (x.type === "outbound-rtp") {
          if (!s.out) s.out = out;
          out.bytes += x.bytesSent || 0;
        } else if (x.type === "candidate-pair" && (x.id === pair || (!pair && x.nominated))) {
          if (typeof x.currentRoundTripTime === "number") s.rtt = x.currentRoundTripTime * 1000;
        }
      });
    }
    s.t = Date.now();
    s.shown = /sound only/i.test(document.body ? document.body.innerText : "");
    bench.samples.push(s);
  };
  bench.start = () => {
    if (bench.timer) return;
    bench.sample();
    bench.timer = setInterval(() => bench.sample().catch(() => {}), 1000);
  };
  window.__bench = bench;
})();
"""

# The direct call's page: the pages' own camera request and peer connection configuration,
# imported from the server's static files, and a <video> that plays what arrives.
DIRECT_SETUP_JS = """async (offerer) => {
  const html = await (await fetch("/login")).text();
  const prefix = html.match(/\\/static\\/[^\\/"']+\\//)[0];
  const devices = await import(prefix + "js/devices.js");
  const rtc = await import(prefix + "js/rtc.js");
  const media = await devices.openLocalMedia();
  if (!media.stream || media.camera !== "ok" || media.microphone !== "ok") throw new Error("no media");
  const pc = new RTCPeerConnection(rtc.rtcConfiguration([]));
  const stream = media.stream;
  for (const kind of ["audio", "video"]) {
    const track = stream.getTracks().find((t) => t.kind === kind);
    // The offerer as the pages do; the answerer with addTrack, which the offer's m-lines take up.
    if (offerer) pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
    else pc.addTrack(track, stream);
  }
  const local = document.createElement("video");
  local.muted = true; local.autoplay = true; local.playsInline = true; local.srcObject = stream;
  const remote = document.createElement("video");
  remote.autoplay = true; remote.playsInline = true; remote.srcObject = new MediaStream();
  document.body.append(local, remote);
  pc.ontrack = (event) => { remote.srcObject.addTrack(event.track); remote.play().catch(() => {}); };
  window.__direct = pc;
}"""
# Candidates travel inside the SDP: each side waits for its (host-only) gathering to end.
GATHERED_JS = """async (pc) => {
  if (pc.iceGatheringState !== "complete") await new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
  });
  return pc.localDescription.sdp;
}"""
OFFER_JS = f"""async () => {{
  const pc = window.__direct;
  await pc.setLocalDescription(await pc.createOffer());
  return await ({GATHERED_JS})(pc);
}}"""
ANSWER_JS = f"""async (offer) => {{
  const pc = window.__direct;
  await pc.setRemoteDescription({{ type: "offer", sdp: offer }});
  await pc.setLocalDescription(await pc.createAnswer());
  return await ({GATHERED_JS})(pc);
}}"""
ACCEPT_JS = """async (answer) => {
  await window.__direct.setRemoteDescription({ type: "answer", sdp: answer });
}"""

SIDES = ("patient", "clinician")
DIRECTION = {"patient": "to the patient", "clinician": "to the clinician"}


# Scenarios, timing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kbit: float
    drop_to: float | None = None


SCENARIOS = {
    "300": Scenario("300", "300 kbit/s each way", 300),
    "150": Scenario("150", "150 kbit/s each way", 150),
    "64": Scenario("64", "64 kbit/s each way", 64),
    "drop": Scenario("drop", "2 Mbit/s, falling to 150 kbit/s for 20 s, then back", 2000, 150),
}


@dataclass(frozen=True)
class Timing:
    warmup: float
    window: float
    drop_warmup: float
    drop_seconds: float
    before: float
    after: float


# One call's record ---------------------------------------------------------------------------


@dataclass
class Call:
    scenario: str
    mode: str  # "relayed" | "direct"
    round: int
    started_at: float = 0.0
    connected_at: float | None = None
    window: tuple[float, float] | None = None
    link_events: list[tuple[float, float]] = field(default_factory=list)
    fall: float | None = None
    rise: float | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    messages: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {side: [] for side in SIDES}
    )
    error: str | None = None


def watch_sockets(page: Page, sink: list[dict[str, Any]]) -> None:
    """Keep the relay's `video`, `ended` and `error` messages this page receives, timed."""

    def on_frame(payload: str | bytes) -> None:
        try:
            message = json.loads(payload)
        except (ValueError, TypeError):
            return
        if isinstance(message, dict) and message.get("type") in ("video", "ended", "error"):
            sink.append({"t": time.time(), **message})

    def on_socket(ws: WebSocket) -> None:
        sink.append({"t": time.time(), "type": "(socket opened)", "url": ws.url.split("?")[0]})
        ws.on("framereceived", on_frame)

    page.on("websocket", on_socket)


# The bench's world: link, server, browsers ---------------------------------------------------


@dataclass
class World:
    link: netns.Link
    folder: Path
    tree: Path
    chromium: str
    log_level: str = "WARNING"
    server: subprocess.Popen[bytes] | None = None
    admin_password: str = ""
    clinician_password: str = ""
    visits: list[tuple[str, str]] = field(default_factory=list)  # (patient name, token)
    browsers: dict[str, Browser] = field(default_factory=dict)

    def start_server(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TELEVISIT_")}
        self.admin_password = secrets.token_urlsafe(16)
        env.update(
            {
                "PYTHONPATH": str(self.tree),
                "TELEVISIT_ENVIRONMENT": "test",
                "TELEVISIT_DATABASE_URL": f"sqlite+aiosqlite:///{self.folder / 'network.db'}",
                "TELEVISIT_SECRET_KEY": secrets.token_urlsafe(48),
                "TELEVISIT_PUBLIC_URL": ORIGIN,
                "TELEVISIT_ADMIN_EMAIL": ADMIN_EMAIL,
                "TELEVISIT_ADMIN_PASSWORD": self.admin_password,
                "TELEVISIT_MEDIA_IPS": netns.CLINIC_ADDR,
                "TELEVISIT_MEDIA_PEER_ALLOW": netns.SUBNET,
                "TELEVISIT_CHECKIN_MINUTES_BEFORE": "600",
                "TELEVISIT_RECORDINGS_DIR": str(self.folder / "recordings"),
                "TELEVISIT_LOG_LEVEL": self.log_level,
            }
        )
        log = (self.folder / "server.log").open("wb")
        self.server = subprocess.Popen(
            [netns.IP, "netns", "exec", netns.CLINIC_NS, sys.executable, "-m", "app", "serve",
             "--host", netns.CLINIC_ADDR, "--port", str(PORT)],
            cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"server exited with {self.server.returncode}:\n{self.logs()}")
            if self.link.in_clinic(_healthy):
                return
            time.sleep(0.2)
        raise RuntimeError(f"server did not answer in 60 s:\n{self.logs()}")

    def logs(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-4000:]

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def seed(self, count: int) -> None:
        """Through the API: a clinician with 5-minute slots all day, `count` visits booked."""
        self.clinician_password = secrets.token_urlsafe(16)
        self.visits = self.link.in_clinic(
            lambda: _seed(self.admin_password, self.clinician_password, count)
        )

    def wrapper(self, ns: str) -> str:
        path = self.folder / f"chromium-{ns}.sh"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {self.chromium} "$@"\n')
        path.chmod(0o755)
        return str(path)

    async def launch(self, driver: Playwright) -> None:
        for side, ns in (("clinician", netns.CLINIC_NS), ("patient", netns.PATIENT_NS)):
            self.browsers[side] = await driver.chromium.launch(
                executable_path=self.wrapper(ns), headless=True, args=CHROMIUM_ARGS
            )

    async def context(self, side: str) -> BrowserContext:
        context = await self.browsers[side].new_context(
            base_url=ORIGIN,
            viewport=PHONE if side == "patient" else DESKTOP,  # type: ignore[arg-type]
            permissions=["camera", "microphone"],
            locale="en-US",
        )
        context.set_default_timeout(30_000)
        await context.add_init_script(TRACKER_JS)
        return context

    async def shape(self, kbit: float) -> float:
        """Set both directions to `kbit`; the time the change took effect."""
        await asyncio.to_thread(self.link.shape, kbit)
        return time.time()


def _healthy() -> bool:
    try:
        return httpx.get(f"{ORIGIN}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seed(admin_password: str, clinician_password: str, count: int) -> list[tuple[str, str]]:
    with httpx.Client(base_url=ORIGIN, timeout=15) as http:

        def call(method: str, path: str, **kwargs: Any) -> Any:
            response = http.request(method, path, **kwargs)
            if response.status_code >= 300:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            return response.json()

        token = call(
            "POST", "/api/v1/auth/token", data={"username": ADMIN_EMAIL, "password": admin_password}
        )["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        clinician = call(
            "POST",
            "/api/v1/users",
            json={
                "email": CLINICIAN_EMAIL,
                "password": clinician_password,
                "role": "clinician",
                "name": CLINICIAN_NAME,
                "timezone": "UTC",
            },
        )
        hours = [{"weekday": d, "start": "00:00", "end": "24:00"} for d in range(7)]
        call(
            "PUT",
            f"/api/v1/clinicians/{clinician['id']}/availability",
            json={"timezone": "UTC", "slot_minutes": 5, "weekly": hours},
        )
        now = dt.datetime.now(dt.UTC)
        slots = call(
            "GET",
            f"/api/v1/clinicians/{clinician['id']}/slots",
            params={"start": _rfc3339(now), "end": _rfc3339(now + dt.timedelta(hours=3))},
        )["slots"]
        visits = []
        for index, slot in enumerate(slots[:count]):
            name = f"Pat Network {index + 1}"
            booked = call(
                "POST",
                "/api/v1/appointments",
                json={
                    "clinician_id": clinician["id"],
                    "start": slot["start"],
                    "patient": {"name": name},
                    "reason": "network bench",
                },
            )
            visits.append((name, booked["visit_url"].rsplit("/", 1)[1]))
        if len(visits) < count:
            raise RuntimeError(f"only {len(visits)} free slots for {count} visits")
        return visits


# Calls ----------------------------------------------------------------------------------------


async def wait_connected(pages: dict[str, Page], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = [await page.evaluate("window.__bench.state()") for page in pages.values()]
        if all(state == "connected" for state in states):
            return True
        await asyncio.sleep(0.25)
    return False


async def sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.time()))


async def measure(
    world: World, pages: dict[str, Page], call: Call, scenario: Scenario, timing: Timing
) -> None:
    """From the call's start: wait until connected, warm up, observe; the samples kept."""
    for page in pages.values():
        await page.evaluate("window.__bench.start()")
    if not await wait_connected(pages, 45):
        call.error = "the peer connections did not connect within 45 s"
    else:
        call.connected_at = time.time()
        if scenario.drop_to is None:
            start = call.connected_at + timing.warmup
            call.window = (start, start + timing.window)
            await sleep_until(call.window[1] + 1.5)
        else:
            fall_at = call.connected_at + timing.drop_warmup + timing.before
            await sleep_until(fall_at)
            call.fall = await world.shape(scenario.drop_to)
            call.link_events.append((call.fall, scenario.drop_to))
            await sleep_until(call.fall + timing.drop_seconds)
            call.rise = await world.shape(scenario.kbit)
            call.link_events.append((call.rise, scenario.kbit))
            call.window = (call.fall - timing.before, call.rise + timing.after)
            await sleep_until(call.window[1] + 1.5)
    for side, page in pages.items():
        call.samples[side] = await page.evaluate("window.__bench.samples")


async def relayed_call(
    world: World, scenario: Scenario, timing: Timing, visit: tuple[str, str], call: Call
) -> None:
    name, token = visit
    contexts = {side: await world.context(side) for side in SIDES}
    pages = {side: await contexts[side].new_page() for side in SIDES}
    for side, page in pages.items():
        watch_sockets(page, call.messages[side])
    clinician, patient = pages["clinician"], pages["patient"]
    try:
        await clinician.goto("/login")
        await clinician.get_by_test_id("login-email").fill(CLINICIAN_EMAIL)
        await clinician.get_by_test_id("login-password").fill(world.clinician_password)
        await clinician.get_by_test_id("login-submit").click()
        await clinician.wait_for_url("**/clinic")
        await patient.goto(f"/visit/{token}")
        await patient.get_by_test_id("consent-accept").click()
        await expect(patient.get_by_test_id("join")).to_be_enabled()
        await patient.get_by_test_id("join").click()
        admit = clinician.get_by_test_id("queue-item").filter(has_text=name).get_by_test_id("admit")
        await admit.wait_for()
        call.link_events.append((await world.shape(scenario.kbit), scenario.kbit))
        call.started_at = time.time()
        await admit.click()
        await measure(world, pages, call, scenario, timing)
    finally:
        try:
            await clinician.get_by_test_id("end-call").click(timeout=5_000)
            await asyncio.sleep(1)
        except Exception as exc:  # the figures are taken; a call that cannot end is noted
            print(f"    (could not end the call: {type(exc).__name__})")
        for context in contexts.values():
            await context.close()


async def direct_call(world: World, scenario: Scenario, timing: Timing, call: Call) -> None:
    contexts = {side: await world.context(side) for side in SIDES}
    pages = {side: await contexts[side].new_page() for side in SIDES}
    try:
        for side, page in pages.items():
            await page.goto("/healthz")
            await page.evaluate(DIRECT_SETUP_JS, side == "clinician")
        call.link_events.append((await world.shape(scenario.kbit), scenario.kbit))
        call.started_at = time.time()
        offer = await pages["clinician"].evaluate(OFFER_JS)
        answer = await pages["patient"].evaluate(ANSWER_JS, offer)
        await pages["clinician"].evaluate(ACCEPT_JS, answer)
        await measure(world, pages, call, scenario, timing)
    finally:
        for context in contexts.values():
            await context.close()


# Figures --------------------------------------------------------------------------------------


COUNTERS = {
    "frames": ("v", "frames"),
    "video_recv": ("v", "recv"),
    "video_lost": ("v", "lost"),
    "video_bytes": ("v", "bytes"),
    "concealed": ("a", "concealed"),
    "samples": ("a", "total"),
    "audio_recv": ("a", "recv"),
    "audio_lost": ("a", "lost"),
    "audio_bytes": ("a", "bytes"),
    "sent_bytes": ("out", "bytes"),
}


def _get(sample: dict[str, Any], kind: str, key: str) -> float:
    part = sample.get(kind)
    return float(part.get(key, 0)) if part else 0.0


def _span(samples: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """The samples from the one nearest t0 to the one nearest t1 (times in s)."""
    if not samples:
        return []
    times = [s["t"] / 1000 for s in samples]
    first = min(range(len(times)), key=lambda i: abs(times[i] - t0))
    last = min(range(len(times)), key=lambda i: abs(times[i] - t1))
    return samples[first : last + 1]


def intervals(span: list[dict[str, Any]]) -> list[dict[str, float]]:
    """What each counter added between consecutive samples. When the page has a new peer
    connection (it reconnected), the new one's counters count from zero."""
    out = []
    for a, b in itertools.pairwise(span):
        same = a.get("pc") == b.get("pc")
        step = {
            name: _get(b, kind, key) - (_get(a, kind, key) if same else 0.0)
            for name, (kind, key) in COUNTERS.items()
        }
        step.update(start=a["t"] / 1000, end=b["t"] / 1000, seconds=(b["t"] - a["t"]) / 1000)
        out.append(step)
    return out


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def window_figures(samples: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    span = _span(samples, t0, t1)
    steps = intervals(span)
    if not steps:
        return {"error": "no samples"}
    total = {name: sum(step[name] for step in steps) for name in (*COUNTERS, "seconds")}
    seconds = total["seconds"]
    rtts = [s["rtt"] for s in span if s.get("rtt") is not None]
    new_connections = sum(1 for a, b in itertools.pairwise(span) if a.get("pc") != b.get("pc"))
    return {
        "seconds": seconds,
        "fps": total["frames"] / seconds,
        "frozen_s": sum(step["seconds"] for step in steps if step["frames"] <= 0),
        "audio_concealed": _ratio(total["concealed"], total["samples"]),
        "video_lost": _ratio(total["video_lost"], total["video_recv"] + total["video_lost"]),
        "audio_lost": _ratio(total["audio_lost"], total["audio_recv"] + total["audio_lost"]),
        "rtt_ms": statistics.median(rtts) if rtts else None,
        "kbps_in": (total["video_bytes"] + total["audio_bytes"]) * 8 / 1000 / seconds,
        "kbps_out": total["sent_bytes"] * 8 / 1000 / seconds,
        "height": statistics.median([_get(s, "v", "h") for s in span]),
        "new_connections": new_connections,
        # Up: the same peer connection all along, never failed (a moment "disconnected" is
        # allowed), and sound still arriving in each of the window's last three seconds.
        "up": new_connections == 0
        and not any(s["state"] in ("failed", "closed", "new", "none") for s in span)
        and all(step["audio_recv"] > 0 for step in steps[-3:]),
        "shown_sound_only": any(s.get("shown") for s in samples),
    }


def drop_figures(samples: list[dict[str, Any]], call: Call, timing: Timing) -> dict[str, Any]:
    assert call.fall is not None
    assert call.rise is not None
    steps = [
        {
            "start": step["start"],
            "end": step["end"],
            "fps": step["frames"] / step["seconds"],
            # A second in which no sound was played at all counts as all of it concealed.
            "concealed": step["concealed"] / step["samples"] if step["samples"] > 0 else 1.0,
        }
        for step in intervals(_span(samples, call.fall - timing.before, call.rise + timing.after))
    ]
    fall, rise = call.fall, call.rise
    before = [i for i in steps if i["end"] <= fall]
    during = [i for i in steps if i["end"] > fall and i["start"] < rise]
    after_fall = [i for i in steps if i["end"] > fall]
    after_rise = [i for i in steps if i["end"] > rise]
    # Video is back at the end of the first second of three whose mean is >= 10 fps.
    back = None
    for index in range(len(after_rise) - 2):
        if statistics.mean(i["fps"] for i in after_rise[index : index + 3]) >= 10:
            back = max(0.0, after_rise[index]["end"] - rise)
            break
    return {
        "fps_before": statistics.mean(i["fps"] for i in before) if before else None,
        "fps_during": statistics.mean(i["fps"] for i in during) if during else None,
        "fps_after": statistics.mean(i["fps"] for i in after_rise) if after_rise else None,
        "worst_second_concealed_during": max((i["concealed"] for i in during), default=None),
        "worst_second_concealed": max((i["concealed"] for i in after_fall), default=None),
        "seconds_over_3pct": sum(1 for i in after_fall if i["concealed"] > 0.03),
        "video_back_s": back,
        "seconds": steps,
    }


def call_figures(call: Call, timing: Timing) -> dict[str, Any]:
    if call.error or call.window is None:
        return {side: {"error": call.error or "no window"} for side in SIDES}
    figures = {}
    for side in SIDES:
        samples = call.samples.get(side, [])
        result = window_figures(samples, *call.window)
        if call.fall is not None:
            result["drop"] = drop_figures(samples, call, timing)
        result["paused"] = [m for m in call.messages[side] if m.get("type") == "video"]
        result["sockets_reopened"] = sum(
            1
            for m in call.messages[side]
            if m["type"] == "(socket opened)" and m["t"] > call.started_at
        )
        figures[side] = result
    return figures


def combined(rounds: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """One figure per key over the rounds: the median (booleans: every round)."""
    parts = [r[side] for r in rounds if "error" not in r[side]]
    if not parts:
        return {"error": "; ".join(r[side]["error"] for r in rounds)}
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p.get(key) for p in parts]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = statistics.median(values)
        elif key == "drop":
            out[key] = {
                k: (
                    statistics.median(vs) if all(isinstance(v, (int, float)) for v in vs) else vs[0]
                )
                for k in values[0]
                for vs in [[v[k] for v in values]]
            }
        elif all(isinstance(v, list) for v in values):
            out[key] = [item for v in values for item in v]
        else:
            out[key] = values[0]
    return out


# Tables ---------------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


Row = tuple[str, str, str, str, str, str, str]


def per_side(
    relayed: dict[str, Any], direct: dict[str, Any], rows: list[Row]
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each direction with both calls' figures; a direction a call failed in gets one row."""
    for side in SIDES:
        r, d = relayed[side], direct[side]
        if "error" in r or "error" in d:
            rows.append(
                (
                    "call",
                    DIRECTION[side],
                    r.get("error", "ok"),
                    d.get("error", "ok"),
                    "",
                    "",
                    "FAIL",
                )
            )
            continue
        yield DIRECTION[side], r, d


def steady_rows(key: str, relayed: dict[str, Any], direct: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for where, r, d in per_side(relayed, direct, rows):
        gated = key in ("300", "150")
        fps_ok = r["fps"] >= 0.8 * d["fps"] if gated else None
        frozen_ok = r["frozen_s"] <= d["frozen_s"] + 3 if gated else None
        rc, dc = r["audio_concealed"], d["audio_concealed"]
        if gated:
            conceal_target = "<= max(2 %, 2x direct)"
            conceal_ok = rc is not None and dc is not None and rc <= max(0.02, 2 * dc)
        elif key == "64":
            conceal_target, conceal_ok = "<= 3 %", rc is not None and rc <= 0.03
        else:
            conceal_target, conceal_ok = "", None
        ratio = f"{r['fps'] / d['fps']:.2f}x" if d["fps"] > 0 else "n/a"
        conceal_ratio = f"{rc / dc:.1f}x" if rc is not None and dc else ""
        rows += [
            ("video frames decoded per second", where, num(r["fps"]), num(d["fps"]), ratio,
             ">= 0.8x direct" if gated else "", verdict(fps_ok)),
            (f"seconds without a decoded frame, of {r['seconds']:.0f}", where, num(r["frozen_s"], 0),
             num(d["frozen_s"], 0), f"{r['frozen_s'] - d['frozen_s']:+.0f} s",
             "<= direct + 3 s" if gated else "", verdict(frozen_ok)),
            ("audio concealed", where, pct(rc), pct(dc), conceal_ratio, conceal_target, verdict(conceal_ok)),
            ("video packets lost", where, pct(r["video_lost"]), pct(d["video_lost"]), "", "", ""),
            ("audio packets lost", where, pct(r["audio_lost"]), pct(d["audio_lost"]), "", "", ""),
            ("round trip of this side's ICE pair, ms", where, num(r["rtt_ms"], 0), num(d["rtt_ms"], 0), "", "", ""),
            ("kbit/s received (video + audio)", where, num(r["kbps_in"], 0), num(d["kbps_in"], 0), "", "", ""),
            ("video height received (median)", where, num(r["height"], 0), num(d["height"], 0), "", "", ""),
            ("new peer connections in the window (page reconnected)", where, num(r["new_connections"], 0),
             num(d["new_connections"], 0), "", "", ""),
        ]  # fmt: skip
        if key == "64":
            rows.append(
                ("call stays up", where, str(r["up"]), str(d["up"]), "", "up", verdict(r["up"]))
            )
    return rows + video_rows(relayed, gated=key == "64")


def video_rows(relayed: dict[str, Any], *, gated: bool) -> list[Row]:
    """The relay's `video` messages each page heard, and whether it said "sound only"."""
    rows: list[Row] = []
    for side in SIDES:
        figures = relayed[side]
        if "error" in figures:
            continue
        heard = figures.get("paused", [])
        told = ", ".join(f"{m.get('role')} {m.get('state')}" for m in heard[:6]) or "none"
        paused = any(m.get("role") == side and m.get("state") == "paused" for m in heard)
        shown = bool(figures.get("shown_sound_only"))
        target = gated and side == "patient"
        rows += [
            ("relay's `video` messages this page received", DIRECTION[side], told, "", "",
             "patient paused" if target else "", verdict(paused) if target else ""),
            ('the page says "sound only"', DIRECTION[side], str(shown), "", "",
             "shown" if target else "", verdict(shown) if target else ""),
            ("the page's signaling WebSocket reopened during the call", DIRECTION[side],
             num(figures.get("sockets_reopened"), 0), "", "", "", ""),
        ]  # fmt: skip
    return rows


def drop_rows(relayed: dict[str, Any], direct: dict[str, Any], timing: Timing) -> list[Row]:
    rows: list[Row] = []
    for where, r, d in per_side(relayed, direct, rows):
        rd, dd = r["drop"], d["drop"]
        worst_ok = rd["worst_second_concealed"] is not None and rd["worst_second_concealed"] <= 0.03
        back_ok = rd["video_back_s"] is not None and rd["video_back_s"] <= 5
        rows += [
            (f"video fps before the fall ({timing.before:g} s)", where, num(rd["fps_before"]), num(dd["fps_before"]), "", "", ""),
            (f"video fps during the {timing.drop_seconds:g} s at 150 kbit/s", where, num(rd["fps_during"]), num(dd["fps_during"]), "", "", ""),
            ("worst 1-s audio concealed, during the fall", where, pct(rd["worst_second_concealed_during"]),
             pct(dd["worst_second_concealed_during"]), "", "", ""),
            (f"worst 1-s audio concealed, fall to {timing.after:g} s after", where, pct(rd["worst_second_concealed"]),
             pct(dd["worst_second_concealed"]), "", "<= 3 %", verdict(worst_ok)),
            ("s after the link returns until >= 10 fps", where, num(rd["video_back_s"]), num(dd["video_back_s"]),
             "", "<= 5 s", verdict(back_ok)),
            (f"video fps in the {timing.after:g} s after the return", where, num(rd["fps_after"]), num(dd["fps_after"]), "", "", ""),
            ("1-s intervals with more than 3 % concealed", where, num(rd["seconds_over_3pct"], 0),
             num(dd["seconds_over_3pct"], 0), "", "", ""),
            ("new peer connections (page reconnected)", where, num(r["new_connections"], 0),
             num(d["new_connections"], 0), "", "", ""),
            (f"audio concealed, whole {r['seconds']:.0f} s", where, pct(r["audio_concealed"]), pct(d["audio_concealed"]), "", "", ""),
        ]  # fmt: skip
    return rows + video_rows(relayed, gated=False)


def table(rows: list[Row]) -> str:
    head = (
        "figure",
        "direction",
        "relayed",
        "direct",
        "relayed vs direct",
        "target",
        "relayed meets it",
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}, {os.cpu_count()} CPUs"


# The run -------------------------------------------------------------------------------------


async def run_all(
    world: World,
    scenarios: list[Scenario],
    rounds: int,
    timing: Timing,
    modes: tuple[str, ...] = ("relayed", "direct"),
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    visits = iter(world.visits)
    async with async_playwright() as driver:
        await world.launch(driver)
        try:
            for scenario in scenarios:
                print(
                    f"\n== {scenario.title} (tbf both ways, {netns.QUEUE_MS} ms queue) ==",
                    flush=True,
                )
                calls: dict[str, list[Call]] = {mode: [] for mode in modes}
                for index in range(rounds):
                    # Alternate which call goes first, round after round.
                    order = modes if index % 2 == 0 else modes[::-1]
                    for mode in order:
                        call = Call(scenario.key, mode, index + 1)
                        began = time.monotonic()
                        await world.shape(SETUP_KBIT)
                        try:
                            if mode == "relayed":
                                await relayed_call(world, scenario, timing, next(visits), call)
                            else:
                                await direct_call(world, scenario, timing, call)
                        except Exception as exc:
                            call.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                        await world.shape(SETUP_KBIT)
                        print(f"  round {index + 1} {mode:7s} {time.monotonic() - began:5.1f} s"
                              + (f"  ERROR {call.error}" if call.error else ""), flush=True)  # fmt: skip
                        calls[mode].append(call)
                figures = {
                    mode: [call_figures(c, timing) for c in cs] for mode, cs in calls.items()
                }
                summary = {
                    mode: {side: combined(figures[mode], side) for side in SIDES}
                    for mode in figures
                }
                if len(modes) < 2:  # no side-by-side table: each call's own figures
                    for mode, per_call in figures.items():
                        for number, one in enumerate(per_call, 1):
                            print(f"  {mode} round {number}: " + _brief(one), flush=True)
                    results[scenario.key] = {"title": scenario.title, "summary": summary,
                                             "calls": [asdict(c) for cs in calls.values() for c in cs]}  # fmt: skip
                    continue
                rows = (
                    drop_rows(summary["relayed"], summary["direct"], timing)
                    if scenario.drop_to is not None
                    else steady_rows(scenario.key, summary["relayed"], summary["direct"])
                )
                print(table(rows), flush=True)
                results[scenario.key] = {
                    "title": scenario.title,
                    "summary": summary,
                    "rows": rows,
                    "calls": [asdict(c) for cs in calls.values() for c in cs],
                }
        finally:
            for browser in world.browsers.values():
                await browser.close()
    return results


def _brief(figures: dict[str, Any]) -> str:
    parts = []
    for side in SIDES:
        one = figures.get(side) or {}
        fps, frozen, concealed = (one.get(k) for k in ("fps", "frozen_s", "audio_concealed"))
        if fps is None:
            parts.append(f"to the {side}: n/a")
            continue
        parts.append(
            f"to the {side}: {fps:.1f} fps, {frozen or 0:.0f} s frozen, "
            f"{100 * (concealed or 0):.1f} % concealed"
        )
    return "; ".join(parts)


class Cleanup:
    """Stops the server and removes the namespaces (and everything in them) once."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], None]] = []

    def __call__(self) -> None:
        while self.steps:
            step = self.steps.pop()
            try:
                step()
            except Exception as exc:
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios", default="300,150,64,drop", help="comma-separated: 300,150,64,drop"
    )
    parser.add_argument("--rounds", type=int, default=1, help="relayed/direct pairs per scenario")
    parser.add_argument(
        "--warmup", type=float, default=10, help="seconds from connected to the window"
    )
    parser.add_argument("--window", type=float, default=30, help="seconds of the measured window")
    parser.add_argument(
        "--drop-warmup", type=float, default=15, help="seconds at 2 Mbit/s before the 5 s baseline"
    )
    parser.add_argument("--drop-seconds", type=float, default=20)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument(
        "--server-tree", type=Path, default=ROOT, help="where `televisit serve` runs from"
    )
    parser.add_argument("--json", type=Path, help="write every figure and sample here")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the temp folder (server log)"
    )
    parser.add_argument(
        "--modes", default="relayed,direct", help="relayed,direct (one alone: no comparison)"
    )
    parser.add_argument(
        "--server-log-level", default="WARNING", help="DEBUG logs the relay's estimate per second"
    )
    parser.add_argument(
        "--cleanup", action="store_true", help="only remove a killed run's namespaces"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the bench makes network namespaces")
    if args.cleanup:
        netns.remove_namespaces(
            [ns for ns in (netns.CLINIC_NS, netns.PATIENT_NS) if ns in netns.existing_namespaces()]
        )
        print("namespaces now:", netns.existing_namespaces())
        return
    if not Path(args.chromium).is_file():
        sys.exit(f"{args.chromium} is missing: apt-get install chromium")
    scenarios = [SCENARIOS[key.strip()] for key in args.scenarios.split(",")]
    timing = Timing(
        args.warmup, args.window, args.drop_warmup, args.drop_seconds, before=5, after=15
    )
    started = time.time()
    load_at_start = machine_load()
    print(f"bench/network.py, {time.strftime('%Y-%m-%d %H:%M %Z')}, server from {args.server_tree}")
    print(f"machine at start: {load_at_start}")
    print(f"link: veth between two namespaces, tbf on both ends (rate R, latency {netns.QUEUE_MS} ms, "
          f"burst max(1600 B, 10 ms at R)); warm-up {args.warmup:g} s, window {args.window:g} s")  # fmt: skip

    folder = Path(tempfile.mkdtemp(prefix="televisit-network-"))
    link = netns.Link()
    world = World(
        link=link,
        folder=folder,
        tree=args.server_tree.resolve(),
        chromium=args.chromium,
        log_level=args.server_log_level,
    )
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or not set(modes) <= {"relayed", "direct"}:
        sys.exit("--modes takes relayed, direct or both")
    cleanup = Cleanup()
    atexit.register(cleanup)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    results: dict[str, Any] = {}
    try:
        cleanup.steps.append(link.close)
        link.open()
        link.shape(SETUP_KBIT)
        cleanup.steps.append(world.stop_server)
        world.start_server()
        relayed_calls = sum(1 for _ in scenarios) * args.rounds * ("relayed" in modes)
        world.seed(relayed_calls)
        results = asyncio.run(run_all(world, scenarios, args.rounds, timing, modes))
    finally:
        server_log = world.logs() if (folder / "server.log").exists() else ""
        cleanup()
        left = [
            ns for ns in netns.existing_namespaces() if ns in (netns.CLINIC_NS, netns.PATIENT_NS)
        ]
        print(f"\nnamespaces left: {left or 'none'}")
        if not args.keep_logs and not left:
            shutil.rmtree(folder, ignore_errors=True)
        elif args.keep_logs:
            print(f"server log: {folder / 'server.log'}")
        if "Traceback" in server_log:
            print("the server logged a traceback; last lines:\n" + server_log[-2000:])
    load_at_end = machine_load()
    print(f"machine at end: {load_at_end}; the run took {(time.time() - started) / 60:.1f} min")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                    "command": " ".join(sys.argv),
                    "load_start": load_at_start,
                    "load_end": load_at_end,
                    "timing": asdict(timing),
                    "results": results,
                },
                indent=1,
                default=str,
            )
        )
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
