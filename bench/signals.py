"""Signaling figures of issue 3, measured side by side in one run.

  1. 5,000 waiting patients' sockets held by one process: memory per socket (<= 64 KiB), no errors
  2. a message relayed between a call's participants (`{"type":"message"}`): server CPU per
     message against the CPU of a trivial authenticated GET (<= 0.5x), each arriving both ways
     (evenly paced at 1,000/s; back to back, 16 at a time); one-way p99 at 1,000 messages/s in
     one process (<= 2 ms) and across two processes through Redis (<= 3x that), the two
     measured in turns, several rounds each
  3. a patient's arrival reaching the clinician's console, p99 with 500 patients waiting across
     50 clinicians (<= 50 ms)

Run: python bench/signals.py [--backend sqlite|postgresql] [--sockets 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import (
    POSTGRES_ADMIN,
    SECRET,
    Backend,
    cpu_seconds,
    load,
    percentile,
    postgres_backend,
    request_bytes,
    rss_bytes,
    settings_for,
    sqlite_backend,
    temp_folder,
    warm,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.db import Database, create_engine
from scheduling import consent, visits
from scheduling.models import Appointment, Status
from tests.factories import make_user
from tests.live import LiveServer, start_server

LINK_KEY = visits.link_key(SECRET.encode())


def serve(url: str, log: Path, **extra: str) -> LiveServer:
    return start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": url,
            "TELEVISIT_SECRET_KEY": SECRET,
            "TELEVISIT_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
            "TELEVISIT_MEDIA_IPS": "127.0.0.1",
            "TELEVISIT_DB_POOL_SIZE": "30",
            **{f"TELEVISIT_{name}": value for name, value in extra.items()},
        },
        log_path=log,
        timeout=60,
    )


# Seeding -------------------------------------------------------------------------------------


async def seed(url: str, clinicians: int, per_clinician: int) -> dict[str, Any]:
    """Clinicians with booked, consented visits; their tokens and the visits' links."""
    db = Database(create_engine(settings_for(url)))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    scheduler = await make_user(db, secret=SECRET.encode(), role="scheduler")
    people = [
        await make_user(db, secret=SECRET.encode(), role="clinician") for _ in range(clinicians)
    ]
    links: dict[uuid.UUID, list[tuple[uuid.UUID, str]]] = {}
    async with db.session(write=True) as session:
        for person in people:
            rows = []
            for i in range(per_clinician):
                salt = visits.new_salt()
                token = visits.token_for(LINK_KEY, salt)
                start = now + dt.timedelta(minutes=20 * i)
                appointment_id = uuid.uuid4()
                session.add(
                    Appointment(
                        id=appointment_id,
                        clinician_id=person.id,
                        start_at=start,
                        end_at=start + dt.timedelta(minutes=20),
                        status=Status.BOOKED.value,
                        patient_name=f"Patient {i}",
                        link_salt=salt,
                        link_hash=visits.token_hash(token),
                        sequence=0,
                        created_by_id=scheduler.id,
                        created_at=now,
                        updated_at=now,
                    )
                )
                rows.append((appointment_id, token))
            links[person.id] = rows
        await session.flush()
        text = await consent.current_text(session)
        for rows in links.values():
            for appointment_id, _token in rows:
                await consent.record(
                    session,
                    appointment_id=appointment_id,
                    participant=consent.PATIENT,
                    decision="granted",
                    scopes=["video_visit"],
                    version=text.version,
                    ip=None,
                    user_agent=None,
                    now=now,
                )
    await db.dispose()
    return {
        "scheduler": scheduler.token,
        "clinicians": [(p.id, p.token) for p in people],
        "links": links,
    }


async def open_ws(url: str) -> ClientConnection:
    return await connect(url, proxy=None, open_timeout=60, ping_interval=None, max_size=2**20)


async def until_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if message.get("type") == kind:
            return message
        if message.get("type") == "error":
            raise RuntimeError(message)


