"""A process dies with 5,000 waiting patients: what the process that survives goes through.

Two `televisit serve` processes share PostgreSQL and Redis. Process A holds the patients'
sockets; process B holds a console and a probe (one more waiting patient, pinging every 30 ms,
under the per-socket rate limit). A is killed (SIGKILL). Printed, side by side in one run:

  - how soon B's console shows A's patients as `reconnecting` (B sees A's heartbeat go stale,
    then takes its patients over);
  - the probe's round trip on B while nothing happens, while B takes the patients over, and
    while all of them reconnect to B (100 at a time, as fast as B lets them), as ratios of the
    quiet p99;
  - how long the patients take to be back in the waiting room, against their grace period.

Run: python bench/handover.py [--patients 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from _common import POSTGRES_ADMIN, percentile, postgres_backend, settings_for, temp_folder
from signals import checked_in, console, harness_gc_paused, seed, serve, until_type
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from signaling.hub import ORPHAN_CHECK_SECONDS

PROBE_EVERY = 0.03
QUIET_SECONDS = 5.0
REJOIN_AT_ONCE = 100


async def drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _message in ws:
            pass


async def check_in(base: str, tokens: list[str], held: list[ClientConnection]) -> int:
    """Every patient opens their link and waits; the number that failed."""
    gate = asyncio.Semaphore(REJOIN_AT_ONCE)
    failed = 0

    async def one(token: str) -> None:
        nonlocal failed
        async with gate:
            try:
                ws = await checked_in(base, token)
            except (RuntimeError, TimeoutError, OSError, ConnectionClosed):
                failed += 1
                return
            held.append(ws)
            asyncio.get_running_loop().create_task(drain(ws))

    await asyncio.gather(*(one(token) for token in tokens))
    return failed


def probe_process(base: str, token: str, stop: Any, results: Any) -> None:
    """A waiting patient on B: a ping every PROBE_EVERY seconds; (sent, round trip ms) each."""

    async def run() -> list[tuple[float, float]]:
        rtts: list[tuple[float, float]] = []
        probe = await checked_in(base, token)
        while not stop.is_set():
            sent = time.monotonic()
            await probe.send('{"type":"ping"}')
            await until_type(probe, "pong")
            rtts.append((sent, (time.monotonic() - sent) * 1000))
            await asyncio.sleep(PROBE_EVERY)
        await probe.close()
        return rtts

    gc.disable()
    results.put(asyncio.run(run()))


async def measure(a: Any, b: Any, data: dict[str, Any], patients: int) -> dict[str, Any]:
    per_clinician = patients // len(data["clinicians"])
    tokens = [t for rows in data["links"].values() for _a, t in rows[:per_clinician]]
    held: list[ClientConnection] = []
    failed_first = await check_in(a.ws_url, tokens, held)

    clinician_id, clinician = data["clinicians"][0]
    desk = await console(b.ws_url, clinician)
    marks: dict[str, float] = {}

    async def watch_console() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in desk:
                message = json.loads(raw)
                if message.get("type") == "queue" and any(
                    item.get("status") == "reconnecting" for item in message["items"]
                ):
                    marks.setdefault("reconnecting", time.monotonic())

    watcher = asyncio.create_task(watch_console())
    # The probe runs in a process of its own: this one is busy with 5,000 sockets, and its
    # delays would count as B's.
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    results: Any = context.Queue()
    pinger = context.Process(
        target=probe_process,
        args=(b.ws_url, data["links"][clinician_id][-1][1], stop, results),
    )
    pinger.start()
    await asyncio.sleep(QUIET_SECONDS)
    marks["killed"] = time.monotonic()
    a.process.kill()
    while "reconnecting" not in marks:
        await asyncio.sleep(0.05)
        if time.monotonic() - marks["killed"] > 60:
            raise RuntimeError("B never showed A's patients as reconnecting")
    await asyncio.sleep(2)
    marks["rejoin"] = time.monotonic()
    back: list[ClientConnection] = []
    failed_rejoin = await check_in(b.ws_url, tokens, back)
    marks["rejoined"] = time.monotonic()
    stop.set()
    rtts: list[tuple[float, float]] = await asyncio.to_thread(results.get, True, 30)
    pinger.join(10)
    watcher.cancel()
    for ws in [*back, desk]:
        await ws.close()

    def phase(start: float, end: float) -> list[float]:
        return [rtt for sent, rtt in rtts if start <= sent < end]

    return {
        "held": len(held),
        "failed_first": failed_first,
        "failed_rejoin": failed_rejoin,
        "back": len(back),
        "quiet": phase(0, marks["killed"]),
        "takeover": phase(marks["killed"], marks["rejoin"]),
        "rejoin": phase(marks["rejoin"], marks["rejoined"]),
        "seen_after": marks["reconnecting"] - marks["killed"],
        "rejoin_seconds": marks["rejoined"] - marks["rejoin"],
        "rejoin_ends_after_kill": marks["rejoined"] - marks["killed"],
    }


def summary(name: str, values: list[float], quiet_p99: float) -> str:
    p99 = percentile(values, 0.99)
    return (
        f"| probe round trip on B, {name} | p50 / p99 / max of {len(values)}: "
        f"{statistics.median(values):.2f} / {p99:.2f} / {max(values):.1f} ms "
        f"| **{p99 / quiet_p99:.1f}x the quiet p99** |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=5000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    backend = postgres_backend()
    if backend is None:
        raise SystemExit(f"PostgreSQL at {POSTGRES_ADMIN} is not answering")
    folder = temp_folder()
    redis_url = os.environ.get("TELEVISIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    data = asyncio.run(seed(backend.url, 50, args.patients // 50 + 1))
    servers = [serve(backend.url, folder / "a.log", REDIS_URL=redis_url)]
    try:
        servers.append(serve(backend.url, folder / "b.log", REDIS_URL=redis_url))
        with harness_gc_paused():
            result = asyncio.run(measure(servers[0], servers[1], data, args.patients))
    finally:
        for server in servers:
            server.stop()
        if backend.cleanup:
            backend.cleanup()
    quiet_p99 = percentile(result["quiet"], 0.99)
    grace = settings_for(backend.url).reconnect_grace_seconds
    print("| figure | measured | result |")
    print("|---|---|---|")
    print(
        f"| patients on A, checked in | {result['held']} waiting, "
        f"{result['failed_first']} failed | |"
    )
    print(
        f"| A killed: B's console shows its patients reconnecting | after "
        f"{result['seen_after']:.1f} s (liveness {settings_for(backend.url).liveness_seconds:.0f} s, "
        f"orphan check every {ORPHAN_CHECK_SECONDS:.0f} s) | |"
    )
    print(summary("quiet, before the kill", result["quiet"], quiet_p99))
    print(summary("while B takes A's patients over", result["takeover"], quiet_p99))
    print(summary("while the patients reconnect to B", result["rejoin"], quiet_p99))
    print(
        f"| the patients back in B's waiting room, {REJOIN_AT_ONCE} connecting at a time "
        f"| {result['back']} in {result['rejoin_seconds']:.1f} s "
        f"({result['back'] / result['rejoin_seconds']:.0f} a second), {result['failed_rejoin']} "
        f"failed; the last {result['rejoin_ends_after_kill']:.1f} s after the kill "
        f"| grace period {grace:.0f} s from the takeover |"
    )


if __name__ == "__main__":
    main()
