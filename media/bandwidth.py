"""What the relay can send each subscriber, and sending it at that pace, sound first.

Each subscriber has a `Downlink`: the relay's estimate of what their link carries, from two
signals their browser sends anyway:

- REMB (receiver estimated maximum bitrate): the browser's delay-based estimate of the video
  that reaches it (abs-send-time is negotiated on video only). It reads the relay's
  abs-send-time stamps, so the `Pacer` re-stamps every packet it holds back: a packet's stamp is
  the moment it really left, and pacing is not mistaken for a queue.
- Receiver reports: packets lost, measured by `LossMeter` over whole intervals of a second or
  more from the report's cumulative counters (a browser sends a report with every NACK and
  REMB, each with its own fraction lost since the one before: taken one by one they swing
  between 0 and 50 % within a second). Over 5 % lost, the estimate of the whole link falls to
  90 % of what got through; under 2 % it climbs back, 8 % an interval, but only 3 kbit/s an
  interval near what got through at the last overflow. This is the loss-based half of Google's
  congestion control (draft-ietf-rmcat-gcc-02 section 6) made stricter: GCC tolerates up to
  10 % because its delay-based half keeps queues short, but a REMB cannot see a queue that
  stays full (a thin link's tail-drop queue: the delay is high but no longer grows), and each
  lost video packet that is not resent stalls the picture until the next keyframe.

A receiver's REMB follows what it gets (a small video gets a small REMB, and the estimate
starts at what arrived in its first seconds), so a low budget alone says nothing about the
link: the relay acts on it only while the link shows congestion (loss over 2 %, or a REMB under
70 % of the video sent over the last few seconds, seen within CONGESTION_MEMORY seconds). Then
audio is still sent at once, and video is paced at PACING_FACTOR times its budget (the REMB,
and no more than the loss-based estimate leaves after the audio measured in the last second),
so bursts such as keyframes spread out instead of filling the link's queue; frames that wait too
long are shed by the track (media.tracks). Video to that subscriber pauses when the budget stays
under PAUSE_BPS for PAUSE_AFTER seconds of congestion, and is tried again after a back-off that
doubles each time a try fails (the link is probed by the video itself, a keyframe first). On a
link without congestion video leaves as it comes, as it did before the relay measured anything.

The publisher is then asked, by REMB, for no more than its subscribers can take (media.relay).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiortc import clock

# Bits on the wire per packet beyond the RTP packet: IPv4 20, UDP 8, SRTP auth tag 10.
PACKET_OVERHEAD_BYTES = 38
# Before the first REMB: what a browser starts at (libwebrtc starts at 300 kbit/s).
START_BPS = 300_000
MAX_BPS = 4_000_000
MIN_BPS = 30_000
PACING_FACTOR = 2.5  # libwebrtc's pacer runs at 2.5x its target too
MIN_PACING_BPS = 80_000
# Congestion seen this recently counts.
CONGESTION_MEMORY = 3.0
# A REMB under this share of the video sent (over the last few seconds: keyframes come in
# bursts) says the receiver cannot take it all.
OVERUSE_SHARE = 0.7
SLOW_WINDOW = 3.0
# Loss-based control.
HIGH_LOSS = 0.10
LOW_LOSS = 0.02
# Over this share lost, the link's queue overflows: what got through is what it carries.
CUT_LOSS = 0.05
# The estimate is set this far under what got through, and cut at most this often (the
# publisher needs a moment to follow), unless what got through is under COLLAPSE of the
# estimate (a link that has just fallen: a random loss never says that).
HEADROOM = 0.9
CUT_INTERVAL = 2.0
COLLAPSE = 0.5
# Without loss it grows 8 % an interval, but only a few kbit/s an interval once it is near
# what got through at the last overflow: each overflow costs sound and frames.
LOSS_GROWTH = 1.08
NEAR_CAPACITY = 0.85
CAPACITY_STEP_BPS = 3_000
# Video pauses when what is left for it stays under this long enough; it is tried again after
# a back-off that doubles on each failed try.
PAUSE_BPS = 35_000
PAUSE_AFTER = 2.0
# A try to resume that meets congestion gives up sooner: every second of it costs sound.
TRIAL_PAUSE_AFTER = 0.5
RESUME_BACKOFF = 8.0
# What video tries again at (a REMB will say within a second what the link takes).
RESUME_BPS = 64_000
MAX_RESUME_BACKOFF = 60.0
# A subscriber whose link takes less than this share of what another subscriber of the same
# publisher takes does not hold the publisher down (media.adaptation): while its link shows
# congestion its own video pauses (and is tried again) instead, and the others keep quality.
THIN_SHARE = 0.5
# Outvoted this recently counts.
OUTVOTED_MEMORY = 1.0
# A resumed video that holds this long resets the back-off.
TRIAL_SECONDS = 10.0
# Video may leave this far ahead of its pace (a small burst keeps frames together).
BURST_SECONDS = 0.015
# A retransmission is only worth sending while the packet is young, the pace not behind, the
# link not overflowing, and only once per packet.
NACK_MAX_AGE = 0.5
NACK_MAX_BACKLOG = 0.1
RATE_WINDOW = 1.0
# While a subscriber's link shows no congestion, its publisher may send this much more than
# the REMB: a REMB follows what arrives, and grows only when a little more arrives.
PROBE_FACTOR = 1.25
# Loss is measured over intervals at least this long; a heavy loss over enough packets is
# told sooner (a link that has just fallen).
LOSS_INTERVAL = 1.0
EARLY_LOSS_INTERVAL = 0.2
EARLY_LOSS_PACKETS = 30
EARLY_LOSS = 0.2


class LossEstimate:
    """What a link carries, as its losses tell: the loss-based half of the estimate.

    Loss is the only sign of a full queue that stays full (a delay-based REMB sees no trend in
    a delay that no longer grows), so it sets the estimate: over CUT_LOSS, to a little under
    what got through (at most every CUT_INTERVAL, unless the link has just fallen); under
    LOW_LOSS, growing again, slowly near what got through last time. In between it holds.
    """

    def __init__(self) -> None:
        self.cap_bps: float | None = None
        self._capacity_bps: float | None = None  # what got through at the last overflow
        self._cut_at: float | None = None

    def update(
        self, loss: float, *, through_bps: float, sending_bps: float, now: float
    ) -> float | None:
        """One interval's loss, with what got through and what was sent; the new cap."""
        if loss > CUT_LOSS and through_bps > 0:
            self._capacity_bps = through_bps
            cap = max(MIN_BPS, through_bps * HEADROOM)
            collapsed = self.cap_bps is None or cap < COLLAPSE * self.cap_bps
            if self._cut_at is None or now - self._cut_at >= CUT_INTERVAL or collapsed:
                self._cut_at = now
                self.cap_bps = min(self.cap_bps or cap, cap)
        elif loss < LOW_LOSS and self.cap_bps is not None:
            capacity = self._capacity_bps
            if capacity is not None and sending_bps > (2 - NEAR_CAPACITY) * capacity:
                capacity = self._capacity_bps = None  # the link took more than before
            if capacity is not None and self.cap_bps >= NEAR_CAPACITY * capacity:
                self.cap_bps += CAPACITY_STEP_BPS
            else:
                self.cap_bps *= LOSS_GROWTH
            if self.cap_bps >= MAX_BPS:
                self.cap_bps = None
        return self.cap_bps


