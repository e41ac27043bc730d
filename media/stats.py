"""Call quality per participant: round-trip time, loss, jitter and bitrate, and a call summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from media.tracks import CLOCK


@dataclass(frozen=True, slots=True)
class PeerStats:
    role: str
    rtt_ms: float | None
    loss: float | None  # fraction 0..1 of the participant's packets lost on the way in
    jitter_ms: float | None
    kbps: float | None  # what the participant sends the relay
    available_kbps: float | None = None  # what the relay estimates it can send them

    def message(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "rtt_ms": self.rtt_ms,
            "loss": self.loss,
            "jitter_ms": self.jitter_ms,
            "kbps": self.kbps,
            "available_kbps": self.available_kbps,
        }


async def participant_stats(
    role: str,
    pc: Any,
    sent_bytes: int,
    marks: dict[str, tuple[int, float]],
    now: float,
    *,
    available_kbps: float | None = None,
) -> PeerStats:
    """One participant's quality now; `sent_bytes` is all they have sent the relay so far,
    `marks` keeps each role's byte count between calls."""
    report = await pc.getStats()
    rtts, jitters = [], []
    received = lost = 0
    for stat in report.values():
        kind = getattr(stat, "type", None)
        if kind == "remote-inbound-rtp" and stat.roundTripTime is not None:
            rtts.append(stat.roundTripTime * 1000.0)
        elif kind == "inbound-rtp":
            received += stat.packetsReceived
            lost += max(0, stat.packetsLost)
            clock = CLOCK.get(stat.kind, 90_000)
            jitters.append(stat.jitter / clock * 1000.0)
    previous = marks.get(role)
    marks[role] = (sent_bytes, now)
    kbps = None
    if previous is not None and now > previous[1]:
        kbps = round((sent_bytes - previous[0]) * 8 / 1000 / (now - previous[1]), 1)
    loss = round(lost / (received + lost), 4) if received + lost else None
    return PeerStats(
        role=role,
        rtt_ms=round(max(rtts), 1) if rtts else None,
        loss=loss,
        jitter_ms=round(max(jitters), 1) if jitters else None,
        kbps=kbps,
        available_kbps=available_kbps,
    )


@dataclass
class CallStats:
    started: float = field(default_factory=time.monotonic)
    samples: dict[str, list[PeerStats]] = field(default_factory=dict)

    def add(self, row: PeerStats) -> None:
        self.samples.setdefault(row.role, []).append(row)

    def summary(self, *, transcoding: bool) -> dict[str, Any]:
        def mean(values: list[float | None]) -> float | None:
            present = [v for v in values if v is not None]
            return round(sum(present) / len(present), 2) if present else None

        return {
            "duration_seconds": round(time.monotonic() - self.started, 1),
            "mode": "transcoding" if transcoding else "forwarding",
            "participants": {
                role: {
                    "rtt_ms": mean([r.rtt_ms for r in rows]),
                    "loss": mean([r.loss for r in rows]),
                    "jitter_ms": mean([r.jitter_ms for r in rows]),
                    "kbps": mean([r.kbps for r in rows]),
                    "available_kbps": mean([r.available_kbps for r in rows]),
                    "samples": len(rows),
                }
                for role, rows in self.samples.items()
            },
        }
