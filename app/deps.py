"""Request-scoped dependencies: the unit of work, the caller, the audit context.

The request is the unit of work: one session, committed before the response is sent
(`scope="function"`), rolled back on any error. Services never commit.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from app.audit import Audit
from app.auth import sessions
from app.auth.models import Role
from app.auth.principal import Principal, PrincipalCache
from app.auth.tokens import TokenClaims
from app.config import Settings
from app.db import Database
from app.errors import AppError, Forbidden, NotAuthenticated
from app.events import Outbox

F = TypeVar("F", bound=Callable[..., Any])
_READ_ONLY = "televisit_read_only"
_ENROLMENT = "televisit_enrolment_allowed"


def read_only(endpoint: F) -> F:
    """Mark an endpoint that never writes: its session needs no write lock on SQLite."""
    setattr(endpoint, _READ_ONLY, True)
    return endpoint


def enrolment_allowed(endpoint: F) -> F:
    """Mark an endpoint an admin who must enrol in two-factor sign-in may still use."""
    setattr(endpoint, _ENROLMENT, True)
    return endpoint


def must_enrol(user: Principal, settings: Settings) -> bool:
    """An admin without two-factor while TELEVISIT_REQUIRE_2FA_ADMINS is on: may only enrol."""
    return settings.require_2fa_admins and user.role == Role.ADMIN and not user.otp_enabled


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    db = get_db(request)
    write = not getattr(request.scope.get("endpoint"), _READ_ONLY, False)
    try:
        async with db.session(write=write) as session:
            yield session
            audit: Audit | None = getattr(request.state, "audit", None)
            if audit is not None:
                await audit.write(session, "success")
        outbox: Outbox | None = getattr(request.state, "outbox", None)
        if outbox is not None and outbox.events:
            await request.app.state.events.publish(outbox.events)
    except AppError as exc:
        # The change rolled back; the attempt is still recorded, in a transaction of its own.
        failed: Audit | None = getattr(request.state, "audit", None)
        if failed is not None and failed.pending:
            async with db.session(write=True) as session:
                await failed.write(session, exc.code)
        raise


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
DatabaseDep = Annotated[Database, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False)


# X-Forwarded-For hops looked at, from the right: a longer chain of trusted proxies names no one.
MAX_FORWARDED_HOPS = 16
# Longer than any address written out (an IPv6 address with a zone, a port and brackets).
_MAX_HOP_CHARS = 80
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in proxies)


def _parse_ip(text: str) -> IPAddress | None:
    """An address as proxies write it (`198.51.100.7`, `[2001:db8::1]:443`, `1.2.3.4:80`)."""
    text = text.strip()
    if not text or len(text) > _MAX_HOP_CHARS:
        return None
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        # `::ffff:192.0.2.1` is an IPv4 client; a zone (`%eth0`) means nothing off the host.
        return ip.ipv4_mapped or ipaddress.IPv6Address(int(ip))
    return ip


def _trusted(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip in network for network in networks)


def client_address(connection: HTTPConnection) -> str:
    """The client's address for throttles and audit: an address (at most 39 characters), or
    `unknown` when the connection has none (a Unix socket).

    `X-Forwarded-For` counts only when the peer is one of TELEVISIT_TRUSTED_PROXIES; then the
    right-most hop that is not itself a trusted proxy is the client (hops to its left were
    written by the client and prove nothing). A hop that is not an address makes the whole
    header worthless: the peer's address is used.
    """
    host = connection.client.host if connection.client else None
    peer = _parse_ip(host) if host else None
    if peer is None:
        return "unknown"
    settings: Settings = connection.app.state.settings
    networks = _networks(tuple(settings.trusted_proxies))
    if not _trusted(peer, networks):
        return str(peer)
    header = ",".join(connection.headers.getlist("x-forwarded-for"))
    if not header.strip():
        return str(peer)
    hops = header.rsplit(",", MAX_FORWARDED_HOPS)
    ip = peer
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        parsed = _parse_ip(hop)
        if parsed is None:
            return str(peer)
        ip = parsed
        if not _trusted(ip, networks):
            return str(ip)
    # Every hop is a trusted proxy: the left-most sent the request, unless the chain went on.
    return str(ip) if len(hops) <= MAX_FORWARDED_HOPS else str(peer)


async def load_principal(state: Any, claims: TokenClaims) -> Principal | None:
    """The active user behind a verified token whose session is open, from the few-seconds
    cache or the database (one read of the session joined to its user, by primary key)."""
    cache: PrincipalCache = state.principals
    standing = cache.get(claims.session_id)
    if standing is None:
        db: Database = state.db
        async with db.session(write=False) as session:
            standing = await sessions.standing(session, claims.session_id, state.settings)
        cache.put(claims.session_id, standing)
    return standing.allows(claims.user_id, time.time())


async def verified_claims(state: Any, token: str) -> tuple[Principal, TokenClaims]:
    """The active staff member a bearer token names, with its claims; else 401."""
    claims: TokenClaims | None = state.tokens.verify(token)
    if claims is None:
        raise NotAuthenticated()
    principal = await load_principal(state, claims)
    if principal is None:
        raise NotAuthenticated()
    return principal, claims


async def principal_for_token(state: Any, token: str) -> Principal:
    """The active staff member a bearer token names (HTTP header or socket message); else 401."""
    principal, _ = await verified_claims(state, token)
    return principal


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The active staff member behind the bearer token; 401 for anything else."""
    if credentials is None:
        raise NotAuthenticated()
    user, claims = await verified_claims(request.app.state, credentials.credentials)
    request.state.session_id = claims.session_id
    if must_enrol(user, request.app.state.settings) and not getattr(
        request.scope.get("endpoint"), _ENROLMENT, False
    ):
        raise Forbidden(
            "Administrators sign in with two-factor: enrol first (POST /api/v1/me/otp).",
            code="otp_enrolment_required",
        )
    request.state.audit = Audit(
        actor_id=user.id,
        actor_role=user.role,
        ip=client_address(request),
        user_agent=(request.headers.get("user-agent") or "")[:256] or None,
        request_id=getattr(request.state, "request_id", None),
    )
    return user


def require_roles(*roles: Role) -> Callable[..., Any]:
    allowed = frozenset(roles)

    async def dependency(user: Annotated[Principal, Depends(current_user)]) -> Principal:
        if user.role not in allowed:
            raise Forbidden()
        return user

    return dependency


def get_audit(request: Request, _user: Annotated[Principal, Depends(current_user)]) -> Audit:
    audit: Audit = request.state.audit
    return audit


CurrentUser = Annotated[Principal, Depends(current_user)]
AdminUser = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
SchedulingStaff = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.SCHEDULER))]
AuditDep = Annotated[Audit, Depends(get_audit)]


def get_outbox(request: Request) -> Outbox:
    """Events of this request, published after its transaction commits."""
    outbox: Outbox | None = getattr(request.state, "outbox", None)
    if outbox is None:
        outbox = request.state.outbox = Outbox()
    return outbox


OutboxDep = Annotated[Outbox, Depends(get_outbox)]
