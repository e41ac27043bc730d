"""Booking figures of issue 2, as ratios against a trivial authenticated GET (`/api/v1/me`).

  1. booking throughput, distinct slots, 64 connections      (target >= 0.10 PG, >= 0.06 SQLite)
  2. 200 concurrent bookings of ONE slot vs of 200 distinct slots, time until all answered (<= 2x)
  3. slots of a clinician with 5-minute slots over 62 days and 1,000 bookings: p50 latency
     against the trivial GET's p50, one request at a time                                 (<= 10x)

Run: python bench/booking.py [--backend sqlite|postgresql|both] [--requests N]
Each backend gets a fresh database and its own `televisit serve` process on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections import Counter

import httpx
from _common import (
    ALL_DAY,
    OFFICE_HOURS,
    Backend,
    Seeded,
    load,
    postgres_backend,
    request_bytes,
    rfc3339,
    seed,
    serve,
    sqlite_backend,
    temp_folder,
    utc_slots,
    warm,
)

CONNECTIONS = 64


def _booking(seeded: Seeded, start: dt.datetime, port: int, n: int) -> bytes:
    body = {
        "clinician_id": str(seeded.clinician_id),
        "start": rfc3339(start),
        "patient": {"name": f"Bench Patient {n}", "email": f"p{n}@example.org"},
    }
    return request_bytes("POST", "/api/v1/appointments", port, seeded.scheduler_token, body)


def _day(offset_days: int) -> dt.datetime:
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + dt.timedelta(days=offset_days)


async def throughput(
    port: int, seeded: Seeded, total: int
) -> tuple[float, float, float, Counter[int]]:
    """Rates of the trivial GET, of /healthz (no auth, no database) and of bookings."""
    me = request_bytes("GET", "/api/v1/me", port, seeded.scheduler_token)
    health = request_bytes("GET", "/healthz", port, seeded.scheduler_token)
    trivial = await load(port, [me] * total, CONNECTIONS)
    bare = await load(port, [health] * total, CONNECTIONS)
    starts = utc_slots(_day(3), total, 5)
    bookings = await load(
        port, [_booking(seeded, s, port, i) for i, s in enumerate(starts)], CONNECTIONS
    )
    return trivial.rate, bare.rate, bookings.rate, Counter(bookings.statuses)


async def one_slot_storm(port: int, seeded: Seeded) -> tuple[float, float, Counter[int]]:
    same = [_booking(seeded, _day(40), port, i) for i in range(200)]
    distinct = [_booking(seeded, s, port, i) for i, s in enumerate(utc_slots(_day(41), 200, 5))]
    storm = await load(port, same, 200)
    spread = await load(port, distinct, 200)
    return storm.elapsed, spread.elapsed, Counter(storm.statuses)


async def slot_listing(port: int, seeded: Seeded, rounds: int) -> tuple[float, float, int]:
    """p50 of the slot listing and of the trivial GET, one request at a time, interleaved."""
    begin = _day(1)
    path = (
        f"/api/v1/clinicians/{seeded.clinician_id}/slots"
        f"?start={rfc3339(begin)}&end={rfc3339(begin + dt.timedelta(days=62))}"
    )
    slots = request_bytes("GET", path, port, seeded.scheduler_token)
    me = request_bytes("GET", "/api/v1/me", port, seeded.scheduler_token)
    trivial_runs, slot_runs = [], []
    for _ in range(rounds):  # interleaved, so drift hits both alike
        trivial_runs.append(await load(port, [me] * 20, 1))
        slot_runs.append(await load(port, [slots] * 5, 1))
    assert all(status == 200 for r in slot_runs for status in r.statuses)
    trivial_p50 = sorted(x for r in trivial_runs for x in r.latencies)
    slot_p50 = sorted(x for r in slot_runs for x in r.latencies)
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {seeded.scheduler_token}"},
        )
    return (
        trivial_p50[len(trivial_p50) // 2],
        slot_p50[len(slot_p50) // 2],
        len(response.json()["slots"]),
    )


async def book_spread(port: int, seeded: Seeded, count: int) -> None:
    """`count` bookings spread evenly over the offered slots of the next 62 days."""
    begin = _day(1)
    path = (
        f"/api/v1/clinicians/{seeded.clinician_id}/slots"
        f"?start={rfc3339(begin)}&end={rfc3339(begin + dt.timedelta(days=62))}"
    )
    async with httpx.AsyncClient() as http:
        response = await http.get(
            f"http://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {seeded.scheduler_token}"},
        )
    offered = [dt.datetime.fromisoformat(s["start"]) for s in response.json()["slots"]]
    starts = [offered[i * len(offered) // count] for i in range(count)]
    result = await load(port, [_booking(seeded, s, port, i) for i, s in enumerate(starts)], 16)
    assert Counter(result.statuses) == Counter({201: count}), Counter(result.statuses)


def run(backend: Backend, total: int) -> list[str]:
    folder = temp_folder()
    seeded = asyncio.run(seed(backend.url))
    server = serve(backend.url, folder / "server.log")
    lines = []
    try:
        warm(server.url, "/api/v1/me", seeded.scheduler_token)
        trivial_rate, bare_rate, booking_rate, codes = asyncio.run(
            throughput(server.port, seeded, total)
        )
        assert codes == Counter({201: total}), codes
        lines.append(
            f"| {backend.name} | booking throughput, distinct slots, {CONNECTIONS} connections "
            f"| {booking_rate:.0f} req/s vs GET /api/v1/me {trivial_rate:.0f} req/s "
            f"| **{booking_rate / trivial_rate:.3f}x** |"
        )
        lines.append(
            f"| {backend.name} | (context) booking vs GET /healthz, no auth and no database "
            f"| {booking_rate:.0f} req/s vs {bare_rate:.0f} req/s "
            f"| {booking_rate / bare_rate:.3f}x |"
        )
        storm, spread, storm_codes = asyncio.run(one_slot_storm(server.port, seeded))
        assert storm_codes == Counter({201: 1, 409: 199}), storm_codes
        lines.append(
            f"| {backend.name} | 200 concurrent bookings: one slot vs 200 distinct slots "
            f"| {storm * 1000:.0f} ms vs {spread * 1000:.0f} ms | **{storm / spread:.2f}x** |"
        )
        for label, weekly in (("Mon-Fri 08-18", OFFICE_HOURS), ("24/7", ALL_DAY)):
            fresh = asyncio.run(seed(backend.url, weekly=weekly))
            asyncio.run(book_spread(server.port, fresh, 1000))
            trivial_p50, slots_p50, count = asyncio.run(slot_listing(server.port, fresh, 20))
            lines.append(
                f"| {backend.name} | slots over 62 days, 5-min slots ({label}, {count} free), "
                f"1,000 bookings: p50 | {slots_p50 * 1000:.1f} ms vs GET "
                f"{trivial_p50 * 1000:.2f} ms | **{slots_p50 / trivial_p50:.1f}x** |"
            )
    finally:
        server.stop()
        if backend.cleanup:
            backend.cleanup()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    backends: list[Backend] = []
    if args.backend in ("sqlite", "both"):
        backends.append(sqlite_backend(temp_folder()))
    if args.backend in ("postgresql", "both"):
        pg = postgres_backend()
        if pg is not None:
            backends.append(pg)
    print("| backend | figure | measured | ratio |")
    print("|---|---|---|---|")
    for backend in backends:
        for line in run(backend, args.requests):
            print(line, flush=True)


if __name__ == "__main__":
    main()
