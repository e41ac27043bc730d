"""The relay's consent readings and the event loop's lag, in calls of four against calls of two.

Issue 14: in calls of four Chromium pages on a loaded 2-core machine the relay's readings
(`ConsentReader.read`, every 0.25 s) overran the 0.75 s after which a call is in doubt. This
runs the real server (`televisit serve` under bench/_consent_lag_server.py, which times each
reading and samples the loop's lag every 100 ms, nothing else changed) and, in each round, one
visit through it with aiortc peers on loopback in this process: a call of two (patient and
clinician) measured for --seconds, then the same call with two guests (an interpreter and a
caregiver: 12 forwarded video streams) measured for --seconds. The peers encode and decode
their video (320x240 at 30 fps) as browsers do, on the same two cores as the server.

Prints, for each side: the readings' duration (median, p95, max), how many the relay gave up,
the loop's lag (median, p95, max) and the doubts.

With --burn N, N more processes spin on the CPU throughout (as other work on a shared machine,
or browsers rendering four calls, would take it from the server).

Run: python bench/consent_lag.py [--rounds 3] [--seconds 20] [--burn 0] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, Backend, percentile, postgres_backend, sqlite_backend, temp_folder

from app.config import Settings
from app.db import Database, create_engine
from media import hooks
from tests.conftest import TEST_SECRET
from tests.factories import Staff, make_staff
from tests.live import LiveServer, start_server
from tests.media.clients import MediaClient, until
from tests.media.test_guest_media import answering
from tests.signaling.helpers import Socket, add_guest, console, grant, make_visit, open_socket

COLOURS = {
    "patient": ((220, 30, 30), 440.0),
    "clinician": ((30, 30, 220), 660.0),
    "interpreter": ((30, 200, 30), 880.0),
    "caregiver": ((220, 200, 30), 1100.0),
}


async def joined(stack: AsyncExitStack, client: MediaClient, ice: list[Any]) -> MediaClient:
    stack.push_async_callback(client.close_pc)
    await client.connect(ice)
    await stack.enter_async_context(answering(client))
    return client


async def one_round(
    server: LiveServer, db: Database, staff: Staff, seconds: float
) -> dict[str, tuple[float, float]]:
    """The measured windows (wall clock) of the call of two and of four."""
    windows: dict[str, tuple[float, float]] = {}
    visit = await make_visit(db, staff.clinician, by=staff.scheduler, minutes=5)
    key = str(visit.appointment_id)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=server.url))
        await grant(http, visit.token, ("video_visit", "recording"))
        desk: Socket = await stack.enter_async_context(
            console(server.ws_url, staff.clinician.token)
        )
        patient_socket: Socket = await stack.enter_async_context(
            open_socket(f"{server.ws_url}/ws/visits/{visit.token}")
        )
        await patient_socket.expect("waiting")
        await desk.send({"type": "admit", "appointment_id": key})
        admitted = await patient_socket.expect("admitted", within=15)
        call = await desk.expect("call", within=15)
        colour, tone = COLOURS["patient"]
        patient = await joined(
            stack, MediaClient(patient_socket, colour=colour, tone=tone), admitted["ice_servers"]
        )
        colour, tone = COLOURS["clinician"]
        clinician = await joined(
            stack,
            MediaClient(desk, colour=colour, tone=tone, appointment_id=key),
            call["ice_servers"],
        )
        await patient.wait_for_video(COLOURS["clinician"][0], within=30)
        await clinician.wait_for_video(COLOURS["patient"][0], within=30)
        start = time.time()
        await asyncio.sleep(seconds)
        windows["two"] = (start, time.time())
        peers = [patient, clinician]
        for role in ("interpreter", "caregiver"):
            guest = await add_guest(http, visit, staff.clinician.headers, role=role, name=role)
            socket = await stack.enter_async_context(
                open_socket(f"{server.ws_url}/ws/visits/{guest.token}")
            )
            await socket.expect("waiting", within=15)
            await desk.send({"type": "admit", "appointment_id": key, "participant_id": guest.id})
            admitted = await socket.expect("admitted", within=15)
            colour, tone = COLOURS[role]
            peers.append(
                await joined(
                    stack, MediaClient(socket, colour=colour, tone=tone), admitted["ice_servers"]
                )
            )
        # Everyone receives video again (each peer's last frame is someone's).
        counts = [p.received.video_frames for p in peers]
        await until(
            lambda: all(
                p.received.video_frames > c + 30 for p, c in zip(peers, counts, strict=True)
            ),
            60,
        )
        start = time.time()
        await asyncio.sleep(seconds)
        windows["four"] = (start, time.time())
        await desk.send({"type": "end", "appointment_id": key})
        with contextlib.suppress(AssertionError, TimeoutError):
            await patient_socket.expect("ended", within=10)
    return windows


def summary(lines: list[dict[str, Any]], windows: list[tuple[float, float]]) -> dict[str, Any]:
    def inside(line: dict[str, Any]) -> bool:
        return any(a <= line["t"] <= b for a, b in windows)

    readings = [x["ms"] for x in lines if x["kind"] == "reading" and inside(x)]
    given_up = sum(1 for x in lines if x["kind"] == "reading" and inside(x) and x["given_up"])
    lags = [x["ms"] for x in lines if x["kind"] == "lag" and inside(x)]
    doubts = sum(1 for x in lines if x["kind"] == "doubt" and inside(x))
    return {
        "readings": len(readings),
        "reading_ms": (statistics.median(readings), percentile(readings, 0.95), max(readings)),
        "given_up": given_up,
        "lag_ms": (statistics.median(lags), percentile(lags, 0.95), max(lags)),
        "over_750": sum(1 for x in readings if x > 750),
        "doubts": doubts,
    }


async def run(rounds: int, seconds: float, burn: int, folder: Path, backend: Backend) -> None:
    hooks.restrict_host_addresses(["127.0.0.1"])  # the peers' candidates: loopback only
    settings = Settings(environment="test", database_url=backend.url, secret_key=TEST_SECRET)  # type: ignore[arg-type]
    db = Database(create_engine(settings))
    staff = await make_staff(db, secret=TEST_SECRET.encode())
    out = folder / "consent_lag.jsonl"
    server = start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": backend.url,
            "TELEVISIT_SECRET_KEY": TEST_SECRET,
            "TELEVISIT_PUBLIC_URL": "http://127.0.0.1",
            "TELEVISIT_MEDIA_IPS": "127.0.0.1",
            "TELEVISIT_MEDIA_PEER_ALLOW": "127.0.0.0/8",
            "TELEVISIT_LOG_LEVEL": "WARNING",
            "CONSENT_LAG_OUT": str(out),
        },
        log_path=folder / "server.log",
        program=(str(ROOT / "bench" / "_consent_lag_server.py"),),
        timeout=120,  # the burners start first
    )
    windows: dict[str, list[tuple[float, float]]] = {"two": [], "four": []}
    try:
        for index in range(rounds):
            found = await one_round(server, db, staff, seconds)
            for side, window in found.items():
                windows[side].append(window)
            print(f"round {index + 1}: done", flush=True)
    finally:
        server.stop()
        await db.dispose()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    print(f"\n{backend.name}, {rounds} rounds of {seconds:.0f} s each side, {burn} burning")
    print(
        "| call | readings | reading ms (median / p95 / max) | over 0.75 s | given up "
        "| loop lag ms (median / p95 / max) | doubts |"
    )
    print("|---|---|---|---|---|---|---|")
    for side, people in (("two", 2), ("four", 4)):
        s = summary(lines, windows[side])
        r, lag = s["reading_ms"], s["lag_ms"]
        print(
            f"| {people} people | {s['readings']} | {r[0]:.1f} / {r[1]:.1f} / {r[2]:.1f} "
            f"| {s['over_750']} | {s['given_up']} | {lag[0]:.1f} / {lag[1]:.1f} / {lag[2]:.1f} "
            f"| {s['doubts']} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--burn", type=int, default=0, help="processes spinning meanwhile")
    args = parser.parse_args()
    print(
        f"bench/consent_lag.py, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"run {uuid.uuid4().hex[:6]} ({ROOT})"
    )
    folder = temp_folder()
    # Migrates with its own event loop: before ours.
    backend = postgres_backend() if args.postgres else sqlite_backend(folder)
    if backend is None:
        sys.exit(1)
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)
    ]
    try:
        asyncio.run(run(args.rounds, args.seconds, args.burn, folder, backend))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        if backend.cleanup is not None:
            backend.cleanup()


if __name__ == "__main__":
    main()
