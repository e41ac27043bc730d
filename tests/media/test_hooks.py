"""The aiortc internals the relay relies on: fail clearly if an upgrade moves them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiortc
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from media import hooks
from media.frames import EncodedFrame, FrameAssembler
from tests.media.clients import ColourCamera, rtc_configuration, until


class TestCheck:
    def test_the_installed_aiortc_is_the_one_the_hooks_know(self) -> None:
        hooks.check()

    def test_another_version_is_refused_with_a_clear_message(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(aiortc, "__version__", "9.9.9")
        with pytest.raises(hooks.HookError, match=r"aiortc 9\.9\.9.*media/hooks\.py"):
            hooks.check()

    def test_a_moved_internal_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delattr(RTCRtpReceiver, "_send_rtcp_pli")
        with pytest.raises(hooks.HookError, match="_send_rtcp_pli"):
            hooks.check()


class TestTap:
    async def test_a_tapped_receiver_hands_over_encoded_frames_and_decodes_none(self) -> None:
        """Two peer connections in this process: the receiving one is tapped."""
        sender, receiver = (RTCPeerConnection(rtc_configuration([])) for _ in range(2))
        sender.addTrack(ColourCamera((200, 10, 10)))
        frames: list[tuple[str, EncodedFrame]] = []
        decoded: list[Any] = []
        drains: list[asyncio.Task[None]] = []

        @receiver.on("track")
        def _on_track(track: Any) -> None:
            transceiver = next(t for t in receiver.getTransceivers() if t.receiver.track is track)
            tapped = transceiver.receiver

            def sink(codec: Any, frame: EncodedFrame) -> None:
                frames.append((codec.name, frame))

            hooks.tap_receiver(tapped, FrameAssembler("video", hooks.codec_of(tapped), sink), sink)

            async def drain() -> None:
                decoded.append(await track.recv())

            drains.append(asyncio.ensure_future(drain()))

        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(
            RTCSessionDescription(sdp=receiver.localDescription.sdp, type="answer")
        )
        await until(lambda: len(frames) >= 30, 15)
        assert frames[0][0] == "VP8"
        assert frames[0][1].keyframe
        assert not decoded  # the receiver's own decoder never saw a frame
        [transceiver] = receiver.getTransceivers()
        assert hooks.receiver_started(transceiver.receiver)
        await sender.close()
        await receiver.close()
        for task in drains:
            task.cancel()


class TestKeyframeRequests:
    def test_a_pli_names_the_media_stream_not_its_retransmission_stream(self) -> None:
        """Browsers probe bandwidth on the RTX SSRC, so it is often the newest one heard."""

        class Source:
            def __init__(self, ssrc: int) -> None:
                self.source = ssrc

        class Receiver:
            def getSynchronizationSources(self) -> list[Source]:
                return [Source(2222), Source(1111)]  # newest first: the RTX stream, then media

        receiver = Receiver()
        setattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {2222: 1111})  # noqa: B010 (aiortc's mangled name)
        assert hooks.sources(receiver) == [1111]  # type: ignore[arg-type]  # a stand-in receiver
