"""Calls of up to four: everyone gets everyone else, and is told whose track is whose.

The relay runs in the test's process (tests.media.harness) with real aiortc peers on
loopback: the patient, the clinician and two guests, each with a camera of its own colour and
a microphone of its own pitch, so what arrives on each transceiver says whose it is. Four
peers and the relay share this process's one event loop: the peers send small pictures and no
REMB of their own (the loop's lag would read, to their delay-based estimates, as a congested
link: a browser measures its own network).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from media.relay import Relay
from signaling.media import Consent, GuestConsent, SignalingError
from tests.media.clients import report_loss, rtc_configuration, send_remb, until
from tests.media.harness import Guard, Outbox, Peer, close_to, consent, guarded_relay, sees, streams

RED, BLUE, GREEN, YELLOW, MAGENTA = (
    (220, 30, 30),
    (30, 30, 220),
    (30, 200, 30),
    (220, 200, 30),
    (200, 30, 200),
)
INTERPRETER = f"interpreter:{uuid.uuid4()}"
CAREGIVER = f"caregiver:{uuid.uuid4()}"
EVERYONE = {
    "patient": (RED, 440.0),
    "clinician": (BLUE, 660.0),
    INTERPRETER: (GREEN, 880.0),
    CAREGIVER: (YELLOW, 1100.0),
}
GUESTS = {key: GuestConsent(video_visit=True, recording=True, seq=1) for key in EVERYONE}


def party_peer(
    plane: Relay,
    outbox: Outbox,
    call: uuid.UUID,
    key: str,
    colour: tuple[int, int, int],
    tone: float,
) -> Peer:
    return Peer(
        plane, outbox, call, key, colour=colour, tone=tone, size=(160, 120), estimates=False
    )


def mapped(outbox: Outbox, call: uuid.UUID, peer: Peer, others: dict[str, Any]) -> bool:
    """The peer's latest `streams` names each other participant's camera and microphone once,
    and what arrives on each mid is that participant's picture and pitch."""
    items = streams(outbox, call, peer.role)
    if items is None:
        return False
    named = sorted((item["participant"], item["kind"]) for item in items)
    if named != sorted((key, kind) for key in others for kind in ("audio", "video")):
        return False
    for item in items:
        assert item["source"] == "camera"
        received = peer.by_mid.get(item["mid"])
        if received is None:
            return False
        colour, tone = others[item["participant"]]
        if item["kind"] == "video" and not close_to(received.last_colour, colour):
            return False
        if item["kind"] == "audio" and abs((received.pitch() or 0) - tone) > 30:
            return False
    return True


def others_of(peer: Peer, everyone: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in everyone.items() if key != peer.role}


def frames(peer: Peer) -> dict[str, int]:
    return {mid: r.video_frames + r.audio_frames for mid, r in peer.by_mid.items()}


async def advancing(peers: list[Peer], within: float = 20) -> None:
    """Every track every peer receives gets new frames (video and sound alike)."""
    before = {peer.role: frames(peer) for peer in peers}

    def moved() -> bool:
        return all(
            all(frames(peer)[mid] > count for mid, count in before[peer.role].items())
            for peer in peers
        )

    await until(moved, within)


async def refusal(plane: Relay, outbox: Outbox, call: uuid.UUID, key: str) -> str:
    """`key` offers (sound only, from a peer connection of its own); the relay's error code."""
    pc = RTCPeerConnection(rtc_configuration([]))
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        await plane.offer(call, key, pc.localDescription.sdp)
        code: str = (await outbox.expect(call, key, "error"))["code"]
        return code
    finally:
        await pc.close()


