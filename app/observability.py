"""Structured JSON logs with a request id, request metrics, and a body size limit.

No patient data may reach a log line. Log records are rendered from an allow-list of fields, the
request line names the route template (`/api/v1/visits/{token}`) rather than the path, visit tokens
in any message are masked, and exceptions are logged by type and frames, never by message.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import time
import traceback
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import REQUEST_SECONDS, REQUESTS

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)

# Extra fields a log call may attach; anything else is dropped.
ALLOWED_FIELDS = (
    "request_id",
    "method",
    "route",
    "status",
    "duration_ms",
    "error_type",
    "event",
    "appointment_id",
    "user_id",
    "role",
    "count",
    "reason",
    "code",
    "process",
    "address",
    "link",  # media.relay's debug line: the relay's estimate for one participant (numbers)
    "part",  # app.main's shutdown: which part of the service is stopping (a fixed name)
)
_TOKEN_PATH = re.compile(r"(/visits?/)[A-Za-z0-9_\-]{8,}")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
MAX_BODY_BYTES = 1024 * 1024


def mask_tokens(text: str) -> str:
    return _TOKEN_PATH.sub(r"\1{token}", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_tokens(record.getMessage()),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for name in ALLOWED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["frames"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(entry, default=str)


# Loggers that write SQL parameters (patient data) at DEBUG or INFO; capped whatever the level.
PARAMETER_LOGGERS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg")


def quiet_parameter_loggers() -> None:
    for name in PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _at_least_info(level: str) -> str:
    return "INFO" if logging.getLevelName(level) in (logging.DEBUG, logging.NOTSET) else level


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn alike.

    `level` is the root level, optionally followed by per-logger levels:
    `"WARNING,televisit.media=DEBUG"` (the relay's per-second link lines, nothing else chatty).
    """
    root, *pairs = (part.strip() for part in level.split(","))
    level = root.upper() or "INFO"
    named = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name.strip() and value.strip():
            named[name.strip()] = {"level": value.strip().upper()}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            # At DEBUG, the websockets library traces every frame (chat text, names, SDP) to
            # this logger: it stays at INFO or above whatever the level.
            "uvicorn.error": {"handlers": [], "propagate": True, "level": _at_least_info(level)},
            # The request line is ours (route templates, no tokens); uvicorn's is switched off.
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
            **named,
            **{name: {"level": "WARNING"} for name in PARAMETER_LOGGERS},
        },
    }


logger = logging.getLogger("televisit.http")


class RequestContextMiddleware:
    """Request id, access log line, metrics, and a limit on request body size."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, send)
            finally:
                request_id_var.reset(token)
            return

        started = time.perf_counter()
        status = 500
        too_large = False
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            too_large = True
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append(
                    (b"x-request-id", request_id.encode("latin-1"))
                )
            await send(message)

        try:
            if too_large:
                await _send_too_large(send_wrapper)
            else:
                try:
                    await self.app(scope, limited_receive, send_wrapper)
                except _BodyTooLarge:
                    await _send_too_large(send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope)
            method = scope["method"]
            REQUESTS.labels(method=method, route=template, status=str(status)).inc()
            REQUEST_SECONDS.labels(method=method, route=template).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": method,
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)


def route_template(scope: Scope) -> str:
    """The matched route's template (`/api/v1/visits/{token}`): the path with its values put back
    as names, so logs and metric labels never carry ids or tokens."""
    if scope.get("endpoint") is None:
        return "unmatched"
    names = {str(value): name for name, value in scope.get("path_params", {}).items()}
    return "/".join(
        f"{{{names[part]}}}" if part in names else part for part in scope["path"].split("/")
    )


class _BodyTooLarge(HTTPException):
    """Raised from `receive`; an HTTPException so FastAPI's body parsing passes it through."""

    def __init__(self) -> None:
        super().__init__(413, "The request body is too large.")


async def _send_too_large(send: Send) -> None:
    body = json.dumps(
        {"error": {"code": "payload_too_large", "message": "The request body is too large."}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
