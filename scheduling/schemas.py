"""Request and response bodies of the scheduling API."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from app.validation import CalendarDate, Name, NulFree, TimeZoneName, UTCInstant

# "HH:MM", 24-hour; an end may also be "24:00", the end of the day.
ClockStart = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
ClockEnd = Annotated[str, StringConstraints(pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$")]
# E.164: a plus, a country code that does not start with 0, at most 15 digits in all.
E164 = Annotated[str, StringConstraints(pattern=r"^\+[1-9]\d{6,14}$")]
EARLIEST_BIRTH_DATE = dt.date(1890, 1, 1)
# The easternmost zone is UTC+14: a date can be "today" there while UTC is still yesterday.
_EASTERNMOST = dt.timezone(dt.timedelta(hours=14))


def _past_birth_date(value: dt.date) -> dt.date:
    if value > dt.datetime.now(_EASTERNMOST).date():
        raise ValueError("birth date is in the future")
    if value < EARLIEST_BIRTH_DATE:
        raise ValueError(f"birth date before {EARLIEST_BIRTH_DATE.isoformat()}")
    return value


BirthDate = Annotated[dt.date, AfterValidator(_past_birth_date)]


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _overlapping(ranges: list[tuple[int, int]]) -> bool:
    ranges = sorted(ranges)
    return any(a[1] > b[0] for a, b in itertools.pairwise(ranges))


class WeeklyHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    start: ClockStart
    end: ClockEnd

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if _minutes(self.end) <= _minutes(self.start):
            raise ValueError("end must be after start")
        return self


class DateException(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: CalendarDate
    start: ClockStart | None = None
    end: ClockEnd | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.start is None) != (self.end is None):
            raise ValueError("give both start and end, or neither for a day off")
        if self.start and self.end and _minutes(self.end) <= _minutes(self.start):
            raise ValueError("end must be after start")
        return self


class AvailabilityBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: TimeZoneName
    slot_minutes: int = Field(ge=5, le=480)
    weekly: list[WeeklyHours] = Field(max_length=200)
    exceptions: list[DateException] = Field(default_factory=list, max_length=2000)
    min_notice_minutes: int = Field(default=0, ge=0, le=60 * 24 * 365)
    horizon_days: int | None = Field(default=None, ge=1, le=3650)

    @model_validator(mode="after")
    def _no_overlaps(self) -> Self:
        for weekday in range(7):
            ranges = [
                (_minutes(w.start), _minutes(w.end)) for w in self.weekly if w.weekday == weekday
            ]
            if _overlapping(ranges):
                raise ValueError(f"weekly hours overlap on weekday {weekday}")
        by_date: dict[dt.date, list[DateException]] = {}
        for item in self.exceptions:
            by_date.setdefault(item.date, []).append(item)
        for day, items in by_date.items():
            timed = [(_minutes(i.start), _minutes(i.end)) for i in items if i.start and i.end]
            if timed and len(timed) != len(items):
                raise ValueError(f"{day.isoformat()} is both a day off and has hours")
            if _overlapping(timed):
                raise ValueError(f"exception hours overlap on {day.isoformat()}")
        return self


class ClinicianOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    timezone: str


class ClinicianList(BaseModel):
    items: list[ClinicianOut]


class Patient(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: EmailStr | None = None
    phone: E164 | None = None
    birth_date: BirthDate | None = None
    # Where the patient is: their invitation and reminders give the time there.
    timezone: TimeZoneName | None = None


class PatientOut(BaseModel):
    name: str
    email: str | None
    phone: str | None
    birth_date: dt.date | None
    timezone: str | None = None


Reason = Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000), NulFree]


class AppointmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clinician_id: uuid.UUID
    start: UTCInstant
    patient: Patient
    reason: Reason | None = None


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason | None = None


class RescheduleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: UTCInstant


class AppointmentOut(BaseModel):
    id: uuid.UUID
    status: str
    clinician_id: uuid.UUID
    start: dt.datetime
    end: dt.datetime
    patient: PatientOut
    reason: str | None
    visit_url: str
    cancel_reason: str | None = None
    # After a call: duration, per-participant quality averages, forwarding or transcoding.
    call_summary: dict[str, Any] | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class AppointmentList(BaseModel):
    items: list[AppointmentOut]


# Guests of a visit (scheduling.guests) ---------------------------------------------------

GuestRole = Literal["interpreter", "caregiver", "clinician"]


class GuestCreate(BaseModel):
    """A guest: name required; email and phone as a patient's (their invitation goes there)."""

    model_config = ConfigDict(extra="forbid")

    role: GuestRole
    name: Name
    email: EmailStr | None = None
    phone: E164 | None = None


class GuestOut(BaseModel):
    id: uuid.UUID
    appointment_id: uuid.UUID
    role: GuestRole
    name: str
    email: str | None
    phone: str | None
    # invited | waiting | in_call | left | removed
    status: str
    # The guest's own link, derived again for staff; null once the guest is removed.
    visit_url: str | None
    created_at: dt.datetime
    admitted_at: dt.datetime | None
    removed_at: dt.datetime | None


class GuestList(BaseModel):
    items: list[GuestOut]