class TestFourParty:
    async def test_everyone_gets_the_three_others_and_knows_whose_is_whose(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(guests=GUESTS), ice_servers=[])
        peers = [
            party_peer(plane, outbox, call, key, colour, tone)
            for key, (colour, tone) in EVERYONE.items()
        ]
        back = party_peer(plane, outbox, call, CAREGIVER, MAGENTA, 1100.0)
        try:
            await self._scenario(plane, outbox, call, peers, back)
        finally:
            for peer in [*peers, back]:
                await peer.close()

    async def _scenario(
        self, plane: Relay, outbox: Outbox, call: uuid.UUID, peers: list[Peer], back: Peer
    ) -> None:
        for peer in peers:
            await peer.join()
        await until(lambda: all(mapped(outbox, call, p, others_of(p, EVERYONE)) for p in peers), 40)
        # 4 publishers of video to 3 others each: 12 forwarded video streams, all moving.
        room = plane.rooms[call]
        forwarded = [
            track
            for participant in room.participants.values()
            for (_role, feed), track in participant.subscriptions.items()
            if feed == "video"
        ]
        assert len(forwarded) == 12
        await advancing(peers)
        assert not room.transcoding

        # A fifth person reaching the relay (signaling admits none) is refused; the four go on.
        fifth = f"clinician:{uuid.uuid4()}"
        assert await refusal(plane, outbox, call, fifth) == "call_full"
        assert sorted(room.present()) == sorted(EVERYONE)
        assert fifth not in room.participants
        await advancing(peers)

        # A guest leaves: nobody's `streams` names them any more.
        caregiver = peers[3]
        kept = {peer.role: peer.pc for peer in peers[:3]}
        await plane.leave(call, CAREGIVER)
        await caregiver.close()
        await until(
            lambda: all(
                CAREGIVER not in {i["participant"] for i in streams(outbox, call, p.role) or []}
                for p in peers[:3]
            ),
            10,
        )
        # They come back on a new peer connection (a new camera): everyone gets everything
        # again, and the others kept their connections throughout.
        await back.join()
        now = {**EVERYONE, CAREGIVER: (MAGENTA, 1100.0)}
        present = [*peers[:3], back]
        await until(lambda: all(mapped(outbox, call, p, others_of(p, now)) for p in present), 40)
        await advancing(present)
        assert {peer.role: peer.pc for peer in peers[:3]} == kept


class TestNoFifth:
    async def test_a_removed_guest_whose_peer_lingers_does_not_hold_a_place(
        self, tmp_path: Path
    ) -> None:
        """The relay reads the consent itself (a guard): four take part; the caregiver is
        removed (readings no longer name them) but their peer is still there; a guest admitted
        in their place, refused while the caregiver took part, is answered and seen."""
        newcomer = f"interpreter:{uuid.uuid4()}"
        standing = {key: GuestConsent(True, True, seq=1) for key in (INTERPRETER, CAREGIVER)}
        guard = Guard(Consent(True, True, seq=1, guests=standing))
        plane, outbox, _log = guarded_relay(tmp_path / "r", guard)
        call = uuid.uuid4()
        await plane.open_call(call, consent=guard.standing, ice_servers=[])
        peers = [
            party_peer(plane, outbox, call, key, colour, tone)
            for key, (colour, tone) in EVERYONE.items()
        ]
        late = party_peer(plane, outbox, call, newcomer, MAGENTA, 1320.0)
        try:
            for peer in peers:
                await peer.join()
            room = plane.rooms[call]
            guard.standing = Consent(
                True, True, seq=1, guests={**standing, newcomer: GuestConsent(True, True, seq=1)}
            )
            await until(lambda: room.consent.guest(newcomer) is not None, 5)
            assert await refusal(plane, outbox, call, newcomer) == "call_full"

            # The caregiver removed: no longer named, their peer not gone yet.
            guard.standing = Consent(
                True,
                True,
                seq=1,
                guests={INTERPRETER: standing[INTERPRETER], newcomer: standing[INTERPRETER]},
            )
            await until(lambda: room.consent.guest(CAREGIVER) is None, 5)
            assert CAREGIVER in room.present()
            await late.join()  # answered, not refused
            await until(lambda: sees(peers[0], MAGENTA), 20)
        finally:
            for peer in [*peers, late]:
                await peer.close()
            await plane.shutdown()


