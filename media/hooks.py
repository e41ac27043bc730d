"""Every aiortc and aioice internal the relay relies on, in one place.

aiortc decodes every received frame and encodes every sent one. The relay forwards instead:

- `tap_receiver` gives a receiver our frame assembler in place of its jitter buffer, and a
  stand-in for its decoder queue, so complete *encoded* frames reach the relay as soon as their
  last packet arrives (aiortc's buffer waits for the next frame, and four for audio) and nothing
  is decoded. The receiver's own thread idles until the receiver stops.
- The sender needs no hook to send: given an `av.Packet`, `RTCRtpSender` packetizes it without
  encoding. `on_keyframe_request` lets the relay hear a subscriber's PLI/FIR, which aiortc would
  otherwise only turn into an encoder flag, and `request_keyframe` sends a PLI to a publisher.
- `restrict_host_addresses` limits the addresses aioice offers as host candidates.

These reach into private, name-mangled attributes, so the aiortc version is pinned in
`pyproject.toml` and `check()` (run at start-up and by the tests) fails loudly and clearly if an
upgrade moved any of them.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aioice.ice
import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket

AIORTC_VERSION = "1.16.0"

_RECEIVER_ATTRIBUTES = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__decoder_queue",
    "_RTCRtpReceiver__decoder_thread",
    "_RTCRtpReceiver__rtx_ssrc",
    "_send_rtcp_pli",
    "_handle_rtp_packet",
)
_SENDER_ATTRIBUTES = ("_handle_rtcp_packet",)


class HookError(RuntimeError):
    """aiortc no longer looks the way the relay's hooks expect."""


def check() -> None:
    """Raise HookError naming what changed, if this aiortc is not the one the hooks know."""
    if aiortc.__version__ != AIORTC_VERSION:
        raise HookError(
            f"the media relay hooks were written for aiortc {AIORTC_VERSION}; "
            f"aiortc {aiortc.__version__} is installed: review media/hooks.py before upgrading"
        )
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        raise HookError("aioice.ice.get_host_addresses is gone: see restrict_host_addresses")
    missing = [
        name
        for name in _RECEIVER_ATTRIBUTES
        if not hasattr(RTCRtpReceiver, name) and name not in _init_attributes(RTCRtpReceiver)
    ]
    missing += [name for name in _SENDER_ATTRIBUTES if not hasattr(RTCRtpSender, name)]
    if missing:
        raise HookError(f"aiortc internals the relay needs are gone: {', '.join(missing)}")


def _init_attributes(cls: type) -> set[str]:
    """Attribute names `cls.__init__` uses, mangled as assigned on self (from its bytecode)."""
    init = vars(cls)["__init__"]
    return set(init.__code__.co_names)


EncodedFrameSink = Callable[[RTCRtpCodecParameters, Any], None]


class _DecoderQueueStandIn:
    """Takes the place of the receiver's decoder queue: frames go to the sink, not a decoder.

    The receiver's decoder thread blocks in `get()` until the receiver stops and puts None.
    """

    def __init__(self, sink: EncodedFrameSink) -> None:
        self._sink = sink
        self._stopped = threading.Event()

    def put(self, item: tuple[RTCRtpCodecParameters, Any] | None) -> None:
        if item is None:
            self._stopped.set()
            return
        codec, frame = item
        self._sink(codec, frame)

    def get(self) -> None:
        self._stopped.wait()
        return None


def codec_of(receiver: RTCRtpReceiver) -> Callable[[int], RTCRtpCodecParameters | None]:
    """The receiver's negotiated codec for an RTP payload type."""
    codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, "_RTCRtpReceiver__codecs")  # noqa: B009
    return codecs.get


def tap_receiver(receiver: RTCRtpReceiver, assembler: Any, sink: EncodedFrameSink) -> None:
    """Route a receiver's complete encoded frames to `sink`, assembled by `assembler`.

    Call before the receiver starts (before `setRemoteDescription` completes its `receive()`):
    the decoder thread is started with the queue it finds then.
    """
    for name in ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue"):
        if not hasattr(receiver, name):
            raise HookError(f"aiortc's RTCRtpReceiver has no {name}: see media/hooks.py")
    setattr(receiver, "_RTCRtpReceiver__jitter_buffer", assembler)  # noqa: B010 (private)
    setattr(receiver, "_RTCRtpReceiver__decoder_queue", _DecoderQueueStandIn(sink))  # noqa: B010


def negotiated_codec(transceiver: Any) -> str | None:
    """The codec a transceiver's sender uses: the first one negotiated (lower-case name)."""
    codecs = getattr(transceiver, "_codecs", None) or []
    return str(codecs[0].name).lower() if codecs else None


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    return getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is not None


def sources(receiver: RTCRtpReceiver) -> list[int]:
    """The media SSRCs this receiver has heard from, newest first.

    Retransmission (RTX) streams are left out: browsers send bandwidth probes on them, so the
    newest SSRC is often an RTX one, and a PLI naming it is ignored by the sender.
    """
    rtx: dict[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
    return [s.source for s in receiver.getSynchronizationSources() if s.source not in rtx]


def request_keyframe(receiver: RTCRtpReceiver) -> Awaitable[None] | None:
    """Send a Picture Loss Indication to the publisher behind this receiver."""
    ssrcs = sources(receiver)
    if not ssrcs:
        return None
    return receiver._send_rtcp_pli(ssrcs[0])


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` whenever the subscriber behind this sender asks for a keyframe."""
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            callback()
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]  # per-instance hook


_allowed_host_addresses: list[str] | None = None
_original_get_host_addresses = aioice.ice.get_host_addresses
_lock = threading.Lock()


def restrict_host_addresses(addresses: Sequence[str] | None) -> None:
    """Offer only these local addresses as host candidates (None: aioice's own choice).

    aioice leaves 127.0.0.1 out on its own; listed here, it is used.
    """
    global _allowed_host_addresses
    with _lock:
        _allowed_host_addresses = list(addresses) if addresses else None
        aioice.ice.get_host_addresses = (
            _restricted if _allowed_host_addresses is not None else _original_get_host_addresses
        )


def _restricted(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    allowed = _allowed_host_addresses or []
    return [a for a in allowed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]
