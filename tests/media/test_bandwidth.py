"""Bandwidth through the relay, sound first: estimates, pacing, pausing, REMB to publishers.

The relay runs in the test's process with real aiortc peers on loopback. A browser on a poor
link tells the relay so with RTCP (REMB, receiver reports with loss); here the subscriber's own
aiortc receiver sends those same packets, since loopback itself never loses anything.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    HeaderExtensionsMap,
    RtcpPsfbPacket,
    RtpPacket,
    unpack_remb_fci,
)

from media import bandwidth, hooks, tracks
from media.bandwidth import Downlink, LossMeter, Pacer, restamp_abs_send_time
from media.forwarding import _keyframe_asked
from media.frames import EncodedFrame
from media.relay import Relay
from media.tracks import Publisher
from tests.media.clients import report_loss, send_remb, until
from tests.media.harness import Outbox, Peer, consent

RED, BLUE = (220, 30, 30), (30, 30, 220)


async def call_of_two(relay: Relay, outbox: Outbox) -> tuple[uuid.UUID, Peer, Peer]:
    call = uuid.uuid4()
    await relay.open_call(call, consent=consent(), ice_servers=[])
    patient = Peer(relay, outbox, call, "patient", colour=RED, tone=440)
    clinician = Peer(relay, outbox, call, "clinician", colour=BLUE, tone=880)
    await patient.join()
    await clinician.join()
    await until(lambda: video_frames(clinician) > 10 and video_frames(patient) > 10, 20)
    return call, patient, clinician


def video_frames(peer: Peer) -> int:
    return sum(t.video_frames for t in peer.tracks)


def audio_frames(peer: Peer) -> int:
    return sum(t.audio_frames for t in peer.tracks)


def transceiver(peer: Peer, kind: str, *, receiving: bool) -> Any:
    assert peer.pc is not None
    for t in peer.pc.getTransceivers():
        if t.kind != kind:
            continue
        if receiving and hooks.sources(t.receiver):
            return t
        if not receiving and t.sender.track is not None:
            return t
    raise AssertionError(f"no {kind} transceiver")


def video_messages(outbox: Outbox, call: uuid.UUID, role: str) -> list[dict[str, Any]]:
    return [m for m in outbox.messages[(call, role)] if m.get("type") == "video"]


async def sound_without_video(*peers: Peer) -> list[int]:
    """No video reaches these peers for a second, their sound does; their video frame counts."""
    await asyncio.sleep(0.5)  # what was on its way arrives
    frames = [video_frames(peer) for peer in peers]
    sound = [audio_frames(peer) for peer in peers]
    await asyncio.sleep(1.0)
    assert [video_frames(peer) for peer in peers] == frames
    assert all(audio_frames(p) > heard + 20 for p, heard in zip(peers, sound, strict=True))
    return frames


def record_feedback(sender: RTCRtpSender) -> list[RtcpPsfbPacket]:
    """Every PLI and REMB the relay sends this publisher's sender (a test client's sender)."""
    heard: list[RtcpPsfbPacket] = []
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket):
            heard.append(packet)
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]
    return heard


def rembs(heard: list[RtcpPsfbPacket], ssrc: int) -> list[int]:
    values = []
    for packet in heard:
        if packet.fmt == RTCP_PSFB_APP:
            bitrate, ssrcs = unpack_remb_fci(packet.fci)
            if ssrc in ssrcs:
                values.append(bitrate)
    return values


class TestPublisherHearsItsSubscribers:
    async def test_a_subscriber_that_can_take_150_kbps_caps_the_publisher(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        call, patient, clinician = await call_of_two(plane, outbox)
        patient_video = transceiver(patient, "video", receiving=False).sender
        heard = record_feedback(patient_video)
        receiver = transceiver(clinician, "video", receiving=True).receiver
        for _ in range(6):  # what a browser on a thin link says, twice a second
            await send_remb(receiver, 150_000)
            await asyncio.sleep(0.5)
        told = rembs(heard, patient_video._ssrc)
        assert told, "the relay sent the publisher no REMB"
        # Sending far more than the REMB says is congestion: the cap is the REMB itself (on a
        # clean link a publisher may go a little over it, so that the REMB can grow).
        cap = plane.rooms[call].publishers[("clinician", "video")].remb_cap
        assert cap is not None
        assert cap <= 150_000
        assert told[-1] <= 150_000
        # aiortc's encoder follows REMB down to its floor (250 kbit/s) from its 500 kbit/s start.
        encoder = getattr(patient_video, "_RTCRtpSender__encoder")  # noqa: B009
        assert encoder.target_bitrate < 500_000
        await patient.close()
        await clinician.close()

    async def test_a_publisher_whose_own_leg_loses_packets_is_asked_for_less(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        """The patient's thin uplink: the relay sees its losses and lowers what it asks for."""
        plane, outbox = relay
        call, patient, clinician = await call_of_two(plane, outbox)
        patient_video = transceiver(patient, "video", receiving=False).sender
        heard = record_feedback(patient_video)
        video_ssrcs = {patient_video._ssrc, hooks.rtx_ssrc(patient_video)}
        transport = patient_video.transport
        original = transport._send_rtp
        sent = 0

        async def lossy(data: bytes) -> None:  # half its video never reaches the relay
            nonlocal sent
            if len(data) >= 12 and int.from_bytes(data[8:12], "big") in video_ssrcs:
                sent += 1
                if sent % 2:
                    return
            await original(data)

        transport._send_rtp = lossy
        uplink = plane.rooms[call].participants["patient"].uplink
        await until(lambda: uplink.video_cap_bps is not None, 10)
        cap = uplink.video_cap_bps
        assert cap is not None
        assert cap < 0.9 * uplink.received_bps
        told = len(rembs(heard, patient_video._ssrc))
        await until(lambda: len(rembs(heard, patient_video._ssrc)) > told, 5)
        assert rembs(heard, patient_video._ssrc)[-1] <= cap
        transport._send_rtp = original
        await patient.close()
        await clinician.close()


