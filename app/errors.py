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
    └── ServiceBusy               503 service_busy

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
from starlette.exceptions import HTTPException as StarletteHTTPException

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


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if isinstance(exc, OperationalError) and "locked" in str(exc.orig).lower():
        # SQLite's write lock held past the busy timeout by another process.
        return await _app_error(request, ServiceBusy(headers={"Retry-After": "1"}))
    logger.error(
        "database error",
        extra={"error_type": type(exc.orig).__name__ if exc.orig else type(exc).__name__},
    )
    return JSONResponse(
        error_body("internal_error", "An unexpected error occurred."), status_code=500
    )


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
    app.add_exception_handler(Exception, _unexpected_error)
