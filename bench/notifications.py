"""Notifications (issue 13): 1,000 reminders through a real SMTP server (aiosmtpd on loopback).

For each setup, fresh `televisit serve` processes with mail configured; then 1,000 appointments
with an email and a reminder due now are written to the outbox in one transaction, and the
clock runs until every row is `sent`. Printed: the throughput, and that exactly 1,000 messages
arrived, each notification's Message-ID once.

  sqlite       one process
  postgresql   one process, then two processes (each with its worker) on one database

Run: python bench/notifications.py [--count 1000] [--backend sqlite|postgresql|both]
Two processes need a Redis (one process per database without it): the bench starts its own
`redis-server` on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

from _common import (
    SECRET,
    Backend,
    postgres_backend,
    seed,
    settings_for,
    sqlite_backend,
    temp_folder,
)
from sqlalchemy import func, insert, select

from app.db import Database, create_engine
from scheduling import visits
from scheduling.models import Appointment
from scheduling.notifications.models import Notification
from tests.live import LiveServer, free_port, start_server
from tests.outside import MailServer


def serve(url: str, log: Path, mail: MailServer, redis_url: str | None) -> LiveServer:
    env = {
        "TELEVISIT_ENVIRONMENT": "test",
        "TELEVISIT_DATABASE_URL": url,
        "TELEVISIT_SECRET_KEY": SECRET,
        "TELEVISIT_LOG_LEVEL": "WARNING",
        "TELEVISIT_SMTP_URL": mail.url,
        "TELEVISIT_MAIL_FROM": "Clinic <visits@clinic.example.org>",
    }
    if redis_url:
        env["TELEVISIT_REDIS_URL"] = redis_url
    return start_server(env, log_path=log)


async def queue_reminders(url: str, count: int) -> set[uuid.UUID]:
    """`count` booked appointments (20 minutes apart, from tomorrow) with a reminder due now."""
    seeded = await seed(url)
    db = Database(create_engine(settings_for(url)))
    key = visits.link_key(SECRET.encode())
    now = dt.datetime.now(dt.UTC)
    first = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
    appointments, reminders = [], []
    for n in range(count):
        salt = visits.new_salt()
        start = first + dt.timedelta(minutes=20 * n)
        appointment_id = uuid.uuid4()
        appointments.append(
            {
                "id": appointment_id,
                "clinician_id": seeded.clinician_id,
                "start_at": start,
                "end_at": start + dt.timedelta(minutes=20),
                "status": "booked",
                "patient_name": f"Bench Patient {n}",
                "patient_email": f"bench-{n}@example.org",
                "link_salt": salt,
                "link_hash": visits.token_hash(visits.token_for(key, salt)),
                "sequence": 0,
                "created_by_id": seeded.clinician_id,
                "created_at": now,
                "updated_at": now,
            }
        )
        reminders.append(
            {
                "id": uuid.uuid4(),
                "appointment_id": appointment_id,
                "kind": "reminder",
                "channel": "email",
                "hours": 24,
                "sequence": 0,
                "status": "queued",
                "due_at": now,
                "attempts": 0,
                "created_at": now,
            }
        )
    try:
        async with db.session(write=True) as session:
            await session.execute(insert(Appointment), appointments)
        async with db.session(write=True) as session:
            await session.execute(insert(Notification), reminders)
    finally:
        await db.dispose()
    return {row["id"] for row in reminders}


async def wait_sent(url: str, count: int) -> float:
    db = Database(create_engine(settings_for(url)))
    started = time.perf_counter()
    try:
        while True:
            async with db.session(write=False) as session:
                done = await session.scalar(
                    select(func.count())
                    .select_from(Notification)
                    .where(Notification.status.in_(("sent", "failed")))
                )
            if (done or 0) >= count:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
    finally:
        await db.dispose()


async def states(url: str) -> Counter[str]:
    db = Database(create_engine(settings_for(url)))
    try:
        async with db.session(write=False) as session:
            rows = await session.execute(
                select(Notification.status, func.count()).group_by(Notification.status)
            )
            return Counter({status: n for status, n in rows.all()})  # noqa: C416 (rows, not pairs)
    finally:
        await db.dispose()


class Redis:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def run(backend: Backend, processes: int, count: int, folder: Path) -> dict[str, object]:
    mail = MailServer().start()
    redis = Redis(folder) if processes > 1 else None
    servers: list[LiveServer] = []
    try:
        for n in range(processes):
            servers.append(
                serve(
                    backend.url,
                    folder / f"{backend.name}-{processes}-{n}.log",
                    mail,
                    redis and redis.url,
                )
            )
        ids = asyncio.run(queue_reminders(backend.url, count))
        elapsed = asyncio.run(wait_sent(backend.url, count))
        found = asyncio.run(states(backend.url))
        arrived = mail.inbox.message_ids()
        expected = {f"<{row_id}@127.0.0.1>" for row_id in ids}
        return {
            "backend": backend.name,
            "processes": processes,
            "seconds": elapsed,
            "per_second": count / elapsed,
            "sent": found["sent"],
            "failed": found["failed"],
            "arrived": sum(arrived.values()),
            "distinct": len(arrived),
            "twice": sum(1 for n in arrived.values() if n > 1),
            "exactly_ours": set(arrived) == expected,
        }
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()
        mail.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    folder = temp_folder()
    runs: list[dict[str, object]] = []
    if args.backend in ("sqlite", "both"):
        runs.append(run(sqlite_backend(folder), 1, args.count, folder))
    if args.backend in ("postgresql", "both"):
        for processes in (1, 2):
            backend = postgres_backend()
            if backend is None:
                break
            try:
                runs.append(run(backend, processes, args.count, folder))
            finally:
                backend.cleanup()
    print(f"{args.count} reminders, one SMTP server (aiosmtpd) on loopback")
    print(
        "backend     processes  seconds  per second  sent  failed  arrived  distinct  twice  exactly ours"
    )
    for r in runs:
        print(
            f"{r['backend']:<11} {r['processes']:>9}  {r['seconds']:7.2f}  {r['per_second']:10.1f}"
            f"  {r['sent']:>4}  {r['failed']:>6}  {r['arrived']:>7}  {r['distinct']:>8}  {r['twice']:>5}"
            f"  {r['exactly_ours']}"
        )
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