async def checked_in(base: str, token: str) -> ClientConnection:
    """A patient opens their link and is in the waiting room: their socket."""
    ws = await open_ws(f"{base}/ws/visits/{token}")
    await asyncio.wait_for(until_type(ws, "waiting"), 60)
    return ws


# 1. Sockets ------------------------------------------------------------------------------------


async def hold_sockets(server: LiveServer, data: dict[str, Any], count: int) -> dict[str, Any]:
    """Open `count` patients' sockets and hold them past a protocol ping, each reading its
    messages as a patient's page does (a socket that stops reading stops answering pings and is
    rightly closed by the server)."""
    tokens = [t for rows in data["links"].values() for _a, t in rows][:count]
    before = rss_bytes(server.process.pid)
    sockets: list[ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    errors = 0
    received = 0
    gate = asyncio.Semaphore(100)

    async def read(ws: ClientConnection) -> None:
        nonlocal received
        with contextlib.suppress(ConnectionClosed):
            async for _message in ws:
                received += 1

    async def one(token: str) -> None:
        nonlocal errors
        async with gate:
            try:
                ws = await checked_in(server.ws_url, token)
            except (RuntimeError, TimeoutError, OSError) as exc:
                errors += 1
                print(f"socket failed: {type(exc).__name__}", file=sys.stderr, flush=True)
                return
            sockets.append(ws)
            readers.append(asyncio.create_task(read(ws)))
            if len(sockets) % 500 == 0:
                print(f"{len(sockets)} sockets waiting", file=sys.stderr, flush=True)

    started = time.monotonic()
    await asyncio.gather(*(one(t) for t in tokens))
    opened = time.monotonic() - started
    # Held past the server's protocol ping (every 15 s), with queue updates settling meanwhile.
    await asyncio.sleep(HOLD_SECONDS)
    after = rss_bytes(server.process.pid)
    alive = sum(1 for ws in sockets if ws.state.name == "OPEN")
    closing = asyncio.Semaphore(200)

    async def close(ws: ClientConnection) -> None:
        async with closing:
            await ws.close()

    await asyncio.gather(*(close(ws) for ws in sockets))
    await asyncio.gather(*readers)
    return {
        "count": len(tokens),
        "alive": alive,
        "errors": errors,
        "received": received,
        "per_socket": (after - before) / max(1, len(tokens)),
        "rss_before": before,
        "rss_after": after,
        "seconds": opened,
    }


HOLD_SECONDS = 20.0


# 2. Relayed messages ---------------------------------------------------------------------------


async def console(base: str, clinician: str) -> ClientConnection:
    desk = await open_ws(f"{base}/ws/clinic")
    await desk.send(json.dumps({"type": "auth", "token": clinician}))
    await until_type(desk, "queue")
    return desk


async def admitted(
    desk: ClientConnection, patient_base: str, token: str, appointment_id: uuid.UUID
) -> ClientConnection:
    """The patient checks in and the console admits them; the patient's socket."""
    patient = await checked_in(patient_base, token)
    await desk.send(json.dumps({"type": "admit", "appointment_id": str(appointment_id)}))
    await until_type(patient, "admitted")
    # A console that holds several calls hears of each.
    while (await until_type(desk, "call"))["appointment_id"] != str(appointment_id):
        pass
    return patient


async def in_call(
    patient_base: str, clinic_base: str, token: str, appointment_id: uuid.UUID, clinician: str
) -> tuple[ClientConnection, ClientConnection]:
    desk = await console(clinic_base, clinician)
    return await admitted(desk, patient_base, token, appointment_id), desk


async def relay_messages(
    pairs: list[tuple[ClientConnection, ClientConnection]], *, rate: int, seconds: float
) -> list[float]:
    """Each patient sends to their clinician; `rate` messages a second in all, spread evenly.

    One-way delay of each message, on this process's one clock (ms). Each socket stays far
    under the server's per-socket rate limit: the load is many calls, as in a clinic.
    """
    per_pair = rate / len(pairs)
    total = int(per_pair * seconds)
    delays: list[float] = []

    async def receive(desk: ClientConnection) -> None:
        got = 0
        while got < total:
            message = json.loads(await desk.recv())
            if message.get("type") == "message":
                delays.append((time.perf_counter() - message["data"]["t"]) * 1000)
                got += 1

    async def send(patient: ClientConnection, offset: float) -> None:
        start = time.perf_counter() + offset
        for i in range(total):
            wait = start + i / per_pair - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            await patient.send(json.dumps({"type": "message", "data": {"t": time.perf_counter()}}))

    readers = [asyncio.create_task(receive(desk)) for _patient, desk in pairs]
    await asyncio.gather(*(send(patient, k / rate) for k, (patient, _desk) in enumerate(pairs)))
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    return delays


async def message_figures(
    server: LiveServer, other: LiveServer | None, data: dict[str, Any], row: int
) -> dict[str, Any]:
    """Every clinician in a call with their patient (patients on `server`, consoles on `other`)."""
    clinic_server = other or server
    pairs = []
    calls = []
    for clinician_id, clinician in data["clinicians"]:
        appointment_id, token = data["links"][clinician_id][row]
        pairs.append(
            await in_call(server.ws_url, clinic_server.ws_url, token, appointment_id, clinician)
        )
        calls.append(appointment_id)
    # Warm-up at the measured rate: connection pools (Redis's too) grow to what it needs.
    await relay_messages(pairs, rate=RATE, seconds=2)
    pids = {server.process.pid, clinic_server.process.pid}
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    delays = await relay_messages(pairs, rate=RATE, seconds=SECONDS)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    for (patient, desk), appointment_id in zip(pairs, calls, strict=True):
        await end_call(desk, appointment_id)
        await patient.close()
        await desk.close()
    return {"delays": delays, "cpu_per_message": cpu / len(delays)}


async def end_call(desk: ClientConnection, appointment_id: uuid.UUID) -> None:
    """The clinician ends the call, as after a consult (nothing is left for the sweeper)."""
    await desk.send(json.dumps({"type": "end", "appointment_id": str(appointment_id)}))
    while True:
        message = await until_type(desk, "ended")
        if message.get("appointment_id") == str(appointment_id):
            return


async def back_to_back(
    server: LiveServer, data: dict[str, Any], rows: range, *, total: int, in_flight: int = 16
) -> float:
    """Server CPU per relayed message, sent like `trivial_get_cpu`'s GETs: `in_flight` at a
    time, each sent as soon as one arrives.

    A patient may send 40 messages a second (the per-socket limit; a burst of 80), so the load
    goes round the calls of `rows` (one console per clinician, holding all of its calls), each
    call with at most one message on the way and no more than ~16 in a round.
    """
    calls: list[tuple[ClientConnection, asyncio.Queue[None]]] = []
    desks: list[tuple[ClientConnection, list[uuid.UUID]]] = []
    readers: list[asyncio.Task[None]] = []
    patients: list[ClientConnection] = []

    async def open_calls(clinician_id: uuid.UUID, clinician: str) -> None:
        desk = await console(server.ws_url, clinician)
        arrivals: dict[str, asyncio.Queue[None]] = {}
        held = []
        for row in rows:
            appointment_id, token = data["links"][clinician_id][row]
            patient = await admitted(desk, server.ws_url, token, appointment_id)
            arrivals[str(appointment_id)] = asyncio.Queue()
            calls.append((patient, arrivals[str(appointment_id)]))
            patients.append(patient)
            held.append(appointment_id)
        desks.append((desk, held))

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in desk:
                    message = json.loads(raw)
                    if message.get("type") == "message":
                        arrivals[message["appointment_id"]].put_nowait(None)

        readers.append(asyncio.create_task(read()))

    await asyncio.gather(*(open_calls(c, t) for c, t in data["clinicians"]))
    per_worker = total // in_flight

    async def worker(k: int) -> None:
        mine = calls[k::in_flight]
        for i in range(per_worker):
            patient, arrived = mine[i % len(mine)]
            await patient.send(json.dumps({"type": "message", "data": {"t": i}}))
            await asyncio.wait_for(arrived.get(), 10)

    await asyncio.gather(*(worker(k) for k in range(in_flight)))  # warm-up round
    before = cpu_seconds(server.process.pid)
    await asyncio.gather(*(worker(k) for k in range(in_flight)))
    cpu = cpu_seconds(server.process.pid) - before
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    for desk, held in desks:
        for appointment_id in held:
            await end_call(desk, appointment_id)
    for ws in [*patients, *(desk for desk, _held in desks)]:
        await ws.close()
    return cpu / (per_worker * in_flight)


RATE, SECONDS = 1000, 5.0
# One process and two processes measured in turns, this many rounds each.
ROUNDS = 3


async def trivial_get_cpu(server: LiveServer, token: str, total: int = 4000) -> float:
    """Server CPU per GET /api/v1/me, back to back on 16 keep-alive connections."""
    me = request_bytes("GET", "/api/v1/me", server.port, token)
    before = cpu_seconds(server.process.pid)
    await load(server.port, [me] * total, 16)
    return (cpu_seconds(server.process.pid) - before) / total


async def paced_get_cpu(server: LiveServer, token: str, *, rate: int, seconds: float) -> float:
    """Server CPU per GET /api/v1/me arriving like the messages: 50 connections, evenly paced."""
    me = request_bytes("GET", "/api/v1/me", server.port, token)
    streams = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(50)]
    per = rate / len(streams)
    count = int(per * seconds)

    async def one(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, offset: float
    ) -> None:
        start = time.perf_counter() + offset
        for i in range(count):
            wait = start + i / per - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(me)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)

    before = cpu_seconds(server.process.pid)
    await asyncio.gather(*(one(r, w, k / rate) for k, (r, w) in enumerate(streams)))
    cpu = cpu_seconds(server.process.pid) - before
    for _reader, writer in streams:
        writer.close()
    return cpu / (count * len(streams))


