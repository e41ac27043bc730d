from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import BaseModel

Scope = Literal["video_visit", "recording"]


class ConsentOut(BaseModel):
    version: int
    text: str
    scopes: list[Scope]


class ClinicianName(BaseModel):
    name: str


class VisitOut(BaseModel):
    appointment_id: uuid.UUID
    clinician: ClinicianName
    start: dt.datetime
    end: dt.datetime
    status: str
    consent: ConsentOut
    consented: bool