CYAN = (30, 200, 200)


def screen_mapped(outbox: Outbox, call: uuid.UUID, peer: Peer) -> bool:
    """The peer's `streams` names the clinician's screen, and what arrives there is it."""
    items = streams(outbox, call, peer.role) or []
    screens = [i for i in items if i["source"] == "screen"]
    if len(screens) != 1:
        return False
    [screen] = screens
    assert screen["participant"] == "clinician"
    assert screen["kind"] == "video"
    received = peer.by_mid.get(screen["mid"])
    return received is not None and close_to(received.last_colour, CYAN)


class TestScreenShare:
    async def test_the_clinicians_second_video_reaches_everyone_as_their_screen(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        plane, outbox = relay
        async with call_of_three(plane, outbox) as (call, three, peers):
            patient, clinician, interpreter = peers
            await clinician.add_video(CYAN)
            await plane.screen(call, "clinician", enabled=True)
            others = [patient, interpreter]
            await until(lambda: all(screen_mapped(outbox, call, p) for p in others), 40)
            # Their camera is still their camera.
            assert all(mapped_with_screen(outbox, call, p, others_of(p, three)) for p in others)
            await advancing(peers)

            await plane.screen(call, "clinician", enabled=False)
            for peer in others:
                items = streams(outbox, call, peer.role) or []
                assert [i for i in items if i["source"] == "screen"] == []
            # Sharing again: the same transceivers, told again.
            await plane.screen(call, "clinician", enabled=True)
            await until(lambda: all(screen_mapped(outbox, call, p) for p in others), 20)

    async def test_only_the_clinician_shares_a_screen(self, relay: tuple[Relay, Outbox]) -> None:
        plane, _outbox = relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(guests=GUESTS), ice_servers=[])
        with pytest.raises(SignalingError) as refused:
            await plane.screen(call, "patient", enabled=True)
        assert refused.value.code == "invalid_message"


class TestSecondVideoOfAnyoneElse:
    async def test_is_not_forwarded_and_not_decoded(self, relay: tuple[Relay, Outbox]) -> None:
        plane, outbox = relay
        async with call_of_three(plane, outbox) as (call, _three, peers):
            patient = peers[0]
            await patient.add_video(CYAN)
            room = plane.rooms[call]
            assert [key for key in room.publishers if key[0] == "patient"] == [
                ("patient", "audio"),
                ("patient", "video"),
            ]
            peer = room.participants["patient"].peer
            assert peer is not None
            receiving = [t for t in peer.pc.getTransceivers() if t.receiver.track is not None]
            assert len([t for t in receiving if t.kind == "video"]) == 2
            for transceiver in receiving:  # every one tapped: aiortc decodes none of them
                queue = getattr(transceiver.receiver, "_RTCRtpReceiver__decoder_queue")  # noqa: B009
                assert type(queue).__name__ == "_DecoderQueueStandIn"


def mapped_with_screen(outbox: Outbox, call: uuid.UUID, peer: Peer, others: dict[str, Any]) -> bool:
    """As `mapped`, the screen left aside."""
    items = streams(outbox, call, peer.role) or []
    cameras = [i for i in items if i["source"] == "camera"]
    for item in cameras:
        received = peer.by_mid.get(item["mid"])
        colour, _tone = others[item["participant"]]
        if item["kind"] == "video" and (
            received is None or not close_to(received.last_colour, colour)
        ):
            return False
    return len(cameras) == 2 * len(others)


@asynccontextmanager
async def call_of_three(
    plane: Relay, outbox: Outbox
) -> AsyncIterator[tuple[uuid.UUID, dict[str, Any], list[Peer]]]:
    """The patient, the clinician and the interpreter, joined and told whose is whose."""
    call = uuid.uuid4()
    await plane.open_call(call, consent=consent(guests=GUESTS), ice_servers=[])
    three = {key: EVERYONE[key] for key in ("patient", "clinician", INTERPRETER)}
    peers = [party_peer(plane, outbox, call, key, c, t) for key, (c, t) in three.items()]
    try:
        for peer in peers:
            await peer.join()
        await until(lambda: all(mapped(outbox, call, p, others_of(p, three)) for p in peers), 40)
        yield call, three, peers
    finally:
        for peer in peers:
            await peer.close()


