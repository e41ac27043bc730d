"""Errors clients see, and the handlers that render them in the contract's shape.

    AppError                      status, code
    ├── NotAuthenticated          401 not_authenticated
    │   └── InvalidCredentials    401 invalid_credentials
    ├── Forbidden                 403 forbidden
    ├── NotFound                  404 not_found
    ├── Conflict                  409 (code given by the raiser)
    ├── Gone                      410 (code given by the raiser)
    ├── ValidationFailed          422 validation_error (or a more specific code)
    ├── TooManyRequests           429 too_many_attempts
    ├── ServiceBusy               503 service_busy
    └── ServiceUnavailable        503 service_unavailable

Database errors are sorted by cause (see `_database_error`): a database gone (connection refused
or cut, a pool that hands out no connection in time, the database dropped) answers 503
`service_unavailable` with `Retry-After`, as the contract asks; SQLite's write lock held past its
timeout 503 `service_busy`; text PostgreSQL cannot store 422; anything else is a bug, 500.
Database error text never reaches a client or a log line: PostgreSQL's constraint messages
echo row values, which here are patient data.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import DatabaseUnavailable, is_database_loss, refused_text

logger = logging.getLogger("televisit.errors")


class AppError(Exception):
    status_code = 400
    code = "bad_request"
    message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details
        self.headers = headers
        super().__init__(self.message)


class NotAuthenticated(AppError):
    status_code = 401
    code = "not_authenticated"
    message = "Missing or invalid credentials."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentials(NotAuthenticated):
    code = "invalid_credentials"
    message = "Incorrect email or password."


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"
    message = "Your role may not do this."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class Gone(AppError):
    status_code = 410
    code = "gone"


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"
    message = "The request is not valid."


class TooManyRequests(AppError):
    status_code = 429
    code = "too_many_attempts"
    message = "Too many attempts; try again later."


class ServiceBusy(AppError):
    status_code = 503
    code = "service_busy"
    message = "The service is busy; try again shortly."


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    message = "The database is not answering; try again shortly."


# Seconds a client is asked to wait after a 503 for a database gone: a terminated connection is
# replaced on the next request, a restarting server takes a few seconds.
DATABASE_RETRY_AFTER_SECONDS = 2


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _clean_validation_details(errors: Any) -> list[dict[str, Any]]:
    # Pydantic echoes the offending input and its context; the location and reason are enough.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]


_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_attempts",
}


async def _app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and all(err.get("loc", ("",))[0] == "path" for err in errors):
        # A malformed id in the path names nothing: it is as unknown as a well-formed one.
        return JSONResponse(error_body(NotFound.code, NotFound.message), status_code=404)
    return JSONResponse(
        error_body(
            "validation_error",
            "The request is not valid.",
            _clean_validation_details(errors),
        ),
        status_code=422,
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


async def _unavailable(request: Request, cause: str) -> JSONResponse:
    logger.warning("database unavailable", extra={"error_type": cause})
    retry = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    return await _app_error(request, ServiceUnavailable(headers=retry))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    cause = type(exc.orig).__name__ if exc.orig else type(exc).__name__
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
        # SQLite's write lock held past the busy timeout by another process.
        return await _app_error(request, ServiceBusy(headers={"Retry-After": "1"}))
    if is_database_loss(exc):
        return await _unavailable(request, cause)
    if refused_text(exc):
        # A backstop: request text is checked before any query (app.validation.Text).
        logger.warning("text refused by the database", extra={"error_type": cause})
        refused = ValidationFailed("The request holds text that cannot be stored.")
        return await _app_error(request, refused)
    logger.error("database error", extra={"error_type": cause})
    return JSONResponse(
        error_body("internal_error", "An unexpected error occurred."), status_code=500
    )


async def _database_gone(request: Request, exc: Exception) -> JSONResponse:
    # No connection to be had: refused or timed out at connect, or none free in the pool in time.
    assert isinstance(exc, DatabaseUnavailable | PoolTimeout)
    cause = type(exc.__cause__ or exc).__name__
    return await _unavailable(request, cause)


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    # The message may carry data; the type and the traceback's frames are enough to debug.
    logger.error("unhandled error", extra={"error_type": type(exc).__name__})
    return JSONResponse(
        error_body("internal_error", "An unexpected error occurred."), status_code=500
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(DatabaseUnavailable, _database_gone)
    app.add_exception_handler(PoolTimeout, _database_gone)
    app.add_exception_handler(Exception, _unexpected_error)
