"""Two network namespaces of the benchmark's own, joined by a veth pair shaped with `tbf`.

Everything lives inside the two namespaces: the veth is created there (never in the host's
namespace), addresses are 10.77.0.1/30 and 10.77.0.2/30, IPv6 is off in both, and nothing is
routed anywhere else. `close()` ends every process still inside them (only ours can be: the
namespaces are created here) and deletes them, which removes the veth with them.

This kernel has `tbf` (and `htb`) but no `netem`: a link is a token bucket of rate R on each
end's egress, with a queue of `QUEUE_MS` (tbf's `latency`, from which it sizes its byte limit).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

CLINIC_NS = "televisit-bench-clinic"
PATIENT_NS = "televisit-bench-patient"
CLINIC_IF = "tv-clinic"
PATIENT_IF = "tv-patient"
CLINIC_ADDR = "10.77.0.1"
PATIENT_ADDR = "10.77.0.2"
PREFIX = 30
SUBNET = "10.77.0.0/30"
QUEUE_MS = 150
MTU_FRAME = 1514  # an Ethernet frame of a full-size packet: tbf must let one through whole

CLONE_NEWNET = 0x40000000
IP = shutil.which("ip") or "/usr/sbin/ip"
T = TypeVar("T")


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def ns_run(ns: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(IP, "netns", "exec", ns, *command, check=check)


def existing_namespaces() -> list[str]:
    listed = run(IP, "netns", "list").stdout.split("\n")
    return [line.split()[0] for line in listed if line.strip()]


def tbf_burst(rate_kbit: float) -> int:
    """Bytes the bucket holds: 10 ms at the rate, and never less than one full frame."""
    return max(MTU_FRAME + 86, int(rate_kbit * 1000 / 8 * 0.010))


def tbf_args(rate_kbit: float) -> list[str]:
    return [
        "tbf",
        "rate",
        f"{rate_kbit:g}kbit",
        "burst",
        str(tbf_burst(rate_kbit)),
        "latency",
        f"{QUEUE_MS}ms",
    ]


def _setns(ns: str) -> None:
    """Move the calling thread (only it) into the namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({ns}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class Link:
    """The two namespaces and their veth; `shape(kbit)` sets both directions at once."""

    rate_kbit: float | None = None
    created: list[str] = field(default_factory=list)
    _threads: list[ThreadPoolExecutor] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self) -> None:
        stale = [ns for ns in (CLINIC_NS, PATIENT_NS) if ns in existing_namespaces()]
        if stale:
            raise RuntimeError(
                f"namespaces {', '.join(stale)} exist (a run that was killed?): "
                "python bench/network.py --cleanup removes them and what runs inside"
            )
        for ns in (CLINIC_NS, PATIENT_NS):
            run(IP, "netns", "add", ns)
            self.created.append(ns)
            for key in ("all", "default"):
                ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
            ns_run(ns, IP, "link", "set", "lo", "up")
        # Both ends are born inside their namespaces: the host's never sees the pair.
        run(
            "ip", "link", "add", CLINIC_IF, "netns", CLINIC_NS,
            "type", "veth", "peer", "name", PATIENT_IF, "netns", PATIENT_NS,
        )  # fmt: skip
        for ns, dev, addr in (
            (CLINIC_NS, CLINIC_IF, CLINIC_ADDR),
            (PATIENT_NS, PATIENT_IF, PATIENT_ADDR),
        ):
            ns_run(ns, IP, "addr", "add", f"{addr}/{PREFIX}", "dev", dev)
            ns_run(ns, IP, "link", "set", dev, "up")

    def shape(self, rate_kbit: float) -> None:
        """tbf at `rate_kbit` on both ends' egress: each direction carries at most that."""
        with self._lock:
            for ns, dev in ((CLINIC_NS, CLINIC_IF), (PATIENT_NS, PATIENT_IF)):
                ns_run(ns, "tc", "qdisc", "replace", "dev", dev, "root", *tbf_args(rate_kbit))
            self.rate_kbit = rate_kbit

    def qdiscs(self) -> str:
        return "\n".join(
            ns_run(ns, "tc", "-s", "qdisc", "show", "dev", dev).stdout.strip()
            for ns, dev in ((CLINIC_NS, CLINIC_IF), (PATIENT_NS, PATIENT_IF))
        )

    def in_clinic(self, function: Callable[[], T]) -> T:
        """Run `function` on a thread that lives in the clinic's namespace (its sockets too)."""
        if not self._threads:
            self._threads.append(
                ThreadPoolExecutor(1, "clinic-ns", initializer=_setns, initargs=(CLINIC_NS,))
            )
        return self._threads[0].submit(function).result()

    def close(self) -> None:
        for pool in self._threads:
            pool.shutdown(wait=True)
        self._threads.clear()
        remove_namespaces(self.created)
        self.created.clear()


def pids_in(ns: str) -> list[int]:
    listed = run(IP, "netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in listed if p.isdigit() and int(p) != os.getpid()]


def remove_namespaces(names: list[str]) -> None:
    """End every process inside (TERM, then KILL after 5 s), then delete the namespaces."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        pids = [pid for ns in names for pid in pids_in(ns)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for ns in names for pid in pids_in(ns)]
            time.sleep(0.1)
        if not pids:
            break
    for ns in names:
        run(IP, "netns", "del", ns, check=False)