# 3. Queue updates ------------------------------------------------------------------------------


async def arrival_latency(server: LiveServer, data: dict[str, Any], arrivals: int) -> list[float]:
    consoles: dict[uuid.UUID, ClientConnection] = {}
    waiting: list[ClientConnection] = []
    newcomers: list[tuple[uuid.UUID, uuid.UUID, str]] = []
    for clinician_id, token in data["clinicians"]:
        desk = await open_ws(f"{server.ws_url}/ws/clinic")
        await desk.send(json.dumps({"type": "auth", "token": token}))
        await until_type(desk, "queue")
        consoles[clinician_id] = desk
        rows = data["links"][clinician_id]
        for _appointment_id, link in rows[:10]:
            ws = await checked_in(server.ws_url, link)
            waiting.append(ws)
        newcomers += [(clinician_id, a, t) for a, t in rows[10:12]]
    await asyncio.sleep(2)
    # Drain what the consoles received while the room filled.
    for desk in consoles.values():
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(desk.recv(), 0.01)
    latencies: list[float] = []
    for clinician_id, appointment_id, link in newcomers[:arrivals]:
        desk = consoles[clinician_id]
        started = time.perf_counter()
        ws = await open_ws(f"{server.ws_url}/ws/visits/{link}")
        while True:
            message = json.loads(await asyncio.wait_for(desk.recv(), 10))
            if message.get("type") == "queue" and any(
                item["appointment_id"] == str(appointment_id) for item in message["items"]
            ):
                latencies.append((time.perf_counter() - started) * 1000)
                break
        waiting.append(ws)
        await asyncio.sleep(0.05)
    for ws in [*waiting, *consoles.values()]:
        await ws.close()
    return latencies


