"""How soon a consent withdrawal stops the patient's media at the clinician (docs/reliability.md).

Each round: a call on the app's own relay (in this process), two aiortc peers seeing each
other, then the patient withdraws, either announced (the consent endpoint, whose event reaches
the relay at once) or never announced (the decision written straight to the database, as when
the process that took it dies before publishing, or Redis is down: the relay's own reading
must find it). Measured: from the 201 (or the commit) to the last frame of the patient's the
clinician's peer received, sampled every 10 ms. The contract's bound is 1 s.

Run: python bench/consent.py [--rounds 10] [--database-url postgresql+asyncpg://...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from asgi_lifespan import LifespanManager

from app import migrate
from app.config import Settings
from app.db import Database, create_engine
from app.main import create_app
from media import hooks
from tests.conftest import TEST_SECRET
from tests.factories import make_staff
from tests.media.test_consent_gate import Call, frames, start_call
from tests.test_consent import decide


async def stopped_after(call: Call, since: float, window: float = 1.5) -> float:
    seen, changed = frames(call.clinician), since
    while time.monotonic() < since + window:
        await asyncio.sleep(0.01)
        now = frames(call.clinician)
        if now != seen:
            seen, changed = now, time.monotonic()
    return changed - since


async def main(rounds: int, database_url: str, folder: Path) -> None:
    hooks.restrict_host_addresses(["127.0.0.1"])
    settings = Settings(
        environment="test",
        database_url=database_url,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]  # pydantic makes it a SecretStr
        public_url="http://testserver",  # type: ignore[arg-type]  # pydantic parses the URL
        media_ips=["127.0.0.1"],
        recordings_dir=folder / "recordings",
    )
    db = Database(create_engine(settings))
    staff = await make_staff(db, secret=TEST_SECRET.encode())
    app = create_app(settings)
    results: dict[str, list[float]] = {"announced": [], "not announced": []}
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http,
    ):
        for _ in range(rounds):
            for path, figures in results.items():
                call = await start_call(app, db, staff)
                token = call.visit.token
                if path == "announced":
                    version = (await http.get(f"/api/v1/visits/{token}")).json()["consent"]
                    response = await http.post(
                        f"/api/v1/visits/{token}/consent",
                        json={
                            "version": version["version"],
                            "decision": "withdrawn",
                            "scopes": ["video_visit"],
                        },
                    )
                    assert response.status_code == 201, response.text
                else:
                    await decide(db, call.visit, "withdrawn", ["video_visit"])
                figures.append(await stopped_after(call, time.monotonic()))
                await call.patient.close()
                await call.clinician.close()
    await db.dispose()
    for path, figures in results.items():
        print(
            f"{path:>14}: media stopped {statistics.median(figures) * 1000:.0f} ms after the "
            f"201 (median of {len(figures)}), at most {max(figures) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--database-url")
    arguments = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="consent-bench-"))
    url = arguments.database_url or f"sqlite+aiosqlite:///{folder / 'bench.db'}"
    migrate.upgrade(url)  # an empty database, or one already at head
    asyncio.run(main(arguments.rounds, url, folder))
