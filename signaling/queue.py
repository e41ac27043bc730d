"""The consult queue as the clinician's console and the waiting patients see it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduling.calls import RECONNECTING, QueueRow
from scheduling.models import Status, VisitGuest


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


def participant(guest: VisitGuest) -> dict[str, Any]:
    """A guest as the console's queue item lists them (`reconnecting` while their socket is
    away within the grace period)."""
    status = "reconnecting" if guest.presence == RECONNECTING else guest.status
    return {"id": str(guest.id), "role": guest.role, "name": guest.name, "status": status}


def build(
    rows: list[QueueRow],
    *,
    consult_seconds: int,
    now: dt.datetime,
    guests: Mapping[uuid.UUID, Sequence[VisitGuest]] | None = None,
) -> Snapshot:
    """Positions 1, 2, ... for connected waiting patients in queue order; null for the rest.

    The wait estimate: what remains of the current call by the typical consult length, then a
    typical consult for each patient ahead. Each item lists the visit's guests (not removed).
    """
    guests = guests or {}
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
                "participants": [participant(g) for g in guests.get(row.appointment_id, ())],
            }
        )
    return Snapshot(items, places)
