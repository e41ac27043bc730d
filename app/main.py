"""The application factory. Engines and clients are built in the lifespan, not at import."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import app as televisit
from app import bootstrap
from app.api import api_router
from app.auth import otp, passwords, tokens
from app.auth.passwords import HashingSlots
from app.auth.principal import PrincipalCache, TokenCache
from app.auth.throttle import LoginThrottle
from app.config import Settings, get_settings
from app.db import Database, create_engine
from app.errors import install_error_handlers
from app.events import EventBus
from app.observability import RequestContextMiddleware, quiet_parameter_loggers
from app.ops import router as ops_router
from app.pages.apidocs import router as apidocs_router
from app.pages.router import router as pages_router
from app.ratelimit import RateLimiter
from media.relay import Relay
from scheduling import visits
from scheduling.notifications.outbox import Plan
from scheduling.notifications.worker import Worker
from scheduling.recordings import RecordingFiles, Retention
from scheduling.slot_cache import SlotCache
from signaling.broker import Broker, RedisBroker
from signaling.hub import Signaling
from signaling.recording_log import CallRecords
from signaling.router import router as signaling_router

logger = logging.getLogger("televisit")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    quiet_parameter_loggers()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(create_engine(settings))
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        secret = settings.secret_bytes()
        app.state.settings = settings
        app.state.db = db
        app.state.redis = redis
        app.state.jwt_key = tokens.signing_key(secret)
        app.state.tokens = TokenCache(app.state.jwt_key)
        app.state.otp_key = otp.sealing_key(secret)
        app.state.principals = PrincipalCache()
        app.state.slot_cache = SlotCache()
        app.state.events = EventBus()
        process_id = uuid.uuid4().hex
        # Which processes live is kept in the database (signaling.liveness), not in Redis.
        broker: Broker = RedisBroker(redis) if redis is not None else Broker()
        signaling = Signaling(db=db, settings=settings, broker=broker, process_id=process_id)
        app.state.signaling = signaling
        # Every recording's file is kept, served and removed through this (scheduling.recordings).
        app.state.recording_files = files = RecordingFiles(
            settings.recordings_dir, settings.recordings_seal_key()
        )
        signaling.media = Relay(
            settings=settings,
            emit=signaling.to_participant,
            recordings=CallRecords(db),
            guard=signaling,  # the relay re-reads consent itself (media.gate)
        )
        app.state.events.subscribe(signaling.on_event)
        await signaling.start()
        app.state.link_key = visits.link_key(secret)
        # Invitations and reminders: queued by bookings, sent by this worker (one per process).
        app.state.notices = Plan.of(settings)
        notifications = Worker(db=db, settings=settings, link_key=app.state.link_key)
        await notifications.start()
        app.state.notifications = notifications
        # Recordings past TELEVISIT_RECORDINGS_RETENTION_DAYS are deleted (one pass per process).
        retention = Retention(db=db, files=files, retention_days=settings.recordings_retention_days)
        await retention.start()
        # Shared by every process through Redis when there is one (app.ratelimit).
        app.state.rate_limits = rate_limits = RateLimiter(redis)
        app.state.login_throttle = LoginThrottle(rate_limits)
        app.state.password_slots = HashingSlots()
        passwords.warm_up()
        await bootstrap.ensure_admin(db, settings)
        logger.info("started", extra={"event": "startup"})
        try:
            yield
        finally:
            # Each part said as it begins: a stop that hangs shows in the log where it is.
            parts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("retention", retention.stop),
                ("notifications", notifications.stop),
                ("signaling", signaling.stop),
                ("rate_limits", rate_limits.aclose),
                *([("redis", redis.aclose)] if redis is not None else []),
                ("database", db.dispose),
            ]
            for part, stop in parts:
                logger.info("stopping", extra={"event": "shutdown", "part": part})
                await stop()
            logger.info("stopped", extra={"event": "shutdown"})

    app = Televisit(
        hsts=settings.public_url.scheme == "https",
        title="Televisit",
        version=televisit.__version__,
        lifespan=lifespan,
        # /api/docs is app.pages.apidocs: Swagger UI served from here, under a strict CSP.
        docs_url=None,
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(ops_router)
    app.include_router(api_router)
    app.include_router(signaling_router)
    app.include_router(pages_router)
    app.include_router(apidocs_router)
    return app


class Televisit(FastAPI):
    """The application, its security headers outermost: on every response it sends.

    Starlette answers an unhandled exception (the 500, in the contract's shape, from
    app.errors) in its ServerErrorMiddleware, which wraps every middleware added with
    `add_middleware`: a header middleware added there never sees that response. This one
    wraps the whole stack instead, ServerErrorMiddleware included.
    """

    def __init__(self, *, hsts: bool, **kwargs: Any) -> None:
        self.hsts = hsts
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeadersMiddleware(super().build_middleware_stack(), hsts=self.hsts)


# A year: browsers keep to https for this long after any response that says so.
HSTS = "max-age=31536000"


class SecurityHeadersMiddleware:
    """Headers every response needs, whatever answers (errors, 413s and 500s included).

    Every API response may carry a token or patient data: `Cache-Control: no-store` (no copy in
    any cache or the browser's history) and `X-Content-Type-Options: nosniff`. Pages set their
    own, no-store included, in app.pages.router (the visit page's URL holds the token). With an
    https PUBLIC_URL every response carries HSTS.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"] == "/api" or scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if api:
                    headers["Cache-Control"] = "no-store"
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if self.hsts:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, send_with_headers)
