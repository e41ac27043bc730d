"""Settings: one class, read from `TELEVISIT_*` environment variables and a `.env` file."""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.sealed import key_for

# Values people paste from examples; any of them as a secret outside development is refused.
_PLACEHOLDER_SECRETS = frozenset(
    {"", "changethis", "change-me", "changeme", "secret", "please-change", "televisit", "dev"}
)
_MIN_SECRET_LENGTH = 32
DEV_SECRET_FILE = ".televisit-secret"  # noqa: S105 (a file name)

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of a Televisit process; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="TELEVISIT_", env_file=".env", extra="ignore", frozen=True
    )

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./televisit.db"
    redis_url: str | None = None
    secret_key: SecretStr | None = None
    public_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    admin_email: str | None = None
    admin_password: SecretStr | None = None

    # WebRTC: with none of these set, no STUN or TURN server is ever contacted.
    stun_urls: CommaList = Field(default_factory=list)
    turn_urls: CommaList = Field(default_factory=list)
    turn_secret: SecretStr | None = None
    media_ips: CommaList = Field(default_factory=list)
    media_peer_allow: CommaList = Field(default_factory=list)
    # "40000-40999": the only UDP ports the relay's ICE binds (None: any); media.network.
    media_ports: Annotated[tuple[int, int] | None, NoDecode] = None
    # The address offered in place of the relay's local one, behind 1:1 NAT; media.network.
    media_public_ip: str | None = None

    # Staff sessions and accounts (app.auth) ------------------------------------------------
    # An access token's life; fractions of a minute are for tests (3 s at least).
    access_token_minutes: float = Field(default=15, ge=0.05, le=15)
    # A sign-in lasts at most this long, and ends after this long without a refresh.
    session_hours: float = Field(default=12, gt=0, le=24 * 30)
    session_idle_minutes: float = Field(default=60, gt=0, le=24 * 60)
    # Admins must sign in with a second factor (TOTP); until they enrol they may only enrol.
    require_2fa_admins: bool = False
    # ----------------------------------------------------------------------------------------
    # A visit link opens at booking and closes this long after the visit's end.
    visit_link_hours_after: int = Field(default=24, ge=1, le=24 * 14)
    log_level: str = "INFO"
    # Origins allowed to open the WebSockets besides PUBLIC_URL's own.
    allowed_origins: CommaList = Field(default_factory=list)
    db_pool_size: int = Field(default=20, ge=1, le=200)
    # How long a request waits for a free pooled connection, and for a new connection to
    # PostgreSQL, before it answers 503 service_unavailable.
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # The practice's second factor: a patient confirms their date of birth before seeing a visit.
    visit_birth_date_check: bool = False
    # How long a dropped patient keeps their place (or their call) to come back with the link.
    reconnect_grace_seconds: float = Field(default=30.0, ge=0.5, le=600)
    # A patient may check in (open the waiting room) from this long before the visit's start.
    checkin_minutes_before: int = Field(default=30, ge=0, le=24 * 60)
    # A process whose heartbeat (in the database) is older than this is taken for dead.
    liveness_seconds: float = Field(default=6.0, ge=0.5, le=300)
    # A console is closed this long after its latest token expired (the contract says 60).
    clinic_token_grace_seconds: float = Field(default=60.0, ge=0, le=3600)
    # Where call recordings are written (sealed WebM files), relative to the working folder.
    recordings_dir: Path = Path("recordings")
    # The key recordings are sealed with (32 bytes, base64); unset: derived from SECRET_KEY.
    recordings_key: SecretStr | None = None
    # Recordings are deleted this many days after the call (scheduling.recordings; on /admin).
    recordings_retention_days: int = Field(default=30, ge=1, le=3650)
    # Reverse proxies whose X-Forwarded-For names the client (addresses or CIDRs); app.deps.
    trusted_proxies: CommaList = Field(default_factory=lambda: ["127.0.0.1"])

    # Notifications (scheduling.notifications): mail over SMTP, SMS through the practice's
    # webhook, reminders these many hours before the start. Neither channel set: none queued.
    smtp_url: SecretStr | None = None
    mail_from: str | None = None
    sms_webhook_url: AnyHttpUrl | None = None
    sms_webhook_token: SecretStr | None = None
    reminder_hours: Annotated[tuple[int, ...], NoDecode] = (24, 1)
    # Each step of a send (connect, each SMTP command, the HTTP request) is bounded by this.
    notify_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    # A notification not sent after this many attempts is `failed`.
    notify_attempts: int = Field(default=5, ge=1, le=50)
    # The wait before the first retry; doubled each attempt, at most an hour.
    notify_retry_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How often each process's worker looks for notifications that came due.
    notify_poll_seconds: float = Field(default=1.0, gt=0, le=300)

    @field_validator("smtp_url", mode="before")
    @classmethod
    def _smtp_url(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            parse_smtp_url(value)
        return value

    @field_validator("mail_from", mode="before")
    @classmethod
    def _mail_from(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        address = parseaddr(value)[1]
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            raise ValueError(
                "TELEVISIT_MAIL_FROM must be a mail address, e.g. "
                "'Clinic <visits@clinic.example.org>'"
            )
        return value.strip()

    @field_validator("recordings_key", mode="before")
    @classmethod
    def _recordings_key(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            key_for(value.strip(), "")  # the message names what is wrong, never the key
            return value.strip()
        return value

    @field_validator("sms_webhook_url", "sms_webhook_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("reminder_hours", mode="before")
    @classmethod
    def _reminder_hours(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hours: set[int] = set()
        for item in (part.strip() for part in value.split(",") if part.strip()):
            if not item.isdigit() or not 1 <= int(item) <= 24 * 30:
                raise ValueError(
                    "TELEVISIT_REMINDER_HOURS must be whole hours before the start, 1-720, "
                    f"comma-separated (e.g. 24,1), not {value!r}"
                )
            hours.add(int(item))
        return tuple(sorted(hours, reverse=True))

    @model_validator(mode="after")
    def _channels_complete(self) -> Settings:
        if self.smtp_url is not None and self.mail_from is None:
            raise ValueError("TELEVISIT_SMTP_URL is set: set TELEVISIT_MAIL_FROM too")
        if self.sms_webhook_url is not None and self.sms_webhook_token is None:
            raise ValueError(
                "TELEVISIT_SMS_WEBHOOK_URL is set: set TELEVISIT_SMS_WEBHOOK_TOKEN too "
                "(sent as Authorization: Bearer)"
            )
        return self

    @property
    def smtp(self) -> SmtpServer | None:
        return None if self.smtp_url is None else parse_smtp_url(self.smtp_url.get_secret_value())

    _split = field_validator(
        "stun_urls",
        "turn_urls",
        "media_ips",
        "media_peer_allow",
        "allowed_origins",
        "trusted_proxies",
        mode="before",
    )(_split_commas)

    @field_validator("media_ips", "media_peer_allow", "trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator("media_ports", mode="before")
    @classmethod
    def _port_range(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return parse_port_range(value)

    @field_validator("media_ports")
    @classmethod
    def _ports_in_order(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None:
            check_port_range(*value)
        return value

    @field_validator("media_public_ip", mode="before")
    @classmethod
    def _public_ip(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(
                f"TELEVISIT_MEDIA_PUBLIC_IP must be an IP address (e.g. 203.0.113.7), not {value!r}"
            ) from None
        if address.is_unspecified or address.is_multicast:
            raise ValueError(
                f"TELEVISIT_MEDIA_PUBLIC_IP must be an address clients can reach, not {value!r}"
            )
        return str(address)

    @model_validator(mode="after")
    def _secret_required_outside_development(self) -> Settings:
        if self.environment == "development":
            return self
        secret = self.secret_key.get_secret_value() if self.secret_key else ""
        if secret.lower() in _PLACEHOLDER_SECRETS or len(secret) < _MIN_SECRET_LENGTH:
            raise ValueError(
                "TELEVISIT_SECRET_KEY must be set to a random value of at least "
                f"{_MIN_SECRET_LENGTH} characters outside development "
                '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        return self

    @model_validator(mode="after")
    def _public_url_reachable_in_production(self) -> Settings:
        """Visit links are built from PUBLIC_URL: in production, one only this host can open
        (the default 127.0.0.1, localhost) would be sent to every patient."""
        if self.environment != "production" or not _is_loopback_host(self.public_url.host):
            return self
        raise ValueError(
            f"TELEVISIT_PUBLIC_URL is {self.public_base}, an address only this machine can open; "
            "in production it must be the address patients and staff reach the service at "
            "(e.g. https://televisit.example.org): visit links are built from it"
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def public_base(self) -> str:
        return str(self.public_url).rstrip("/")

    def recordings_seal_key(self) -> bytes:
        """The 32-byte key recordings are sealed with (app.sealed)."""
        configured = self.recordings_key.get_secret_value() if self.recordings_key else None
        return key_for(configured, self.secret_bytes().decode())

    def secret_bytes(self) -> bytes:
        """The server secret; in development without one, a random one kept in a local file."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        return _development_secret()


_PORT_RANGE_EXAMPLE = "e.g. 40000-40999"


def parse_port_range(value: str) -> tuple[int, int] | None:
    """`"40000-40999"` (or one port, `"40000"`) as (first, last); empty: None (any port)."""
    text = value.strip()
    if not text:
        return None
    first, dash, last = text.partition("-")
    try:
        low = int(first.strip())
        high = int(last.strip()) if dash else low
    except ValueError:
        raise ValueError(
            f"TELEVISIT_MEDIA_PORTS must be a UDP port range FIRST-LAST ({_PORT_RANGE_EXAMPLE}), "
            f"not {value!r}"
        ) from None
    check_port_range(low, high)
    return low, high


def check_port_range(low: int, high: int) -> None:
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(
            f"TELEVISIT_MEDIA_PORTS must lie within 1-65535 ({_PORT_RANGE_EXAMPLE}), "
            f"not {low}-{high}"
        )
    if low > high:
        raise ValueError(
            f"TELEVISIT_MEDIA_PORTS is reversed: {low}-{high} starts above its end "
            f"(write {high}-{low})"
        )


@dataclass(frozen=True)
class SmtpServer:
    """Where mail goes: `TELEVISIT_SMTP_URL` taken apart."""

    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool
    starttls: bool


_SMTP_URL_FORM = "smtp://[user:password@]host:port (smtps:// for implicit TLS, ?starttls=1)"
_TRUE, _FALSE = {"1", "true", "yes"}, {"0", "false", "no"}


def parse_smtp_url(value: str) -> SmtpServer:
    """`smtp://[user:pass@]host:port`, `smtps://` (implicit TLS), `?starttls=1`; else ValueError.

    The messages name what is wrong, never the URL itself (it may hold a password)."""

    def refuse(what: str) -> ValueError:
        return ValueError(f"TELEVISIT_SMTP_URL is malformed ({what}); the form is {_SMTP_URL_FORM}")

    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise refuse("the port is not a number from 1 to 65535") from None
    if parts.scheme not in ("smtp", "smtps"):
        raise refuse("the scheme must be smtp or smtps")
    if not parts.hostname:
        raise refuse("no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise refuse("a path or fragment")
    if port == 0:
        raise refuse("the port is not a number from 1 to 65535")
    if (parts.username is None) != (parts.password is None) or parts.username == "":
        raise refuse("give both user and password, or neither")
    query = parse_qs(parts.query, keep_blank_values=True)
    if set(query) - {"starttls"} or any(len(v) != 1 for v in query.values()):
        raise refuse("the only query parameter is starttls, once")
    flag = query.get("starttls", ["0"])[0].lower()
    if flag not in _TRUE | _FALSE:
        raise refuse("starttls is 1 or 0")
    implicit = parts.scheme == "smtps"
    if implicit and flag in _TRUE:
        raise refuse("smtps:// is TLS already; starttls is for smtp://")
    return SmtpServer(
        host=parts.hostname,
        port=port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        implicit_tls=implicit,
        starttls=flag in _TRUE,
    )


def _is_loopback_host(host: str | None) -> bool:
    """No host, localhost, a loopback or unspecified address (IPv4-mapped ones too)."""
    if not host:
        return True
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


@lru_cache(maxsize=1)
def _development_secret() -> bytes:
    path = Path(DEV_SECRET_FILE)
    if path.exists():
        return path.read_text().strip().encode()
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value.encode()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
