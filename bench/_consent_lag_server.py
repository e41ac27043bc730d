"""`televisit serve`, instrumented for bench/consent_lag.py: nothing of the server changes.

Appended to the JSON-lines file named by CONSENT_LAG_OUT, each with the wall clock (`t`):
- `reading`: one `ConsentReader.read` (the relay's consent reading), how long it took in ms and
  whether the relay gave it up (cancelled by its timeout);
- `lag`: the event loop's delay, sampled every 100 ms (how late a `call_later(0.1)` ran);
- `doubt`: a call of the relay fell into doubt (media.consent.doubt ran).
The sampler starts with the first reading (the relay reads only while it holds a call).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli import main as serve
from media import consent as consent_steps
from signaling.consent_events import ConsentReader
from signaling.media import Consent

OUT = open(os.environ["CONSENT_LAG_OUT"], "a", buffering=1)  # noqa: SIM115 (the process's)
SAMPLE_SECONDS = 0.1
_sampler: list[asyncio.Task[None]] = []


def note(kind: str, **fields: Any) -> None:
    OUT.write(json.dumps({"t": time.time(), "kind": kind, **fields}) + "\n")


async def sample_lag() -> None:
    loop = asyncio.get_running_loop()
    while True:
        ran = loop.create_future()
        due = loop.time() + SAMPLE_SECONDS
        loop.call_at(due, lambda f=ran: f.done() or f.set_result(loop.time()))
        note("lag", ms=(await ran - due) * 1000)


read = ConsentReader.read


async def timed_read(
    self: ConsentReader, call_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Consent]:
    if not _sampler:
        _sampler.append(asyncio.create_task(sample_lag()))
    started = time.perf_counter()
    given_up = True
    try:
        found = await read(self, call_ids)
        given_up = False
        return found
    finally:
        note("reading", ms=(time.perf_counter() - started) * 1000, given_up=given_up)


doubt = consent_steps.doubt


async def noted_doubt(room: Any, since: float) -> None:
    note("doubt")
    await doubt(room, since)


ConsentReader.read = timed_read  # type: ignore[method-assign]
consent_steps.doubt = noted_doubt

if __name__ == "__main__":
    serve()
