"""Media relay figures of issue 4, measured side by side in one run on this machine.

  1. 640x480@30 calls with audio through one relay process, at full frame rate and at most
     50 ms added delay (p95): relay CPU per call, forwarding vs stock aiortc MediaRelay
     (target: >= 10x less), and calls per core (target: >= 20)
  2. recording on versus off: relay CPU (target: at most 10% more)
  3. admit to first frame both ways, through the whole server on loopback (target: <= 1 s)

The load runs in another process (bench/_relay_load.py) and sends pre-encoded frames, so it
does not eat the measurement; relay CPU is read from /proc around the measured window.

  4. with --against REV: relay CPU per forwarded call of this tree against the relay of git
     revision REV (a worktree made for the run), in alternating rounds (issue 11: bandwidth
     adaptation may cost at most 1.25x the forwarding it adds to)

  5. with --party: relay CPU per forwarded video stream in calls of four (each of 4 publishers
     to 3 others: 12 streams a call) against calls of two (2 a call), the same number of
     streams on each side, in alternating rounds (issue 14: target at most 1.1x)

Run: python bench/relay.py [--forward 8,16,20] [--stock 1,2] [--seconds 8] [--runs 5]
     [--recording-rounds 3]   (the recording figure uses the second --forward count)
     python bench/relay.py --against e357c9c [--against-calls 8] [--against-rounds 4]
     [--against-target 1.25] --only-against
     python bench/relay.py --party [--party-calls 2] [--party-pairs 12] [--party-rounds 3]
     [--seconds 8] --only-party
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._common import cpu_seconds  # noqa: E402
from tests.live import free_port  # noqa: E402


class RelayProcess:
    def __init__(self, mode: str, root: Path = HERE.parent) -> None:
        """A relay process running the code under `root` (this tree, or another revision's)."""
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(root / "bench" / "_relay_server.py"),
                "--port",
                str(self.port),
                "--mode",
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("relay did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def run_load(
    relay: RelayProcess, calls: int, seconds: float, record: bool = False, party: int = 2
) -> dict[str, Any]:
    command = [
        sys.executable, str(HERE / "_relay_load.py"), "--port", str(relay.port),
        "--calls", str(calls), "--seconds", str(seconds), "--party", str(party),
    ]  # fmt: skip
    if record:
        command.append("--record")
    load = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert load.stdout is not None
    cpu_start = wall_start = 0.0
    load_cpu_start = 0.0
    result: dict[str, Any] = {}
    for line in load.stdout:
        if line.startswith("MEASURE"):
            cpu_start, wall_start = cpu_seconds(relay.process.pid), time.monotonic()
            load_cpu_start = cpu_seconds(load.pid)
        elif line.startswith("RESULT"):
            wall = time.monotonic() - wall_start
            result = json.loads(line.split(" ", 1)[1])
            result["relay_cores"] = (cpu_seconds(relay.process.pid) - cpu_start) / wall
            result["load_cores"] = (cpu_seconds(load.pid) - load_cpu_start) / wall
    load.wait(timeout=60)
    return result


def sustained(result: dict[str, Any], mode: str) -> bool:
    """Full frame rate, and (where frames are recognisable: forwarding) p95 delay <= 50 ms."""
    if result["fps_min"] < 28.5:
        return False
    return mode == "stock" or (result["delay_p95"] is not None and result["delay_p95"] <= 50)


def delays(result: dict[str, Any]) -> str:
    if result["delay_p50"] is None:
        return "n/a (re-encoded frames)"
    return f"{result['delay_p50']:.1f} / {result['delay_p95']:.1f}"


async def admit_to_first_frame(runs: int) -> list[float]:
    """Through `televisit serve`: admit sent -> both sides' first decoded video frame (s)."""
    import httpx

    from app import migrate
    from app.db import Database, create_engine
    from bench._common import SECRET, settings_for, temp_folder
    from media import hooks
    from tests.factories import make_user
    from tests.live import start_server
    from tests.media.clients import MediaClient, until
    from tests.signaling.helpers import console, grant, make_visit, open_socket

    hooks.restrict_host_addresses(["127.0.0.1"])
    folder = temp_folder()
    url = f"sqlite+aiosqlite:///{folder / 'admit.db'}"
    await asyncio.to_thread(migrate.upgrade, url)  # alembic runs its own event loop
    db = Database(create_engine(settings_for(url)))
    scheduler = await make_user(db, secret=SECRET.encode(), role="scheduler")
    clinician = await make_user(db, secret=SECRET.encode(), role="clinician")
    server = start_server(
        {
            "TELEVISIT_ENVIRONMENT": "test",
            "TELEVISIT_DATABASE_URL": url,
            "TELEVISIT_SECRET_KEY": SECRET,
            "TELEVISIT_PUBLIC_URL": "http://testserver",
            "TELEVISIT_MEDIA_IPS": "127.0.0.1",
            "TELEVISIT_LOG_LEVEL": "WARNING",
        },
        log_path=folder / "server.log",
    )
    times: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for _ in range(runs):
                visit = await make_visit(db, clinician, by=scheduler)
                await grant(http, visit.token)
                key = str(visit.appointment_id)
                async with (
                    console(server.ws_url, clinician.token) as desk,
                    open_socket(f"{server.ws_url}/ws/visits/{visit.token}") as patient_socket,
                ):
                    await patient_socket.expect("waiting")
                    await desk.expect("queue")
                    patient = MediaClient(patient_socket, colour=(200, 30, 30), tone=440)
                    doctor = MediaClient(desk, colour=(30, 30, 200), tone=880, appointment_id=key)
                    started = time.monotonic()
                    await desk.send({"type": "admit", "appointment_id": key})
                    admitted = await patient_socket.expect("admitted")
                    call = await desk.expect("call")
                    await asyncio.gather(
                        patient.connect(admitted["ice_servers"]),
                        doctor.connect(call["ice_servers"]),
                    )
                    pair = (patient, doctor)
                    await until(lambda pair=pair: all(c.received.first_video_at for c in pair), 20)
                    both = max(
                        patient.received.first_video_at or 0, doctor.received.first_video_at or 0
                    )
                    times.append(both - started)
                    await desk.send({"type": "end", "appointment_id": key})
                    await patient.close_pc()
                    await doctor.close_pc()
    finally:
        server.stop()
        await db.dispose()
    return times


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """Another revision of this repository, checked out beside it for the run."""
    path = Path(tempfile.mkdtemp(prefix="televisit-bench-"))
    git = shutil.which("git") or "git"
    subprocess.run(
        [git, "-C", str(HERE.parent), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            [git, "-C", str(HERE.parent), "worktree", "remove", "--force", str(path)],
            check=False,
            capture_output=True,
        )


def against(revision: str, calls: int, rounds: int, seconds: float, target: float) -> None:
    """Relay CPU per call, this tree vs `revision`, in alternating rounds on the same load."""
    cores: dict[str, list[float]] = {"this tree": [], revision: []}
    rows: list[str] = []
    with worktree(revision) as other:
        for _ in range(rounds):
            for name, root in (("this tree", HERE.parent), (revision, other)):
                relay = RelayProcess("forward", root)
                try:
                    result = run_load(relay, calls, seconds)
                finally:
                    relay.stop()
                cores[name].append(result["relay_cores"] / calls)
                rows.append(
                    f"| {name} | {result['fps_min']:.1f} / {result['fps_mean']:.1f} "
                    f"| {delays(result)} | {result['relay_cores'] / calls:.4f} "
                    f"| {'yes' if sustained(result, 'forward') else 'no'} |"
                )
    print(f"| relay ({calls} calls of 640x480@30) | fps min / mean | delay p50 / p95 ms "
          "| cores per call | sustained |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)
    ours, theirs = statistics.mean(cores["this tree"]), statistics.mean(cores[revision])
    print(
        f"relay CPU per call, this tree vs {revision}: {ours:.4f} vs {theirs:.4f} cores: "
        f"**{ours / theirs:.2f}x** (target <= {target:.2f}x; {rounds} alternating rounds each)"
    )


def party_figure(calls: int, pairs: int, rounds: int, seconds: float, target: float) -> None:
    """Relay CPU per forwarded video stream: `calls` calls of four against `pairs` calls of
    two, a fresh relay process each round, alternating (drift falls on both alike)."""
    per_stream: dict[int, list[float]] = {4: [], 2: []}
    per_frame: dict[int, list[float]] = {4: [], 2: []}  # relay CPU-seconds per frame delivered
    rows: list[str] = []
    for _ in range(rounds):
        for party, count in ((4, calls), (2, pairs)):
            relay = RelayProcess("forward")
            try:
                result = run_load(relay, count, seconds, party=party)
            finally:
                relay.stop()
            streams = result["streams"]
            cost = result["relay_cores"] / streams
            per_stream[party].append(cost)
            # On a loaded machine the load may not reach full rate: per frame delivered too.
            frames = max(result["fps_mean"], 0.1) * streams
            per_frame[party].append(result["relay_cores"] / frames)
            rows.append(
                f"| {count} calls of {party} | {streams} | {result['fps_min']:.1f} / "
                f"{result['fps_mean']:.1f} | {delays(result)} | {result['relay_cores']:.3f} "
                f"| {cost * 1000:.2f} | {result['relay_cores'] / frames * 1e6:.0f} "
                f"| {'yes' if sustained(result, 'forward') else 'no'} |"
            )
    print("| relay (640x480@30) | video streams forwarded | fps min / mean per stream "
          "| delay p50 / p95 ms | relay cores | millicores per stream "
          "| relay CPU-µs per frame delivered | sustained |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    four, two = statistics.mean(per_stream[4]), statistics.mean(per_stream[2])
    print(
        f"relay CPU per forwarded video stream, calls of four vs calls of two: "
        f"{four * 1000:.2f} vs {two * 1000:.2f} millicores: **{four / two:.2f}x** "
        f"(target <= {target:.2f}x; {rounds} alternating rounds of {seconds:.0f} s each; "
        f"rounds: four {', '.join(f'{c * 1000:.2f}' for c in per_stream[4])}; "
        f"two {', '.join(f'{c * 1000:.2f}' for c in per_stream[2])})"
    )
    four, two = statistics.mean(per_frame[4]), statistics.mean(per_frame[2])
    print(
        f"relay CPU per video frame delivered, calls of four vs calls of two: "
        f"{four * 1e6:.0f} vs {two * 1e6:.0f} µs: **{four / two:.2f}x**"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--forward", default="8,16,20")
    parser.add_argument("--stock", default="1,2")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--recording-rounds", type=int, default=3)
    parser.add_argument("--against", help="a git revision whose relay to compare with")
    parser.add_argument("--against-calls", type=int, default=8)
    parser.add_argument("--against-rounds", type=int, default=4)
    parser.add_argument("--against-target", type=float, default=1.25)
    parser.add_argument("--only-against", action="store_true")
    parser.add_argument("--party", action="store_true", help="the calls-of-four figure")
    parser.add_argument("--party-calls", type=int, default=2)
    parser.add_argument("--party-pairs", type=int, default=12)
    parser.add_argument("--party-rounds", type=int, default=3)
    parser.add_argument("--party-target", type=float, default=1.1)
    parser.add_argument("--only-party", action="store_true")
    args = parser.parse_args()
    if args.party:
        party_figure(
            args.party_calls, args.party_pairs, args.party_rounds, args.seconds, args.party_target
        )
        if args.only_party:
            return
    if args.against:
        against(
            args.against, args.against_calls, args.against_rounds, args.seconds, args.against_target
        )
        if args.only_against:
            return
    rows: list[str] = []
    per_call: dict[str, float] = {}
    for mode, counts in (("forward", args.forward), ("stock", args.stock)):
        relay = RelayProcess(mode)
        try:
            best: float | None = None
            for calls in (int(c) for c in counts.split(",")):
                result = run_load(relay, calls, args.seconds)
                cores = result["relay_cores"]
                ok = sustained(result, mode)
                rows.append(
                    f"| {mode} | {calls} | {result['fps_min']:.1f} / {result['fps_mean']:.1f} "
                    f"| {delays(result)} | {cores:.2f} "
                    f"| {cores / calls:.3f} | {result['load_cores']:.2f} | {'yes' if ok else 'no'} |"
                )
                if ok:
                    best = cores / calls
            if best is not None:
                per_call[mode] = best
        finally:
            relay.stop()
    print("| relay | calls | fps min / mean | delay p50 / p95 ms | relay cores | cores per call "
          "| load cores | sustained |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    if "forward" in per_call and "stock" in per_call:
        print(
            f"forwarding vs stock MediaRelay, relay CPU per call: {per_call['forward']:.3f} vs "
            f"{per_call['stock']:.3f} cores: **{per_call['stock'] / per_call['forward']:.1f}x less**"
        )
    if "forward" in per_call:
        print(f"calls per relay core (forwarding): **{1 / per_call['forward']:.0f}**")

    # Recording on versus off, same load, side by side: alternating rounds, so drift on the
    # shared machine falls on both alike.
    calls = int(args.forward.split(",")[1 if "," in args.forward else 0])
    relay = RelayProcess("forward")
    off: list[float] = []
    on: list[float] = []
    try:
        for _ in range(args.recording_rounds):
            off.append(run_load(relay, calls, args.seconds)["relay_cores"])
            on.append(run_load(relay, calls, args.seconds, record=True)["relay_cores"])
    finally:
        relay.stop()
    more = (sum(on) / sum(off) - 1) * 100
    print(
        f"recording on vs off ({calls} calls, {len(on)} rounds each, alternating): relay "
        f"{statistics.mean(on):.3f} vs {statistics.mean(off):.3f} cores: **{more:+.0f}%** "
        f"(rounds: on {', '.join(f'{c:.3f}' for c in on)}; off {', '.join(f'{c:.3f}' for c in off)})"
    )

    times = asyncio.run(admit_to_first_frame(args.runs))
    print(
        f"admit to first frame both ways, through the server, {len(times)} runs: median "
        f"**{statistics.median(times) * 1000:.0f} ms** (all: "
        f"{', '.join(f'{t * 1000:.0f}' for t in times)} ms)"
    )


if __name__ == "__main__":
    main()
