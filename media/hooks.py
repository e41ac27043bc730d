"""Every aiortc and aioice internal the relay relies on, in one place.

aiortc decodes every received frame and encodes every sent one. The relay forwards instead:

- `tap_receiver` gives a receiver our frame assembler in place of its jitter buffer, and a
  stand-in for its decoder queue, so complete *encoded* frames reach the relay as soon as their
  last packet arrives (aiortc's buffer waits for the next frame, and four for audio) and nothing
  is decoded. The receiver's own thread idles until the receiver stops.
- The sender needs no hook to send: given an `av.Packet`, `RTCRtpSender` packetizes it without
  encoding. `on_feedback` lets the relay hear a subscriber's PLI/FIR, REMB and receiver reports,
  which aiortc would otherwise only hand to an encoder it does not have; `request_keyframe`
  sends a PLI to a publisher.
- Bandwidth (media.bandwidth): `pace_transport` puts a subscriber's pacer in front of their
  DTLS transport, `gate_retransmissions` lets the pacer refuse NACKs that cannot help,
  `cap_remb` lowers the REMB aiortc sends a publisher to what its subscribers can take and
  `send_remb` sends one of the relay's own.
- `restrict_host_addresses` limits the addresses aioice offers as host candidates.
- `create_offer` is the relay's own offer on a connection already negotiated: it keeps the
  payload types the connection uses (aiortc would number every codec afresh, and a browser
  that answers switches to the new numbers while aiortc's receivers keep the old ones).

These reach into private, name-mangled attributes, so the aiortc version is pinned in
`pyproject.toml` and `check()` (run at start-up and by the tests) fails loudly and clearly if an
upgrade moved any of them.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aioice.ice
import aiortc
import aiortc.rtcpeerconnection
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCSessionDescription
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

AIORTC_VERSION = "1.16.0"

_RECEIVER_ATTRIBUTES = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__jitter_buffer",
    "_RTCRtpReceiver__decoder_queue",
    "_RTCRtpReceiver__decoder_thread",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__rtcp_ssrc",
    "_RTCRtpReceiver__remote_streams",
    "_send_rtcp_pli",
    "_send_rtcp",
    "_handle_rtp_packet",
)
_SENDER_ATTRIBUTES = (
    "_handle_rtcp_packet",
    "_retransmit",
    "_RTCRtpSender__rtp_header_extensions_map",
)


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
    missing += [
        name
        for name in _SENDER_ATTRIBUTES
        if not hasattr(RTCRtpSender, name) and name not in _init_attributes(RTCRtpSender)
    ]
    if not hasattr(RTCDtlsTransport, "_send_rtp"):
        missing.append("RTCDtlsTransport._send_rtp")
    if not callable(getattr(aiortc.rtcpeerconnection, "filter_preferred_codecs", None)):
        missing.append("aiortc.rtcpeerconnection.filter_preferred_codecs")
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


def incoming_counts(receiver: RTCRtpReceiver) -> tuple[int, int] | None:
    """(packets expected, packets lost) so far on what this receiver hears, cumulative.

    Lost means never received, retransmissions included, as in the receiver's own reports.
    None before anything arrived.
    """
    streams: dict[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
    expected = lost = 0
    for stream in list(streams.values()):
        if stream.max_seq is None:
            continue
        expected += stream.packets_expected
        lost += max(0, stream.packets_expected - stream.packets_received)
    return (expected, lost) if expected else None


def request_keyframe(receiver: RTCRtpReceiver) -> Awaitable[None] | None:
    """Send a Picture Loss Indication to the publisher behind this receiver."""
    ssrcs = sources(receiver)
    if not ssrcs:
        return None
    return receiver._send_rtcp_pli(ssrcs[0])


def on_feedback(
    sender: RTCRtpSender,
    *,
    keyframe: Callable[[], None],
    remb: Callable[[int], None] | None = None,
    loss: Callable[[int, int], None] | None = None,
) -> None:
    """Hear what the subscriber behind this sender says about what it gets.

    `keyframe()` on a PLI/FIR, `remb(bps)` on a REMB naming this sender's SSRC (browsers send it
    with media SSRC 0; aiortc routes it by the SSRCs inside), `loss(highest_sequence,
    packets_lost)` (cumulative counters) on each receiver report block about this sender.
    Called again for the same sender (it carries a new track), the new callbacks replace the
    old ones.
    """
    if not _set_first(sender, "_televisit_feedback", _Feedback(keyframe, remb, loss)):
        return
    original = sender._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        now: _Feedback = sender._televisit_feedback  # type: ignore[attr-defined]
        if isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                now.keyframe()
            elif packet.fmt == RTCP_PSFB_APP and now.remb is not None:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    pass
                else:
                    if sender._ssrc in ssrcs:
                        now.remb(bitrate)
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket) and now.loss is not None:
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    now.loss(report.highest_sequence, report.packets_lost)
        await original(packet)

    sender._handle_rtcp_packet = handle  # type: ignore[method-assign]  # per-instance hook


def _set_first(target: object, name: str, value: object) -> bool:
    """Keep `value` on `target`; True the first time (the hook reading it is to be installed)."""
    first = not hasattr(target, name)
    setattr(target, name, value)
    return first


@dataclass(frozen=True, slots=True)
class _Feedback:
    keyframe: Callable[[], None]
    remb: Callable[[int], None] | None
    loss: Callable[[int, int], None] | None


class Paced(Protocol):
    async def send(self, data: bytes, original: Callable[[bytes], Awaitable[None]]) -> None: ...

    def may_retransmit(self, ssrc: int, sequence_number: int) -> bool: ...


def pace_transport(transport: RTCDtlsTransport, pacer: Paced) -> None:
    """Every RTP and RTCP packet this transport sends goes through `pacer.send` first.

    Idempotent; a transport already paced by another pacer is taken over by this one.
    """
    if getattr(transport, "_televisit_pacer", None) is pacer:
        return
    original = RTCDtlsTransport._send_rtp.__get__(transport)

    async def send(data: bytes) -> None:
        await pacer.send(data, original)

    transport._send_rtp = send  # type: ignore[method-assign]  # per-instance hook
    transport._televisit_pacer = pacer  # type: ignore[attr-defined]


def gate_retransmissions(sender: RTCRtpSender, pacer: Paced) -> None:
    """Answer a NACK only when `pacer.may_retransmit` says the packet can still help."""
    if not _set_first(sender, "_televisit_pacer", pacer):
        return
    original = sender._retransmit

    async def retransmit(sequence_number: int) -> None:
        current: Paced = sender._televisit_pacer  # type: ignore[attr-defined]
        if current.may_retransmit(sender._ssrc, sequence_number):
            await original(sequence_number)

    sender._retransmit = retransmit  # type: ignore[method-assign]  # per-instance hook


def abs_send_time_id(sender: RTCRtpSender) -> int | None:
    """The header extension id the sender stamps abs-send-time with, once negotiated."""
    extensions = getattr(sender, "_RTCRtpSender__rtp_header_extensions_map", None)
    ids = getattr(extensions, "_HeaderExtensionsMap__ids", None)
    value = getattr(ids, "abs_send_time", None)
    return int(value) if value else None


def rtx_ssrc(sender: RTCRtpSender) -> int | None:
    value = getattr(sender, "_rtx_ssrc", None)
    return int(value) if value else None


_original_send_rtcp: weakref.WeakKeyDictionary[RTCRtpReceiver, Callable[[Any], Awaitable[None]]]
_original_send_rtcp = weakref.WeakKeyDictionary()


def cap_remb(
    receiver: RTCRtpReceiver,
    *,
    cap: Callable[[], float | None],
    heard: Callable[[int], None],
) -> None:
    """The REMB aiortc sends the publisher says no more than `cap()`.

    aiortc estimates the publisher's own leg from abs-send-time and sends REMB; `heard(bps)`
    gets that estimate, and the publisher is told the lower of the two.
    """
    original = receiver._send_rtcp
    _original_send_rtcp[receiver] = original

    async def send(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = 0, []
            if ssrcs:
                heard(bitrate)
                limit = cap()
                if limit is not None and limit < bitrate:
                    packet = _remb(packet.ssrc, int(limit), ssrcs)
        await original(packet)

    receiver._send_rtcp = send  # type: ignore[method-assign]  # per-instance hook


def send_remb(receiver: RTCRtpReceiver, bps: float) -> Awaitable[None] | None:
    """Send the publisher behind this receiver a REMB of `bps` for its media SSRCs."""
    rtcp_ssrc = getattr(receiver, "_RTCRtpReceiver__rtcp_ssrc", None)
    ssrcs = sources(receiver)
    if rtcp_ssrc is None or not ssrcs:
        return None
    send = _original_send_rtcp.get(receiver, receiver._send_rtcp)
    return send(_remb(rtcp_ssrc, int(bps), ssrcs))


def _remb(ssrc: int, bps: int, ssrcs: list[int]) -> RtcpPsfbPacket:
    return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=ssrc, media_ssrc=0, fci=pack_remb_fci(bps, ssrcs))


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


class _Negotiated(list[RTCRtpCodecParameters]):
    """A transceiver's codecs as negotiated, standing in for its preferences in one offer."""


