"""The delivery state of an appointment's notifications."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel


class NotificationOut(BaseModel):
    kind: Literal["invitation", "rescheduled", "cancelled", "reminder"]
    channel: Literal["email", "sms"]
    status: Literal["queued", "sent", "failed"]
    attempts: int
    sent_at: dt.datetime | None
    # Beyond the contract's fields: when it is (or was) due, and a reminder's hours before.
    due_at: dt.datetime
    hours: int | None


class NotificationList(BaseModel):
    items: list[NotificationOut]
