"""Messages for a call's participants, wherever their sockets are.

`participant:{appointment}:{role}` carries what the patient's socket, or the console holding the
call, is to be sent; a new socket for the same participant takes over and the old one is closed.
News is *posted*: while Redis is away it is lost, as pub/sub would lose it; what matters is caught
by the reconciliation (sockets) and the resync (queues).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from signaling.broker import Broker, BrokerUnavailable, Subscription

logger = logging.getLogger("televisit.signaling")

PATIENT, CLINICIAN = "patient", "clinician"

ParticipantHandler = Callable[[dict[str, Any]], Awaitable[None]]


class Participants:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def post(self, channel: str, message: dict[str, Any]) -> bool:
        """Post news; False when Redis is away (the news is lost)."""
        try:
            await self.broker.post(channel, message)
        except BrokerUnavailable:
            logger.warning("message lost: redis unavailable")
            return False
        return True

    async def to_participant(self, call_id: uuid.UUID, role: str, message: dict[str, Any]) -> None:
        await self.post(f"participant:{call_id}:{role}", {"send": message})

    async def close_participant(
        self, call_id: uuid.UUID, role: str, message: dict[str, Any], code: int
    ) -> None:
        await self.post(f"participant:{call_id}:{role}", {"send": message, "close": code})

    async def release_console(self, call_id: uuid.UUID, message: dict[str, Any]) -> None:
        """One message: the console is told, then lets go of the call (if lost, the console's
        process tells it on its next reconciliation)."""
        await self.post(f"participant:{call_id}:{CLINICIAN}", {"send": message, "release": True})

    async def join(
        self, call_id: uuid.UUID, role: str, socket_id: str, handler: ParticipantHandler
    ) -> Subscription:
        """Subscribe a socket as this participant, after telling any earlier socket to go
        (if that is lost, the reconciliation closes the earlier patient socket)."""
        channel = f"participant:{call_id}:{role}"
        await self.post(channel, {"takeover": socket_id})
        return await self.broker.subscribe(channel, handler)