async def post_cost(redis_url: str, count: int = 20000) -> tuple[float, float]:
    """CPU of this process per message sent through the Redis broker: `publish` (redis-py's
    PUBLISH, a round trip) vs `post`."""
    from redis.asyncio import Redis

    from signaling.broker import RedisBroker

    redis = Redis.from_url(redis_url)
    broker = RedisBroker(redis)
    message = {"send": {"type": "message", "from": "patient", "data": {"t": 1.0}}}
    costs: dict[str, list[float]] = {"publish": [], "post": []}
    for _round in range(2):
        for kind in costs:
            send = broker.post if kind == "post" else broker.publish
            started = cpu_seconds(os.getpid())
            for _ in range(count):
                await send("bench", message)
            costs[kind].append((cpu_seconds(os.getpid()) - started) / count)
    await broker.stop()
    await redis.aclose()
    return min(costs["publish"]), min(costs["post"])


# Main ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def harness_gc_paused() -> Iterator[None]:
    """No garbage collection in this (measuring) process while it times something.

    A full collection here stopped its event loop for 70-90 ms, which showed up as a server
    delay; the server's own collections are left alone and so are measured.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run(backend: Backend, timing: Backend, pair: Backend, sockets: int) -> list[str]:
    folder = temp_folder()
    lines: list[str] = []
    per_clinician = max(12, sockets // 50 + 2)
    data = asyncio.run(seed(backend.url, 50, per_clinician))
    server = serve(backend.url, folder / "one.log")
    try:
        warm(server.url, "/api/v1/me", data["scheduler"])
        held = asyncio.run(hold_sockets(server, data, sockets))
        lines.append(
            f"| {backend.name} | {held['count']} waiting patients' sockets in one process "
            f"| {held['alive']} open after {HOLD_SECONDS:.0f} s, {held['errors']} errors, "
            f"{held['received']} updates read, RSS {held['rss_before'] / 2**20:.0f}"
            f" -> {held['rss_after'] / 2**20:.0f} MiB, opened in {held['seconds']:.0f} s "
            f"| **{held['per_socket'] / 1024:.1f} KiB per socket** |"
        )
    finally:
        server.stop()
        if backend.cleanup:
            backend.cleanup()
    # The timing figures start afresh: fresh processes and a fresh database. (The 5,000
    # patients checked in above would be left to a process that is gone: a new one adopting
    # them mid-measurement would be measured too.)
    data = asyncio.run(seed(timing.url, 50, 25))
    # The two processes share a database of their own: a process without Redis takes every
    # other process for gone, and would adopt their patients.
    pair_data = asyncio.run(seed(pair.url, 50, 12 + ROUNDS))
    redis_url = os.environ.get("TELEVISIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    servers = [serve(timing.url, folder / "single.log")]
    try:
        for name in ("a", "b"):
            servers.append(serve(pair.url, folder / f"{name}.log", REDIS_URL=redis_url))
        server, a, b = servers
        warm(server.url, "/api/v1/me", data["scheduler"])
        get_cpu = asyncio.run(trivial_get_cpu(server, data["scheduler"]))
        paced_cpu = asyncio.run(
            paced_get_cpu(server, data["scheduler"], rate=RATE, seconds=SECONDS)
        )
        # One process and two take turns, so what else this shared machine runs meanwhile
        # falls on both sides of the ratio alike.
        ones: list[dict[str, Any]] = []
        twos: list[dict[str, Any]] = []
        with harness_gc_paused():
            for k in range(ROUNDS):
                ones.append(asyncio.run(message_figures(server, None, data, 12 + k)))
                twos.append(asyncio.run(message_figures(a, b, pair_data, 12 + k)))
        a.stop()
        b.stop()
        one_delays = [d for figure in ones for d in figure["delays"]]
        two_delays = [d for figure in twos for d in figure["delays"]]
        one_cpu = statistics.mean(figure["cpu_per_message"] for figure in ones)
        two_cpu = statistics.mean(figure["cpu_per_message"] for figure in twos)
        p99_one = percentile(one_delays, 0.99)
        p99_two = percentile(two_delays, 0.99)
        lines.append(
            f"| {timing.name} | relayed message at {RATE}/s over 50 calls, server CPU, vs the "
            f"trivial GET arriving the same way | {one_cpu * 1e6:.0f} us vs "
            f"{paced_cpu * 1e6:.0f} us | **{one_cpu / paced_cpu:.2f}x** |"
        )
        lines.append(
            f"| {timing.name} | (context, unlike loads) the paced message vs the GET back to back"
            f" | {one_cpu * 1e6:.0f} us vs {get_cpu * 1e6:.0f} us | {one_cpu / get_cpu:.2f}x |"
        )
        lines.append(
            f"| {timing.name} | one-way delay at {RATE}/s, one process: p50 / p99 of "
            f"{len(one_delays)} ({ROUNDS} rounds of {SECONDS:.0f} s; the rounds' p99 "
            f"{rounds_p99(ones)} ms) | {statistics.median(one_delays):.2f} / {p99_one:.2f} ms "
            f"| **p99 {p99_one:.2f} ms** |"
        )
        lines.append(
            f"| {timing.name} | one-way delay at {RATE}/s, two processes via Redis, in turns with"
            f" the one-process rounds: p50 / p99 of {len(two_delays)} (the rounds' p99 "
            f"{rounds_p99(twos)} ms); server CPU {two_cpu * 1e6:.0f} us a message (both "
            f"processes; one process: {one_cpu * 1e6:.0f} us) "
            f"| {statistics.median(two_delays):.2f} / {p99_two:.2f} ms "
            f"| **{p99_two / p99_one:.2f}x the one-process p99** |"
        )
        with harness_gc_paused():
            latencies = asyncio.run(arrival_latency(server, data, 100))
            streamed = asyncio.run(back_to_back(server, data, range(15, 25), total=8000))
        lines.append(
            f"| {timing.name} | relayed message back to back, 16 on the way (over 500 calls), "
            f"server CPU, vs the GET back to back on 16 connections "
            f"| {streamed * 1e6:.0f} us vs {get_cpu * 1e6:.0f} us "
            f"| **{streamed / get_cpu:.2f}x** |"
        )
        lines.append(
            f"| {timing.name} | arrival to console, 500 waiting / 50 clinicians: p50 / p99 "
            f"| {statistics.median(latencies):.1f} / {percentile(latencies, 0.99):.1f} ms "
            f"({len(latencies)} arrivals) | **p99 {percentile(latencies, 0.99):.1f} ms** |"
        )
        publish_cpu, post_cpu = asyncio.run(post_cost(redis_url))
        lines.append(
            f"| {timing.name} | (context) CPU per message sent to Redis, in the sending process:"
            f" redis-py's PUBLISH vs the broker's post, back to back "
            f"| {publish_cpu * 1e6:.0f} us vs {post_cpu * 1e6:.0f} us "
            f"| {publish_cpu / post_cpu:.1f}x less |"
        )
    finally:
        for process in servers:
            process.stop()
        for used in (timing, pair):
            if used.cleanup:
                used.cleanup()
    return lines


def rounds_p99(figures: list[dict[str, Any]]) -> str:
    return " / ".join(f"{percentile(figure['delays'], 0.99):.2f}" for figure in figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--sockets", type=int, default=5000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    backends = [
        postgres_backend() if args.backend == "postgresql" else sqlite_backend(temp_folder())
        for _ in range(3)
    ]
    holding, timing, pair = backends
    if holding is None or timing is None or pair is None:
        raise SystemExit(f"PostgreSQL at {POSTGRES_ADMIN} is not answering")
    print("| backend | figure | measured | result |")
    print("|---|---|---|---|")
    for line in run(holding, timing, pair, args.sockets):
        print(line, flush=True)


if __name__ == "__main__":
    main()
