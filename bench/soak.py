"""Opening and closing many calls leaves the relay's memory, tasks and threads flat (issue 4).

Each call: a relay room, two aiortc peers (audio and a small video) that connect through it and
exchange media until each sees the other, then the call closes and the peers hang up. The relay
runs in this process, so its tasks, threads and peer connections can be counted; memory is this
process's RSS, which includes the test peers (they are closed and collected too).

Run: python bench/soak.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from bench._common import rss_bytes
from media import hooks
from media.relay import Relay
from tests.media.clients import until
from tests.media.harness import Log, Outbox, Peer, consent


def rss_mib() -> float:
    return rss_bytes(os.getpid()) / 2**20


async def one_call(relay: Relay, outbox: Outbox) -> None:
    call = uuid.uuid4()
    await relay.open_call(call, consent=consent(), ice_servers=[])
    patient = Peer(relay, outbox, call, "patient", colour=(200, 30, 30), tone=440)
    clinician = Peer(relay, outbox, call, "clinician", colour=(30, 30, 200), tone=880)
    await patient.join()
    await clinician.join()
    await until(lambda: bool(patient.colours()) and bool(clinician.colours()), 20)
    await relay.close_call(call)
    await patient.close()
    await clinician.close()
    outbox.messages.pop((call, "patient"), None)
    outbox.messages.pop((call, "clinician"), None)


async def main(calls: int) -> None:
    hooks.restrict_host_addresses(["127.0.0.1"])
    outbox, log = Outbox(), Log()
    settings = Settings(
        media_ips=["127.0.0.1"], recordings_dir=Path(tempfile.mkdtemp(prefix="soak-"))
    )
    relay = Relay(settings=settings, emit=outbox.emit, recordings=log)
    for _ in range(20):  # warm: executors, caches, codec contexts
        await one_call(relay, outbox)
    await asyncio.sleep(1)
    gc.collect()
    base = (rss_mib(), len(asyncio.all_tasks()), threading.active_count())
    print(f"after 20 warm-up calls: RSS {base[0]:.0f} MiB, {base[1]} tasks, {base[2]} threads")
    started = time.monotonic()
    for index in range(1, calls + 1):
        await one_call(relay, outbox)
        if index % 100 == 0:
            await asyncio.sleep(0.5)
            gc.collect()
            print(
                f"after {index} calls: RSS {rss_mib():.0f} MiB, {len(asyncio.all_tasks())} "
                f"tasks, {threading.active_count()} threads, {len(relay.registry)} peer "
                f"connections, {len(relay.rooms)} rooms ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    await asyncio.sleep(1)
    gc.collect()
    end = (rss_mib(), len(asyncio.all_tasks()), threading.active_count())
    print(
        f"| {calls} calls opened and closed | RSS {base[0]:.0f} -> {end[0]:.0f} MiB "
        f"({end[0] - base[0]:+.0f}), tasks {base[1]} -> {end[1]}, threads {base[2]} -> {end[2]}, "
        f"peer connections left {len(relay.registry)}, summaries {len(log.summaries)} |"
    )
    await relay.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
