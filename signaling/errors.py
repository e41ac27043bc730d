"""The refusal a socket is answered with: raised by signaling and, through the interface in
`signaling.media`, by the relay."""

from __future__ import annotations


class SignalingError(Exception):
    """Answered to the socket as `{"type":"error","code","message"}`; the socket stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
