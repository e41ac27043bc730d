"""What staff sessions cost a request: `python bench/sessions.py [--rounds 5] [--requests 200]`.

Through the real ASGI app (httpx's ASGITransport, the app's lifespan run), side by side in one
run, one request at a time, on SQLite and on PostgreSQL (when it answers):

- a trivial GET (`/healthz`: no authentication, no database);
- an authenticated GET (`/api/v1/me`) with the session check as served: the session's standing
  cached for 5 s per process (app.auth.principal), so most requests read nothing;
- the same with the cache off (every request reads the session joined to its user by primary
  key): what the check costs when it is not cached;
- `POST /api/v1/auth/refresh`: spending a refresh token and issuing the next (one conditional
  UPDATE, one UPDATE, one INSERT, one commit), each request with the token the last one gave.

Each round runs a block of every kind, in turn, so drift on a shared machine falls on all alike.
Printed: each kind's median and 90th percentile per request, and the median's ratio to the
trivial GET's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.auth.principal import PrincipalCache  # noqa: E402
from app.main import create_app  # noqa: E402
from bench._common import (  # noqa: E402
    SECRET,
    Backend,
    percentile,
    postgres_backend,
    settings_for,
    sqlite_backend,
)
from tests.factories import PASSWORD, make_user  # noqa: E402

KINDS = ("trivial GET", "GET, session cached", "GET, session read", "refresh")


async def measure(backend: Backend, rounds: int, requests: int) -> dict[str, list[float]]:
    settings = settings_for(backend.url)
    app = create_app(settings)
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    async with LifespanManager(app):
        person = await make_user(app.state.db, secret=SECRET.encode(), role="clinician")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            signed = await http.post(
                "/api/v1/auth/token", data={"username": person.user.email, "password": PASSWORD}
            )
            signed.raise_for_status()
            tokens = signed.json()
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            cached, uncached = app.state.principals, PrincipalCache(ttl=0)

            async def trivial() -> httpx.Response:
                return await http.get("/healthz")

            async def me() -> httpx.Response:
                return await http.get("/api/v1/me", headers=auth)

            async def refresh() -> httpx.Response:
                answer = await http.post(
                    "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                )
                tokens["refresh_token"] = answer.json()["refresh_token"]
                return answer

            async def block(kind: str, send: Callable[[], Awaitable[httpx.Response]]) -> None:
                for _ in range(requests):
                    started = time.perf_counter()
                    answer = await send()
                    timings[kind].append(time.perf_counter() - started)
                    if answer.status_code != 200:
                        raise SystemExit(f"{kind}: {answer.status_code} {answer.text}")

            # Warm-up: imports, pools, statement caches.
            for send in (trivial, me, refresh):
                for _ in range(20):
                    await send()
            for _ in range(rounds):
                await block("trivial GET", trivial)
                app.state.principals = cached
                await block("GET, session cached", me)
                app.state.principals = uncached
                await block("GET, session read", me)
                app.state.principals = cached
                await block("refresh", refresh)
    return timings


def report(name: str, timings: dict[str, list[float]]) -> None:
    base = statistics.median(timings["trivial GET"])
    print(f"\n{name}: {len(timings['trivial GET'])} requests of each kind")
    print(f"  {'kind':22} {'median ms':>10} {'p90 ms':>8} {'x trivial':>10}")
    for kind in KINDS:
        values = timings[kind]
        median = statistics.median(values)
        print(
            f"  {kind:22} {median * 1000:10.2f} {percentile(values, 0.9) * 1000:8.2f} "
            f"{median / base:10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="per kind and round")
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        backends = [sqlite_backend(Path(folder))]
        if not args.sqlite_only:
            postgres = postgres_backend()
            if postgres is not None:
                backends.append(postgres)
        try:
            for backend in backends:
                report(backend.name, asyncio.run(measure(backend, args.rounds, args.requests)))
        finally:
            for backend in backends:
                if backend.cleanup is not None:
                    backend.cleanup()


if __name__ == "__main__":
    main()
