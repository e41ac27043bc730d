"""Every WebSocket message, validated: pydantic discriminated unions on `"type"`.

Client messages are parsed into these models; anything else (unknown type, missing field, wrong
shape) is answered with `{"type":"error","code":"invalid_message"}` and dropped. Server messages
are plain dicts built by the functions at the bottom, one per contract message.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

# One WebSocket message may be at most this long (the contract's limit).
MAX_MESSAGE_BYTES = 64 * 1024

Sdp = Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_BYTES)]
# A chat message's text, in characters (the contract's 1-2,000; the database checks it too).
MAX_CHAT_TEXT = 2000


def _chat_text(text: str) -> str:
    """Kept as sent; refused when there is nothing to read, or a NUL no database stores."""
    if not text.strip():
        raise ValueError("the text is empty")
    if "\x00" in text:
        raise ValueError("the text holds a NUL character")
    return text


ChatText = Annotated[str, Field(max_length=MAX_CHAT_TEXT), AfterValidator(_chat_text)]


class _Message(BaseModel):
    # Extra fields are ignored, not refused: clients may send more than we read.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Candidate(_Message):
    candidate: str = Field(max_length=2048)
    sdpMid: str | None = Field(default=None, max_length=64)
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=64)


class Offer(_Message):
    type: Literal["offer"]
    sdp: Sdp


class Answer(_Message):
    type: Literal["answer"]
    sdp: Sdp


class CandidateMessage(_Message):
    type: Literal["candidate"]
    # None, or an empty `candidate` string, ends the candidates.
    candidate: Candidate | None = None


class Leave(_Message):
    type: Literal["leave"]


class Ping(_Message):
    type: Literal["ping"]


class DeviceCheck(_Message):
    """The verdict of the patient page's connection test, for the clinician's queue."""

    type: Literal["device_check"]
    verdict: Literal["direct", "turn", "failed", "unknown"]


class VideoRequest(_Message):
    """Sound only (`enabled` false): no video goes to this participant, theirs goes to nobody."""

    type: Literal["video"]
    enabled: bool


class PeerMessage(_Message):
    """Delivered to the call's other participants (in-call chat, "camera off", "muted")."""

    type: Literal["message"]
    # Any JSON object; the socket's 64 KiB limit bounds it.
    data: dict[str, Any]


class Chat(_Message):
    """A chat message for everyone in the call, kept with the visit (signaling.chat)."""

    type: Literal["chat"]
    text: ChatText


PatientMessage = Annotated[
    Offer
    | Answer
    | CandidateMessage
    | Leave
    | Ping
    | PeerMessage
    | DeviceCheck
    | VideoRequest
    | Chat,
    Field(discriminator="type"),
]


class _ForCall(_Message):
    appointment_id: uuid.UUID


class Auth(_Message):
    type: Literal["auth"]
    token: str = Field(max_length=4096)


class Admit(_ForCall):
    """The patient (no `participant_id`), or a guest waiting to join the running call."""

    type: Literal["admit"]
    participant_id: uuid.UUID | None = None


class End(_ForCall):
    type: Literal["end"]


class NoShow(_ForCall):
    type: Literal["no_show"]


class ClinicOffer(_ForCall):
    type: Literal["offer"]
    sdp: Sdp


class ClinicAnswer(_ForCall):
    type: Literal["answer"]
    sdp: Sdp


class ClinicCandidate(_ForCall):
    type: Literal["candidate"]
    candidate: Candidate | None = None


class ClinicLeave(_ForCall):
    type: Literal["leave"]


class ClinicPeerMessage(_ForCall):
    type: Literal["message"]
    data: dict[str, Any]


class ClinicVideo(_ForCall):
    type: Literal["video"]
    enabled: bool


class ClinicChat(_ForCall):
    type: Literal["chat"]
    text: ChatText


class ClinicScreen(_ForCall):
    """The clinician shares their screen (their second sending video) or stops."""

    type: Literal["screen"]
    enabled: bool


class Record(_ForCall):
    type: Literal["record"]
    action: Literal["start", "stop"]