class Uplink:
    """What a publisher's own leg carries as the relay receives it: loss-based.

    The relay's receiver also estimates the leg from delay (aiortc's REMB, media.hooks.cap_remb),
    but slowly, and it cannot see a queue that stays full: a patient's thin uplink kept
    overflowing for the first ten or twenty seconds of a call. Fed the leg's loss over whole
    intervals (LossMeter over the receiver's own counters) and what arrived.
    """

    def __init__(self) -> None:
        self.estimate = LossEstimate()
        self._counts = (0, 0)
        self._since = time.monotonic()
        self.received_bps = 0.0
        self.audio_bps = 0.0

    def arrived(self, video_bytes: int, audio_bytes: int, now: float) -> None:
        """The publisher's byte counters as they stand now."""
        elapsed = now - self._since
        if elapsed >= RATE_WINDOW:
            video, audio = video_bytes - self._counts[0], audio_bytes - self._counts[1]
            if video >= 0 and audio >= 0:  # not a new source's counters
                self.received_bps = (video + audio) * 8 / elapsed
                self.audio_bps = audio * 8 / elapsed
            self._counts, self._since = (video_bytes, audio_bytes), now

    def on_loss(self, loss: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        # What arrived is what got through; what was sent is more by the share lost.
        through = self.received_bps
        sending = through / (1 - loss) if loss < 1 else through
        self.estimate.update(loss, through_bps=through, sending_bps=sending, now=now)

    @property
    def video_cap_bps(self) -> float | None:
        """What the publisher's video may be, its sound taken out; None: no loss seen."""
        cap = self.estimate.cap_bps
        return None if cap is None else max(MIN_BPS, cap - self.audio_bps)


@dataclass
class Downlink:
    """The relay's view of one subscriber's link."""

    remb_bps: float | None = None
    loss_cap_bps: float | None = None
    audio_bps: float = 0.0
    video_bps: float = 0.0
    video_payload_bps: float = 0.0  # as REMB counts it: RTP packets only, over SLOW_WINDOW
    video_budget_bps: float = START_BPS
    paused: bool = False
    last_loss: float = 0.0  # the latest receiver report's fraction lost
    _low_since: float | None = None
    _retry_at: float = 0.0
    _backoff: float = RESUME_BACKOFF
    _resumed_at: float | None = None
    _audio_bytes: int = 0
    _video_bytes: int = 0
    _video_payload_bytes: int = 0
    _congested_at: float | None = None
    _outvoted_at: float | None = None
    _heavy_loss_at: float | None = None
    _by_loss_estimate: LossEstimate = field(default_factory=lambda: LossEstimate())
    _last_tick: float = field(default_factory=time.monotonic)

    @property
    def pacing_bps(self) -> float:
        return max(MIN_PACING_BPS, self.video_budget_bps * PACING_FACTOR)

    @property
    def available_kbps(self) -> float:
        """What the link carries, audio and video, as far as the relay can tell."""
        return round((self.video_budget_bps + self.audio_bps) / 1000, 1)

    def describe(self, now: float) -> dict[str, float | bool | None]:
        """The estimate's inputs and state, for a debug log line (numbers only)."""
        return {
            "remb_kbps": None if self.remb_bps is None else round(self.remb_bps / 1000),
            "loss_cap_kbps": None if self.loss_cap_bps is None else round(self.loss_cap_bps / 1000),
            "audio_kbps": round(self.audio_bps / 1000),
            "video_kbps": round(self.video_bps / 1000),
            "budget_kbps": round(self.video_budget_bps / 1000),
            "loss": round(self.last_loss, 3),
            "congested": self.congested(now),
            "losing_heavily": self.losing_heavily(now),
            "paused": self.paused,
        }

    def losing_heavily(self, now: float) -> bool:
        """Over 10 % lost lately: the link's queue overflows, retransmissions only add to it."""
        return self._heavy_loss_at is not None and now - self._heavy_loss_at < CONGESTION_MEMORY

    def congested(self, now: float) -> bool:
        return self._congested_at is not None and now - self._congested_at < CONGESTION_MEMORY

    def outvoted(self, now: float) -> None:
        """Another subscriber of a publisher this one gets takes far more (THIN_SHARE): the
        publisher is not held down to this link, so, while it shows congestion, this link's
        video pauses as if its budget were too low (and is tried again the same way)."""
        self._outvoted_at = now

    def _thin(self, now: float) -> bool:
        outvoted = self._outvoted_at is not None and now - self._outvoted_at < OUTVOTED_MEMORY
        return self.video_budget_bps < PAUSE_BPS or outvoted

    def sent(self, nbytes: int, *, audio: bool) -> None:
        if audio:
            self._audio_bytes += nbytes + PACKET_OVERHEAD_BYTES
        else:
            self._video_bytes += nbytes + PACKET_OVERHEAD_BYTES
            self._video_payload_bytes += nbytes

    def on_remb(self, bps: int, now: float | None = None) -> None:
        self.remb_bps = float(bps)
        if self.video_payload_bps > MIN_BPS and bps < OVERUSE_SHARE * self.video_payload_bps:
            self._congested_at = time.monotonic() if now is None else now
        self._estimate()

    def on_loss(self, loss: float, now: float | None = None) -> None:
        """The share (0-1) of what the relay sent this subscriber lost over the last interval."""
        now = time.monotonic() if now is None else now
        self.last_loss = loss
        sending = self.audio_bps + self.video_bps
        if loss > LOW_LOSS:
            self._congested_at = now
        if loss > HIGH_LOSS:
            self._heavy_loss_at = now
        self._by_loss_estimate.cap_bps = self.loss_cap_bps
        self.loss_cap_bps = self._by_loss_estimate.update(
            loss, through_bps=sending * (1 - loss), sending_bps=sending, now=now
        )
        self._estimate()

    def publisher_cap_bps(self, now: float) -> float:
        """What a publisher may send towards this subscriber (media.relay takes the least).

        No more than the budget while the link shows congestion, or while video is being tried
        again after a pause (the try is at RESUME_BPS: its keyframe must stay small).
        """
        if self.congested(now) or self._resumed_at is not None:
            return self.video_budget_bps
        return min(self.video_budget_bps * PROBE_FACTOR, self._by_loss(), MAX_BPS)

    def _by_loss(self) -> float:
        return MAX_BPS if self.loss_cap_bps is None else self.loss_cap_bps - self.audio_bps

    def _estimate(self) -> None:
        by_loss = self._by_loss()
        by_delay = START_BPS if self.remb_bps is None else self.remb_bps
        self.video_budget_bps = max(0.0, min(by_delay, by_loss, MAX_BPS))

    def tick(self, now: float) -> Literal["paused", "resumed"] | None:
        """Measure the last interval's rates; "paused" or "resumed" when video should change."""
        elapsed = now - self._last_tick
        if elapsed >= RATE_WINDOW / 4:
            weight = min(1.0, elapsed / RATE_WINDOW)
            audio = self._audio_bytes * 8 / elapsed
            video = self._video_bytes * 8 / elapsed
            payload = self._video_payload_bytes * 8 / elapsed
            self.audio_bps += weight * (audio - self.audio_bps)
            self.video_bps += weight * (video - self.video_bps)
            slow = min(1.0, elapsed / SLOW_WINDOW)
            self.video_payload_bps += slow * (payload - self.video_payload_bps)
            self._audio_bytes = self._video_bytes = self._video_payload_bytes = 0
            self._last_tick = now
            self._estimate()
        if self.paused:
            # While paused the REMB only follows the audio: the link is tried with video itself.
            if now >= self._retry_at and not self.congested(now):
                self.paused = False
                self._low_since = None
                self._resumed_at = now
                self.remb_bps = max(self.remb_bps or 0.0, RESUME_BPS)
                self._estimate()
                return "resumed"
            return None
        if self._resumed_at is not None and now - self._resumed_at >= TRIAL_SECONDS:
            self._backoff, self._resumed_at = RESUME_BACKOFF, None
        if not self._thin(now) or not self.congested(now):
            self._low_since = None
            return None
        if self._low_since is None:
            self._low_since = now
        on_trial = self._resumed_at is not None
        if now - self._low_since < (TRIAL_PAUSE_AFTER if on_trial else PAUSE_AFTER):
            return None
        if self._resumed_at is not None:  # a try that failed: wait longer next time
            self._backoff = min(MAX_RESUME_BACKOFF, self._backoff * 2)
            self._resumed_at = None
        self.paused = True
        self._retry_at = now + self._backoff
        return "paused"


class LossMeter:
    """Loss over intervals of LOSS_INTERVAL or more, from a receiver's cumulative counters.

    Fed each report block about one SSRC (its extended highest sequence number and cumulative
    packets lost); hands `report` the share lost since the start of the interval. A heavy loss
    (over EARLY_LOSS of EARLY_LOSS_PACKETS or more) is handed on after EARLY_LOSS_INTERVAL.
    """

    def __init__(self, report: Callable[[float], object]) -> None:
        self._report = report
        self._anchor: tuple[float, int, int] | None = None  # (when, highest seq, lost)

    def __call__(self, highest_sequence: int, packets_lost: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._anchor is None:
            self._anchor = (now, highest_sequence, packets_lost)
            return
        since, first_sequence, first_lost = self._anchor
        expected = highest_sequence - first_sequence
        lost = packets_lost - first_lost
        early = (
            now - since >= EARLY_LOSS_INTERVAL
            and EARLY_LOSS_PACKETS <= expected < 1 << 15
            and lost > EARLY_LOSS * expected
        )
        if now - since < LOSS_INTERVAL and not early:
            return
        self._anchor = (now, highest_sequence, packets_lost)
        if not 0 < expected < 1 << 15:  # nothing sent, or a restart: measure from here
            return
        self._report(min(1.0, max(0.0, lost / expected)))


SendRtp = Callable[[bytes], Awaitable[None]]


class Pacer:
    """Stands in front of one subscriber's DTLS transport (media.hooks.pace_transport).

    RTCP and audio leave at once; video, while the link shows congestion, at the downlink's
    pacing rate, re-stamped when held back.
    Retransmissions (on an RTX SSRC, or a sequence number already sent) are never delayed: they
    are sent from the transport's receive path, which must not wait. They leave at once, or not
    at all (`may_retransmit`), and later video waits for the room they took.
    """

    def __init__(self, downlink: Downlink) -> None:
        self.downlink = downlink
        self.audio_ssrcs: set[int] = set()
        self.video_ssrcs: set[int] = set()
        self.rtx_ssrcs: set[int] = set()
        self.abs_send_time_ids: dict[int, int] = {}  # ssrc -> one-byte header extension id
        self._free_at = 0.0
        self._sent_at: dict[int, float] = {}  # (ssrc << 16 | seq) -> when it left
        self._retransmitted: dict[int, float] = {}

    def backlog(self, now: float) -> float:
        """Seconds of video already promised ahead of now."""
        return max(0.0, self._free_at - now)

    def _reserve(self, nbytes: int, now: float) -> float:
        if not self.downlink.congested(now):
            self._free_at = now  # nothing to spread out: no backlog either
            return 0.0
        rate = self.downlink.pacing_bps
        start = max(now, self._free_at)
        self._free_at = start + (nbytes + PACKET_OVERHEAD_BYTES) * 8 / rate
        return start - now - BURST_SECONDS

    async def send(self, data: bytes, original: SendRtp) -> None:
        ssrc = _ssrc(data)
        if ssrc is None or ssrc not in self.video_ssrcs:
            if ssrc in self.audio_ssrcs:
                self.downlink.sent(len(data), audio=True)
            elif ssrc in self.rtx_ssrcs:
                self._retransmitted_now(len(data))
            await original(data)
            return
        if self._key(ssrc, data) in self._sent_at:  # a retransmission without RTX
            self._retransmitted_now(len(data))
            await original(data)
            return
        now = time.monotonic()
        delay = self._reserve(len(data), now)
        if delay > 0:
            await asyncio.sleep(delay)
            ext_id = self.abs_send_time_ids.get(ssrc)
            if ext_id is not None:
                data = restamp_abs_send_time(data, ext_id)
        self.downlink.sent(len(data), audio=False)
        self._remember(ssrc, data)
        await original(data)

    @staticmethod
    def _key(ssrc: int, data: bytes) -> int:
        return ssrc << 16 | int.from_bytes(data[2:4], "big")

    def _remember(self, ssrc: int, data: bytes) -> None:
        self._sent_at[self._key(ssrc, data)] = time.monotonic()
        if len(self._sent_at) > 2048:
            for old in list(self._sent_at)[:1024]:
                del self._sent_at[old]

    def may_retransmit(self, ssrc: int, sequence_number: int) -> bool:
        """Whether a NACKed packet can still help: young, not just resent, the pace not behind."""
        now = time.monotonic()
        key = ssrc << 16 | sequence_number
        sent_at = self._sent_at.get(key)
        if (
            sent_at is None
            or now - sent_at > NACK_MAX_AGE
            or self.backlog(now) > NACK_MAX_BACKLOG
            or key in self._retransmitted
            or self.downlink.losing_heavily(now)
        ):
            return False
        self._retransmitted[key] = now
        if len(self._retransmitted) > 1024:
            for old in list(self._retransmitted)[:512]:
                del self._retransmitted[old]
        return True

    def _retransmitted_now(self, nbytes: int) -> None:
        self._reserve(nbytes, time.monotonic())
        self.downlink.sent(nbytes, audio=False)


def _ssrc(data: bytes) -> int | None:
    if len(data) < 12 or 192 <= data[1] <= 208:  # too short, or RTCP
        return None
    return int.from_bytes(data[8:12], "big")


def restamp_abs_send_time(data: bytes, ext_id: int) -> bytes:
    """The RTP packet with its abs-send-time extension set to now (one-byte header form)."""
    if not data[0] & 0x10:
        return data
    offset = 12 + 4 * (data[0] & 0x0F)
    if len(data) < offset + 4 or data[offset : offset + 2] != b"\xbe\xde":
        return data
    length = int.from_bytes(data[offset + 2 : offset + 4], "big") * 4
    position, end = offset + 4, min(len(data), offset + 4 + length)
    while position < end:
        header = data[position]
        if header == 0:  # padding
            position += 1
            continue
        element_id, size = header >> 4, (header & 0x0F) + 1
        if element_id == 15:
            break
        if element_id == ext_id and size == 3 and position + 4 <= end:
            stamp = ((clock.current_ntp_time() >> 14) & 0xFFFFFF).to_bytes(3, "big")
            return data[: position + 1] + stamp + data[position + 4 :]
        position += 1 + size
    return data


__all__ = ["Downlink", "LossEstimate", "LossMeter", "Pacer", "Uplink", "restamp_abs_send_time"]
