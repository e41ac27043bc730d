from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    model_validator,
)

from app.validation import Name, TimeZoneName


def _lower(value: str) -> str:
    return value.lower()


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 type name)
    expires_in: int
    refresh_token: str


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=128)


class LogoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str | None = Field(default=None, min_length=1, max_length=128)


class OtpEnrolment(BaseModel):
    otpauth_uri: str


class OtpConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    otp: str = Field(min_length=1, max_length=16)


class OtpStatus(BaseModel):
    otp_enabled: bool


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[EmailStr, AfterValidator(_lower)]
    # Argon2 takes any length; the cap only keeps a request from hashing megabytes.
    password: str = Field(min_length=10, max_length=256)
    role: Literal["admin", "scheduler", "clinician"]
    name: Name
    timezone: TimeZoneName = "UTC"


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: str
    name: str
    timezone: str


class AccountOut(UserOut):
    # Read from the model's `is_active`.
    active: bool = Field(validation_alias="is_active")


class AccountList(BaseModel):
    items: list[AccountOut]


class AccountPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "scheduler", "clinician"] | None = None
    name: Name | None = None
    timezone: TimeZoneName | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> AccountPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of role, name, timezone, active")
        for field in self.model_fields_set:
            if getattr(self, field) is None:
                raise ValueError(f"{field} cannot be null")
        return self


class ResetOut(BaseModel):
    reset_url: str


NewPassword = Annotated[str, Field(min_length=10, max_length=256)]


class ResetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=128)
    password: NewPassword


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current: str = Field(min_length=1, max_length=256)
    new: NewPassword


class MeOut(UserOut):
    # Whether sign-in needs a TOTP code; and whether the caller must enrol before anything else
    # (an admin without it while TELEVISIT_REQUIRE_2FA_ADMINS is on).
    otp_enabled: bool
    otp_enrolment_required: bool