class TestVideoPausesBeforeSoundSuffers:
    async def test_video_pauses_on_a_congested_link_audio_flows_and_video_comes_back(
        self, relay: tuple[Relay, Outbox], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(bandwidth, "RESUME_BACKOFF", 1.0)
        plane, outbox = relay
        call, patient, clinician = await call_of_two(plane, outbox)
        receiver = transceiver(clinician, "video", receiving=True).receiver
        for _ in range(20):  # 30 % lost and a low estimate, as a 64 kbit/s link reports it
            await report_loss(receiver, 0.3)
            await send_remb(receiver, 20_000)
            if video_messages(outbox, call, "patient"):
                break
            await asyncio.sleep(0.5)
        paused = video_messages(outbox, call, "patient")
        assert paused[0] == {
            "type": "video",
            "appointment_id": str(call),
            "role": "clinician",
            "state": "paused",
            "reason": "bandwidth",
        }
        assert video_messages(outbox, call, "clinician")[0] == paused[0]  # everyone is told
        await sound_without_video(clinician)  # to the thin side
        assert video_frames(patient) > 0  # the clinician's own video still reaches the patient
        # The link recovers: the loss reports stop, a healthy estimate comes.
        for _ in range(20):
            await report_loss(receiver, 0.0)
            await send_remb(receiver, 1_000_000)
            if len(video_messages(outbox, call, "patient")) > 1:
                break
            await asyncio.sleep(0.5)
        assert video_messages(outbox, call, "patient")[1]["state"] == "resumed"
        frames = video_frames(clinician)
        await until(lambda: video_frames(clinician) > frames + 10, 10)  # from a keyframe
        await patient.close()
        await clinician.close()

    async def test_a_low_estimate_without_congestion_does_not_pause(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        """A REMB follows what arrives: small video gets a small REMB; that is no reason."""
        plane, outbox = relay
        call, patient, clinician = await call_of_two(plane, outbox)
        receiver = transceiver(clinician, "video", receiving=True).receiver
        for _ in range(8):
            await report_loss(receiver, 0.0)
            await send_remb(receiver, 10_000)
            await asyncio.sleep(0.5)
        assert video_messages(outbox, call, "patient") == []
        frames = video_frames(clinician)
        await until(lambda: video_frames(clinician) > frames + 10, 10)
        await patient.close()
        await clinician.close()


class TestSoundOnly:
    async def test_asking_for_sound_only_stops_video_both_ways_and_tells_everyone(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        call, patient, clinician = await call_of_two(plane, outbox)
        await plane.video(call, "patient", enabled=False)
        expected = {
            "type": "video",
            "appointment_id": str(call),
            "role": "patient",
            "state": "paused",
            "reason": "requested",
        }
        assert video_messages(outbox, call, "clinician") == [expected]
        assert video_messages(outbox, call, "patient") == [expected]
        seen = await sound_without_video(patient, clinician)
        await plane.video(call, "patient", enabled=False)  # asked twice: said once
        assert len(video_messages(outbox, call, "clinician")) == 1
        await plane.video(call, "patient", enabled=True)
        assert video_messages(outbox, call, "clinician")[-1]["state"] == "resumed"
        await until(
            lambda: video_frames(patient) > seen[0] + 10 and video_frames(clinician) > seen[1] + 10,
            10,
        )
        await patient.close()
        await clinician.close()


class TestKeyframes:
    async def test_a_lost_keyframe_request_is_asked_again(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(), ice_servers=[])
        patient = Peer(plane, outbox, call, "patient", colour=RED, tone=440)
        await patient.join()
        room = plane.rooms[call]
        await until(lambda: ("patient", "video") in room.publishers, 10)
        await until(lambda: room.publishers[("patient", "video")].frames > 30, 10)  # past its first
        sender = transceiver(patient, "video", receiving=False).sender
        # The first two requests never reach the publisher (lost on the way). REMB is kept
        # from it too: aiortc's encoder restarts, with a keyframe, when its bitrate changes.
        original = sender._handle_rtcp_packet
        lost: list[RtcpPsfbPacket] = []

        async def lossy(packet: Any) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                return
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_PLI and len(lost) < 2:
                lost.append(packet)
                return
            await original(packet)

        sender._handle_rtcp_packet = lossy
        clinician = Peer(plane, outbox, call, "clinician", colour=BLUE, tone=880)
        await clinician.join()  # needs a keyframe to start
        await until(lambda: video_frames(clinician) > 5, 15)
        assert len(lost) == 2
        await patient.close()
        await clinician.close()


class TestDownlink:
    def test_overflow_sets_the_estimate_under_what_got_through_and_it_grows_back_slowly(
        self,
    ) -> None:
        link = Downlink()
        link.audio_bps, link.video_bps = 40_000.0, 300_000.0
        link.on_loss(0.3, now=1.0)  # 340 sent, 238 got through
        cut = link.loss_cap_bps
        assert cut is not None
        assert cut == pytest.approx(238_000 * bandwidth.HEADROOM)
        assert link.video_budget_bps == pytest.approx(cut - 40_000)
        link.on_loss(0.3, now=2.0)  # the publisher has not followed yet: no second cut
        assert link.loss_cap_bps == cut
        fallen = Downlink(loss_cap_bps=cut)  # the same, but the link has just fallen
        fallen._by_loss_estimate._cut_at, fallen.audio_bps, fallen.video_bps = (
            1.0,
            40_000.0,
            300_000.0,
        )
        fallen.on_loss(0.8, now=1.2)
        assert fallen.loss_cap_bps == pytest.approx(340_000 * 0.2 * bandwidth.HEADROOM)
        link.video_bps = link.video_budget_bps  # the publisher follows
        link.on_loss(0.03, now=3.0)  # some loss, under the cut: hold
        assert link.loss_cap_bps == cut
        link.on_loss(0.0, now=4.0)  # near what got through: a few kbit/s at a time
        assert link.loss_cap_bps == pytest.approx(cut + bandwidth.CAPACITY_STEP_BPS)
        second = 4
        while link._by_loss_estimate._capacity_bps is not None and second < 100:
            second += 1
            link.video_bps = link.video_budget_bps  # the publisher follows
            link.on_loss(0.0, now=float(second))
        assert second > 20  # step by step, sent without loss, past what got through
        # The link took more than at the overflow: growth is fast again.
        grown = link.loss_cap_bps
        assert grown is not None
        assert grown > 238_000 * (2 - bandwidth.NEAR_CAPACITY)
        link.on_loss(0.0, now=second + 1.0)
        assert link.loss_cap_bps == pytest.approx(grown * bandwidth.LOSS_GROWTH)

    def test_a_failed_try_doubles_the_wait_before_the_next(self) -> None:
        link = Downlink()
        t = link._last_tick
        link.on_remb(10_000, now=t)
        link.on_loss(0.31, now=t)
        assert link.tick(t + 0.5) is None
        assert link.tick(t + 2.6) == "paused"  # low and congested for PAUSE_AFTER
        back = t + 2.6 + bandwidth.RESUME_BACKOFF
        assert link.tick(back) == "resumed"  # no loss seen since
        link.on_loss(0.31, now=back + 1.0)  # the try meets loss: it gives up sooner
        link.on_remb(10_000, now=back + 1.0)
        assert link.tick(back + 1.1) is None
        paused = back + 1.1 + bandwidth.TRIAL_PAUSE_AFTER
        assert link.tick(paused) == "paused"
        assert link.tick(paused + bandwidth.RESUME_BACKOFF + 0.1) is None  # twice as long
        assert link.tick(paused + 2 * bandwidth.RESUME_BACKOFF) == "resumed"

    def test_loss_is_measured_over_whole_intervals_not_report_by_report(self) -> None:
        """A browser reports with every NACK and REMB; each report's own fraction swings."""
        heard: list[float] = []
        meter = LossMeter(heard.append)
        meter(1000, 0, now=10.0)  # the first report only starts the count
        meter(1010, 5, now=10.2)  # half of 10 lost: no interval yet
        meter(1100, 5, now=10.6)
        assert heard == []
        meter(1200, 10, now=11.0)  # 10 of 200 over the second
        assert heard == [pytest.approx(0.05)]
        meter(1300, 10, now=12.5)
        assert heard[-1] == 0.0
        meter(5, 12, now=14.0)  # a restarted sender: start counting again
        meter(105, 42, now=15.0)
        assert heard[1:] == [0.0, pytest.approx(0.3)]
        meter(125, 52, now=15.1)  # a link that has just fallen: half of 20 lost...
        assert len(heard) == 3
        meter(145, 62, now=15.3)  # ...half of 40 over 0.3 s: told at once
        assert heard[-1] == pytest.approx(0.5)

    def test_a_publisher_may_send_a_little_more_than_a_clean_links_remb_but_not_a_congested(
        self,
    ) -> None:
        link = Downlink()
        t = link._last_tick
        link.video_payload_bps = 50_000.0
        link.on_remb(60_000, now=t)  # follows what arrives; nothing wrong with the link
        assert link.publisher_cap_bps(t) == pytest.approx(60_000 * bandwidth.PROBE_FACTOR)
        link.on_loss(0.2, now=t)  # an overflow
        assert link.publisher_cap_bps(t) == link.video_budget_bps
        trying = Downlink()
        trying.on_remb(60_000, now=t)
        trying._resumed_at = t  # video tried again after a pause: exactly the try's rate
        assert trying.publisher_cap_bps(t + 5 * bandwidth.CONGESTION_MEMORY) == 60_000

    def test_a_low_estimate_alone_is_no_reason_to_pause(self) -> None:
        link = Downlink()
        t = link._last_tick
        for step in range(1, 20):
            link.on_remb(10_000, now=t + step * 0.5)
            assert link.tick(t + step * 0.5) is None


class TestKeyframeRequests:
    async def test_a_subscriber_asking_for_a_keyframe_gets_nothing_it_cannot_decode_meanwhile(
        self,
    ) -> None:
        """Its decoder drops every frame until a keyframe: sending them only fills its link."""
        publisher = Publisher("clinician", "video")
        asks: list[float] = []
        publisher.attach_source(object(), lambda: asks.append(time.monotonic()))
        source = publisher.source
        asking, other = publisher.subscribe(), publisher.subscribe()

        def frame(number: int, *, keyframe: bool) -> None:
            publisher.on_frame(
                "vp8",
                EncodedFrame(b"x" * 100, number * 3000, keyframe, time.monotonic()),
                source,
            )

        frame(1, keyframe=True)
        frame(2, keyframe=False)
        assert (len(asking._queue), len(other._queue)) == (2, 2)
        asked_before = len(asks)
        _keyframe_asked(asking, publisher)  # its PLI
        assert len(asks) > asked_before or publisher._deferred is not None
        frame(3, keyframe=False)
        assert (len(asking._queue), len(other._queue)) == (0, 3)
        assert asking.waiting_keyframe
        assert publisher.someone_waits()  # so the request is repeated if it was lost
        frame(4, keyframe=True)
        assert (len(asking._queue), len(other._queue)) == (1, 4)
        assert not publisher.someone_waits()

    def test_keyframe_requests_go_on_less_often_while_someone_waits(self) -> None:
        publisher = Publisher("patient", "video")
        asks: list[float] = []
        publisher.attach_source(object(), lambda: asks.append(1.0), waiting=lambda: True)
        now = 1000.0
        for _ in range(400):  # 100 s of control ticks, the source waiting for a keyframe
            now += 0.25
            publisher.repeat_keyframe_request(now)
        fast = tracks.KEYFRAME_ASKS
        slow = (100 - fast * tracks.KEYFRAME_REPEAT) / tracks.KEYFRAME_SLOW_REPEAT
        assert fast < len(asks) <= fast + slow + 1  # never given up, never hammered


class TestPacer:
    def test_nacks_are_answered_only_while_they_can_help(self) -> None:
        pacer = Pacer(Downlink())
        pacer.video_ssrcs.add(1234)
        packet = RtpPacket(payload_type=96, sequence_number=7, timestamp=0, ssrc=1234)
        pacer._remember(1234, packet.serialize())
        assert pacer.may_retransmit(1234, 7)
        assert not pacer.may_retransmit(1234, 7)  # resent once already
        assert not pacer.may_retransmit(1234, 8)  # never sent (or long gone)
        pacer._sent_at[1234 << 16 | 7] -= bandwidth.NACK_MAX_AGE + 0.1
        pacer._retransmitted.clear()
        assert not pacer.may_retransmit(1234, 7)  # too old to be played
        pacer._remember(1234, RtpPacket(payload_type=96, sequence_number=9, ssrc=1234).serialize())
        pacer.downlink.on_loss(0.3)  # 30 % lost: the link's queue overflows
        assert not pacer.may_retransmit(1234, 9)

    def test_abs_send_time_is_stamped_when_the_packet_leaves(self) -> None:
        extensions = HeaderExtensionsMap()
        extensions.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(
                        id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"
                    ),
                    RTCRtpHeaderExtensionParameters(
                        id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                    ),
                ]
            )
        )
        packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=5, ssrc=99)
        packet.extensions.mid = "1"
        packet.extensions.abs_send_time = 0x123456
        packet.payload = b"payload"
        restamped = RtpPacket.parse(
            restamp_abs_send_time(packet.serialize(extensions), 3), extensions
        )
        assert restamped.extensions.abs_send_time != 0x123456
        assert restamped.extensions.mid == "1"
        assert restamped.payload == b"payload"
        plain = RtpPacket(payload_type=96, sequence_number=1, timestamp=5, ssrc=99).serialize()
        assert restamp_abs_send_time(plain, 3) == plain  # nothing to stamp