def receiver_of(outbox: Outbox, call: uuid.UUID, peer: Peer, whose: str, kind: str) -> Any:
    """The peer's receiver of `whose` `kind`, as the relay's `streams` names it."""
    assert peer.pc is not None
    items = streams(outbox, call, peer.role) or []
    [mid] = [i["mid"] for i in items if i["participant"] == whose and i["kind"] == kind]
    [transceiver] = [t for t in peer.pc.getTransceivers() if t.mid == mid]
    return transceiver.receiver


class TestOneThinLink:
    async def test_a_thin_subscriber_pauses_on_its_own_leg_and_the_others_keep_quality(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        """The interpreter's link takes 150 kbit/s and loses packets; the clinician's takes
        3 Mbit/s (for two videos). The patient is not asked for the thin link's share: the
        interpreter's video pauses."""
        plane, outbox = relay
        async with call_of_three(plane, outbox) as (call, _three, peers):
            _patient, clinician, interpreter = peers
            thin = receiver_of(outbox, call, interpreter, "patient", "video")
            wide = receiver_of(outbox, call, clinician, "patient", "video")
            publisher = plane.rooms[call].publishers[("patient", "video")]

            def paused(role: str) -> bool:
                return any(
                    m.get("type") == "video" and m["role"] == role and m["state"] == "paused"
                    for m in outbox.messages[(call, "patient")]
                )

            for _ in range(30):  # what the two browsers say, twice a second
                await report_loss(thin, 0.03)
                await send_remb(thin, 150_000)
                await report_loss(wide, 0.0)
                await send_remb(wide, 3_000_000)
                if paused(INTERPRETER):
                    break
                await asyncio.sleep(0.5)
            assert paused(INTERPRETER)
            assert not paused("clinician")
            assert publisher.remb_cap is not None
            assert publisher.remb_cap >= 1_000_000  # not the thin link's 75 kbit/s share
            # The clinician keeps getting the patient's video; the interpreter still hears them.
            await advancing([clinician])
            items = streams(outbox, call, INTERPRETER) or []
            [mid] = [
                i["mid"] for i in items if i["participant"] == "patient" and i["kind"] == "audio"
            ]
            sound = interpreter.by_mid[mid].audio_frames
            await until(lambda: interpreter.by_mid[mid].audio_frames > sound + 20, 10)


class TestSharedLinks:
    async def test_a_link_carrying_two_videos_gives_each_publisher_half(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        """Three people, every link congested at 600 kbit/s: each publisher's video goes to two
        subscribers who each get two videos, so it is asked for no more than 300 kbit/s."""
        plane, outbox = relay
        async with call_of_three(plane, outbox) as (call, three, peers):
            receivers = [
                receiver_of(outbox, call, peer, other, "video")
                for peer in peers
                for other in three
                if other != peer.role
            ]
            room = plane.rooms[call]
            publishers = [room.publishers[(key, "video")] for key in three]

            downlinks = [p.downlink for p in room.participants.values()]

            def heard() -> bool:
                return all(
                    d.remb_bps == 600_000 and d.congested(time.monotonic()) for d in downlinks
                )

            def halved() -> bool:
                caps = [p.remb_cap for p in publishers]
                return all(cap is not None and 200_000 <= cap <= 300_000 for cap in caps)

            for _ in range(20):  # what the three browsers say, twice a second
                for receiver in receivers:
                    await report_loss(receiver, 0.03)
                    await send_remb(receiver, 600_000)
                if heard() and halved():
                    break
                await asyncio.sleep(0.5)
            assert heard()
            assert halved(), [p.remb_cap for p in publishers]


# A browser numbers its codecs its own way (Chrome: opus 111, VP8 96 and its RTX 97, ...);
# aiortc's own offer numbers them opus 96, VP8 97, RTX 98, ...
BROWSER_NUMBERS = {96: 111, 97: 120, 98: 121, 99: 122, 100: 123, 101: 124, 102: 125}


def renumbered(sdp: str) -> str:
    """The offer with its dynamic payload types numbered as BROWSER_NUMBERS says."""

    def number(value: str) -> str:
        return str(BROWSER_NUMBERS.get(int(value), int(value))) if value.isdigit() else value

    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            head = line.split(" ")
            line = " ".join(head[:3] + [number(value) for value in head[3:]])
        for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
            if line.startswith(prefix):
                value, rest = line[len(prefix) :].split(" ", 1)
                if prefix == "a=fmtp:" and rest.startswith("apt="):
                    rest = "apt=" + number(rest[len("apt=") :])
                line = prefix + number(value) + " " + rest
        lines.append(line)
    return "\r\n".join(lines)


class BrowserNumbering(Peer):
    def rewrite(self, sdp: str) -> str:
        return renumbered(sdp)


def payload_types(
    plane: Relay, call: uuid.UUID, role: str
) -> dict[str, list[tuple[int | None, str]]]:
    """What each of the relay's sections with this participant sends and reads, by mid."""
    peer = plane.rooms[call].participants[role].peer
    assert peer is not None
    return {
        t.mid: [(c.payloadType, c.mimeType.lower()) for c in t._codecs]
        for t in peer.pc.getTransceivers()
        if t.mid is not None
    }


class TestRelayOffers:
    async def test_keep_the_payload_types_a_browser_chose(
        self, relay: tuple[Relay, Outbox]
    ) -> None:
        """The relay's own offer (a guest joins a running call) numbers each codec as the
        connection already does: a browser answering switches to the offer's numbers, while
        the relay's receivers keep the first ones (the sound would be dropped and the video
        read as retransmissions, until the stall check builds a new connection)."""
        plane, outbox = relay
        call = uuid.uuid4()
        await plane.open_call(call, consent=consent(guests=GUESTS), ice_servers=[])
        two = {key: EVERYONE[key] for key in ("patient", "clinician")}
        peers: list[Peer] = [
            BrowserNumbering(
                plane, outbox, call, key, colour=c, tone=t, size=(160, 120), estimates=False
            )
            for key, (c, t) in two.items()
        ]
        guest = party_peer(plane, outbox, call, INTERPRETER, *EVERYONE[INTERPRETER])
        try:
            for peer in peers:
                await peer.join()
            await until(lambda: all(mapped(outbox, call, p, others_of(p, two)) for p in peers), 40)
            before = {peer.role: payload_types(plane, call, peer.role) for peer in peers}
            assert (111, "audio/opus") in before["patient"]["0"]  # as the browser numbered
            sources = {key: p.source for key, p in plane.rooms[call].publishers.items()}

            await guest.join()
            three = {**two, INTERPRETER: EVERYONE[INTERPRETER]}
            everyone = [*peers, guest]
            await until(
                lambda: all(mapped(outbox, call, p, others_of(p, three)) for p in everyone), 40
            )
            for peer in peers:
                after = payload_types(plane, call, peer.role)
                assert len(after) > len(before[peer.role])  # the relay's offer added sections
                for mid, codecs in before[peer.role].items():
                    assert after[mid] == codecs, (peer.role, mid)
                numbers: dict[int | None, str] = {}
                for codecs in after.values():  # in the bundle, a number names one codec
                    for number, name in codecs:
                        assert numbers.setdefault(number, name) == name, (peer.role, number)
            # Nobody's connection was rebuilt: the same receivers feed the publishers.
            room = plane.rooms[call]
            assert {key: room.publishers[key].source for key in sources} == sources
        finally:
            for peer in [*peers, guest]:
                await peer.close()
