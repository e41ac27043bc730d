"""The consult queue as the clinician's console and the waiting patients see it."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from scheduling.calls import RECONNECTING, QueueRow
from scheduling.models import Status


def _rfc3339(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Snapshot:
    items: list[dict[str, Any]]
    # Each waiting patient's (position, estimated wait in seconds); None for the others.
    places: dict[uuid.UUID, tuple[int | None, int | None]] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        return {"type": "queue", "items": self.items}


def build(rows: list[QueueRow], *, consult_seconds: int, now: dt.datetime) -> Snapshot:
    """Positions 1, 2, ... for connected waiting patients in queue order; null for the rest.

    The wait estimate: what remains of the current call by the typical consult length, then a
    typical consult for each patient ahead.
    """
    in_call_left = 0
    for row in rows:
        if row.status == Status.IN_CALL and row.call_started_at is not None:
            elapsed = (now - row.call_started_at).total_seconds()
            in_call_left += max(0, int(consult_seconds - elapsed))
    items: list[dict[str, Any]] = []
    places: dict[uuid.UUID, tuple[int | None, int | None]] = {}
    position = 0
    for row in rows:
        status = row.status
        place: int | None = None
        if row.presence == RECONNECTING:
            status = "reconnecting"
        elif row.status == Status.WAITING:
            position += 1
            place = position
        eta = None if place is None else in_call_left + (place - 1) * consult_seconds
        places[row.appointment_id] = (place, eta)
        items.append(
            {
                "appointment_id": str(row.appointment_id),
                "patient_name": row.patient_name,
                "start": _rfc3339(row.start),
                "status": status,
                "waiting_since": _rfc3339(row.checked_in_at),
                "position": place,
                "estimated_wait_seconds": eta,
                "connection": row.connection,
            }
        )
    return Snapshot(items, places)
