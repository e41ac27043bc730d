"""The delivery state of an appointment's notifications."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel


class NotificationOut(BaseModel):
    kind: Literal["invitation", "rescheduled", "cancelled", "reminder", "guest_invitation"]
    channel: Literal["email", "sms"]
    status: Literal["queued", "sent", "failed"]
    attempts: int
    sent_at: dt.datetime | None
    # Beyond the contract's fields: when it is (or was) due, and a reminder's hours before.
    due_at: dt.datetime
    hours: int | None
    # The guest (scheduling.guests) it is sent to; null for the patient's.
    participant_id: uuid.UUID | None = None


class NotificationList(BaseModel):
    items: list[NotificationOut]
