from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
)

from app.validation import NulFree
from scheduling.models import ConsentRecord

Scope = Literal["video_visit", "recording"]
Decision = Literal["granted", "declined", "withdrawn"]


class ConsentOut(BaseModel):
    version: int
    text: str
    scopes: list[Scope]


class ClinicianName(BaseModel):
    name: str


class ParticipantOut(BaseModel):
    """Who the link is: `{"role":"patient"}`, or a guest's `{"id","role","name"}`."""

    id: uuid.UUID | None = None
    role: str
    name: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if value is not None}


class VisitOut(BaseModel):
    appointment_id: uuid.UUID
    clinician: ClinicianName
    start: dt.datetime
    end: dt.datetime
    status: str
    consent: ConsentOut
    consented: bool
    consented_recording: bool = False
    birth_date_check: bool = False
    # For the page's connection test (TURN credentials are short-lived and carry no patient data).
    ice_servers: list[dict[str, Any]] = []
    participant: ParticipantOut = ParticipantOut(role="patient")


class VerifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    birth_date: dt.date


class VerifyOut(BaseModel):
    verification: str
    expires_in: int


class ConsentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The column is a 32-bit integer; a larger number names no version either.
    version: int = Field(ge=1, le=2**31 - 1)
    decision: Decision
    scopes: list[Scope] = Field(min_length=1, max_length=2)

    @field_validator("scopes")
    @classmethod
    def _distinct(cls, scopes: list[Scope]) -> list[Scope]:
        if len(set(scopes)) != len(scopes):
            raise ValueError("scopes are listed twice")
        return scopes


class ConsentRecordOut(BaseModel):
    id: uuid.UUID
    decision: Decision
    scopes: list[Scope]
    version: int
    recorded_at: dt.datetime


class ConsentRecordDetail(ConsentRecordOut):
    participant: str
    text_sha256: str
    ip: str | None
    user_agent: str | None


class ConsentRecordList(BaseModel):
    items: list[ConsentRecordDetail]


class ConsentTextBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=20, max_length=20_000), NulFree
    ]


class ConsentTextOut(BaseModel):
    version: int
    text: str
    sha256: str
    published_at: dt.datetime


def scopes_of(entry: ConsentRecord) -> list[Scope]:
    return cast(list[Scope], entry.scopes.split())


def record_out(entry: ConsentRecord) -> ConsentRecordOut:
    return ConsentRecordOut(
        id=entry.id,
        decision=entry.decision,  # type: ignore[arg-type]  # checked by the database
        scopes=scopes_of(entry),
        version=entry.version,
        recorded_at=entry.recorded_at,
    )
