"""The application factory. Engines and clients are built in the lifespan, not at import."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

import app as televisit
from app import bootstrap
from app.api import api_router
from app.auth import passwords, tokens
from app.auth.principal import PrincipalCache, TokenCache
from app.auth.throttle import LoginThrottle, MemoryStore, RedisStore
from app.config import Settings, get_settings
from app.db import Database, create_engine
from app.errors import install_error_handlers
from app.events import EventBus
from app.observability import RequestContextMiddleware, quiet_parameter_loggers
from app.ops import router as ops_router
from app.pages.router import router as pages_router
from media.relay import Relay
from scheduling import visits
from scheduling.slot_cache import SlotCache
from signaling.broker import Broker, Liveness, RedisBroker, RedisLiveness
from signaling.hub import Signaling
from signaling.records import CallRecords
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
        app.state.principals = PrincipalCache()
        app.state.slot_cache = SlotCache()
        app.state.events = EventBus()
        process_id = uuid.uuid4().hex
        if redis is not None:
            broker: Broker = RedisBroker(redis)
            liveness: Liveness = RedisLiveness(process_id, redis)
        else:
            broker, liveness = Broker(), Liveness(process_id)
        signaling = Signaling(
            db=db, settings=settings, broker=broker, liveness=liveness, process_id=process_id
        )
        app.state.signaling = signaling
        signaling.media = Relay(
            settings=settings, emit=signaling.to_participant, recordings=CallRecords(db)
        )
        app.state.events.subscribe(signaling.on_event)
        await signaling.start()
        app.state.link_key = visits.link_key(secret)
        app.state.login_throttle = LoginThrottle(
            RedisStore(redis) if redis is not None else MemoryStore()
        )
        passwords.warm_up()
        await bootstrap.ensure_admin(db, settings)
        logger.info("started", extra={"event": "startup"})
        try:
            yield
        finally:
            await signaling.stop()
            if redis is not None:
                await redis.aclose()
            await db.dispose()

    app = FastAPI(
        title="Televisit",
        version=televisit.__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(ops_router)
    app.include_router(api_router)
    app.include_router(signaling_router)
    app.include_router(pages_router)
    return app