async def create_offer(pc: RTCPeerConnection) -> RTCSessionDescription:
    """The relay's own offer, each codec keeping the payload type the connection uses.

    aiortc's `createOffer` numbers every section's codecs afresh (opus 96, VP8 97, ...), even
    on a connection negotiated with a browser's numbers (opus 111, VP8 96, ...). The browser
    answers and sends with the new numbers from then on, while aiortc's receivers keep routing
    and depayloading by the old ones: the participant's sound is dropped and their video read
    as retransmissions, until the stall check (media.health) builds a new connection. So a
    section already negotiated offers what it negotiated, and a new section the codecs of the
    first negotiated one of its kind (the same number never names two codecs in the bundle).
    """
    transceivers = pc.getTransceivers()
    first: dict[str, list[RTCRtpCodecParameters]] = {}
    for transceiver in transceivers:
        if transceiver.mid is not None and transceiver._codecs:
            first.setdefault(transceiver.kind, list(transceiver._codecs))
    saved = [(t, t._preferred_codecs) for t in transceivers]
    for transceiver in transceivers:
        if transceiver.mid is not None and transceiver._codecs:
            transceiver._preferred_codecs = _Negotiated(transceiver._codecs)  # type: ignore[assignment]
        elif transceiver.kind in first:
            transceiver._preferred_codecs = _Negotiated(first[transceiver.kind])  # type: ignore[assignment]
    original = aiortc.rtcpeerconnection.filter_preferred_codecs

    def keep(codecs: list[RTCRtpCodecParameters], preferred: Any) -> Any:
        if isinstance(preferred, _Negotiated):
            return [copy.deepcopy(codec) for codec in preferred]
        return original(codecs, preferred)

    # createOffer awaits nothing: no other offer runs while the stand-in is in place.
    aiortc.rtcpeerconnection.filter_preferred_codecs = keep
    try:
        return await pc.createOffer()
    finally:
        aiortc.rtcpeerconnection.filter_preferred_codecs = original
        for transceiver, preferred in saved:
            transceiver._preferred_codecs = preferred
