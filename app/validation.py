"""Field types shared by every domain's request schemas, and the request-wide input check.

Two families of bad input used to reach code that could not handle it and answered 500:

- Text with a NUL character. PostgreSQL refuses it in every text column (SQLite stores it), so
  every string a request body or form carries is checked by `NulFree` (`Text`, or a type with
  its own constraints and `NulFree` after them) and refused with 422 before any query, on both
  databases alike. Query strings and headers are checked once per request by `refuse_nul`,
  installed on the API router; a path with a NUL names nothing, and answers 404.
- Instants at the calendar's edge. Python's datetime ends at years 1 and 9999; an offset, a range
  or a day added to an instant near either end overflows. Every instant a request carries is a
  `UTCInstant`, kept between `EARLIEST_INSTANT` and `LATEST_INSTANT`, centuries inside both
  ends, and every calendar date a `CalendarDate` inside the same years.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Request
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, StringConstraints

from app.errors import ValidationFailed

NUL = "\x00"
# Instants a request may name: [EARLIEST_INSTANT, LATEST_INSTANT). Far from both ends of the
# calendar, so that no arithmetic on them (offsets, 62-day ranges, horizons) leaves it.
EARLIEST_INSTANT = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST_INSTANT = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)
# A wall time carries an offset of less than a day: a naive value inside these days is safe to
# convert; one outside them is refused before any conversion can overflow.
_NAIVE_LOW = EARLIEST_INSTANT.replace(tzinfo=None) - dt.timedelta(days=2)
_NAIVE_HIGH = LATEST_INSTANT.replace(tzinfo=None) + dt.timedelta(days=2)
_NUL_MESSAGE = "must not contain the NUL character"
_RANGE = f"between {EARLIEST_INSTANT.year} and {LATEST_INSTANT.year - 1}"


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_zone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone name, e.g. 'America/New_York'")
    return value


def _bounded_utc(value: dt.datetime) -> dt.datetime:
    if not _NAIVE_LOW <= value.replace(tzinfo=None) <= _NAIVE_HIGH:
        raise ValueError(f"the instant must lie {_RANGE}")
    value = value.astimezone(dt.UTC)
    if not EARLIEST_INSTANT <= value < LATEST_INSTANT:
        raise ValueError(f"the instant must lie {_RANGE}")
    return value


def _bounded_date(value: dt.date) -> dt.date:
    if not EARLIEST_INSTANT.year <= value.year < LATEST_INSTANT.year:
        raise ValueError(f"the date must lie {_RANGE}")
    return value


def _nul_free(value: Any) -> Any:
    # Before the type check: a string is refused for its NUL, anything else by the type check.
    if isinstance(value, str) and NUL in value:
        raise ValueError(_NUL_MESSAGE)
    return value


# The NUL check for any text type. It goes after the type's StringConstraints (constraints
# stacked on top of a validator are applied out of order: stripping after the length check).
NulFree = BeforeValidator(_nul_free)
Text = Annotated[str, NulFree]
TimeZoneName = Annotated[
    str, StringConstraints(max_length=64), NulFree, AfterValidator(_check_zone)
]
# RFC 3339 with an offset; naive times are refused, every value is kept in UTC.
UTCInstant = Annotated[AwareDatetime, AfterValidator(_bounded_utc)]
CalendarDate = Annotated[dt.date, AfterValidator(_bounded_date)]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), NulFree
]


def refuse_nul(request: Request) -> None:
    """422 for a NUL anywhere in the query string or the headers.

    Bodies are checked field by field (`Text`); these parts of a request are plain strings that
    reach audit rows and queries without a schema of their own. A path with a NUL names nothing
    (ids are UUIDs, a visit token is only ever hashed): its route answers 404, as for any
    unknown id.
    """
    parts: list[tuple[str, str, str]] = [
        *(("query", key, value) for key, value in request.query_params.multi_items()),
        *(("header", key, value) for key, value in request.headers.items()),
    ]
    for where, key, value in parts:
        if NUL in key or NUL in value:
            raise ValidationFailed(
                details=[
                    {
                        "loc": [where, key.replace(NUL, "")],
                        "msg": _NUL_MESSAGE,
                        "type": "nul_character",
                    }
                ]
            )
