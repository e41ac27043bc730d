"""Domain events, delivered after the transaction that caused them has committed.

Scheduling announces what changed (a cancellation, a consent decision); the visit's live side
(signaling) listens. Neither imports the other, and nobody hears of a change that rolled back.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("televisit.events")


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "appointment.cancelled", "appointment.rescheduled", "consent.recorded"
    appointment_id: uuid.UUID
    data: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Event], Awaitable[None]]


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def publish(self, events: list[Event]) -> None:
        for event in events:
            for handler in self._handlers:
                try:
                    await handler(event)
                except Exception as exc:
                    # The change is committed; a listener's failure must not turn it into a 500.
                    logger.exception(
                        "event handler failed",
                        extra={"event": event.kind, "error_type": type(exc).__name__},
                    )


@dataclass(slots=True)
class Outbox:
    """The request's events, published by the unit of work once it has committed."""

    events: list[Event] = field(default_factory=list)

    def add(self, kind: str, appointment_id: uuid.UUID, **data: Any) -> None:
        self.events.append(Event(kind, appointment_id, data))
