"""Field types shared by every domain's request schemas."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, StringConstraints


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_zone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone name, e.g. 'America/New_York'")
    return value


def _to_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


TimeZoneName = Annotated[str, StringConstraints(max_length=64), AfterValidator(_check_zone)]
# RFC 3339 with an offset; naive times are refused, every value is kept in UTC.
UTCInstant = Annotated[AwareDatetime, AfterValidator(_to_utc)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