ClinicMessage = Annotated[
    Auth
    | Admit
    | End
    | NoShow
    | ClinicOffer
    | ClinicAnswer
    | ClinicCandidate
    | ClinicLeave
    | Record
    | ClinicVideo
    | ClinicScreen
    | ClinicPeerMessage
    | ClinicChat
    | Ping,
    Field(discriminator="type"),
]

_patient = TypeAdapter[PatientMessage](PatientMessage)
_clinic = TypeAdapter[ClinicMessage](ClinicMessage)


class InvalidMessage(ValueError):
    pass


def parse_patient(text: str) -> PatientMessage:
    try:
        return _patient.validate_json(text)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc)) from None


def parse_clinic(text: str) -> ClinicMessage:
    try:
        return _clinic.validate_json(text)
    except ValidationError as exc:
        raise InvalidMessage(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


def candidate_dict(candidate: Candidate | None) -> dict[str, Any] | None:
    return None if candidate is None else candidate.model_dump()


# Server -> client --------------------------------------------------------------------------


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def waiting(position: int | None, estimated_wait_seconds: int | None) -> dict[str, Any]:
    return {
        "type": "waiting",
        "position": position,
        "estimated_wait_seconds": estimated_wait_seconds,
    }


def admitted(ice_servers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "admitted", "ice_servers": ice_servers}


def call(
    appointment_id: uuid.UUID, ice_servers: list[dict[str, Any]], *, chat_count: int | None = None
) -> dict[str, Any]:
    """The console holds the call (again): negotiate. `chat_count` (when known): how many
    messages the call's chat has, so the console reads the history only when it lacks some."""
    message: dict[str, Any] = {
        "type": "call",
        "appointment_id": str(appointment_id),
        "ice_servers": ice_servers,
    }
    if chat_count is not None:
        message["chat_count"] = chat_count
    return message


def peer(
    event: Literal["joined", "left"],
    role: str,
    *,
    participant: str | None = None,
    participant_id: uuid.UUID | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Someone joined or left the call. With `participant` (their key: "patient", "clinician",
    "interpreter:<id>"...), also who: their guest id (null for the patient and the clinician)
    and the name their tile shows."""
    message: dict[str, Any] = {"type": "peer", "event": event, "role": role}
    if participant is not None:
        message["participant"] = participant
        message["participant_id"] = None if participant_id is None else str(participant_id)
        message["name"] = name
    return message


def ended(reason: str, appointment_id: uuid.UUID | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "ended", "reason": reason}
    if appointment_id is not None:
        message["appointment_id"] = str(appointment_id)
    return message


def peer_message(sender: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "from": sender, "data": data}


def video(
    appointment_id: uuid.UUID,
    role: str,
    state: Literal["paused", "resumed"],
    reason: Literal["bandwidth", "requested"],
) -> dict[str, Any]:
    """`role`'s incoming video stopped or came back (for "requested": theirs both ways)."""
    return {
        "type": "video",
        "appointment_id": str(appointment_id),
        "role": role,
        "state": state,
        "reason": reason,
    }


def chat(
    appointment_id: uuid.UUID,
    participant: str,
    role: str,
    name: str,
    text: str,
    sent_at: str,
    *,
    message_id: uuid.UUID,
) -> dict[str, Any]:
    """A chat message, as everyone in the call gets it (the sender too: it was stored);
    `participant` is the sender's participant key ("patient", "interpreter:<id>", ...); `id`
    is the stored message's, as `GET /appointments/{id}/chat` gives it (a page that loads the
    history while messages arrive shows each once)."""
    return {
        "type": "chat",
        "id": str(message_id),
        "appointment_id": str(appointment_id),
        "from": {"role": role, "name": name, "participant": participant},
        "text": text,
        "sent_at": sent_at,
    }


def chat_history(appointment_id: uuid.UUID, items: list[dict[str, Any]]) -> dict[str, Any]:
    """What was said in the call before, for a page coming (back) into it: each item the `chat`
    message it was sent as, oldest first (signaling.chat.history)."""
    return {"type": "chat_history", "appointment_id": str(appointment_id), "items": items}


def pong() -> dict[str, Any]:
    return {"type": "pong"}
