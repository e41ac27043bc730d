"""Slot listings, rendered once per clinician and day and reused while nothing changed.

A listing over 62 days of 5-minute slots is thousands of slots; computing and rendering them on
every request costs tens of times a trivial request. Free slots depend only on the availability
(its `updated_at`) and the bookings (the `bookings_version` that database triggers raise on every
appointment change), both read by the listing's single query, so a cached day is exact: never
stale, whichever process or tool changed the data. "Now" (notice, horizon, past slots) and the
requested range are applied when serving, by bisecting the cached days.

Each cached day keeps its slots' starts, their JSON rendering as one string, and the offset of
each slot in it: a few dozen bytes per slot, no Python object per slot.
"""

from __future__ import annotations

import bisect
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

DAY = 86_400
# "THH:MM:00Z" for every minute of a day: slot instants fall on whole minutes.
_MINUTE_SUFFIX = [f"T{m // 60:02d}:{m % 60:02d}:00Z" for m in range(1440)]

Version = tuple[object, int]
# Days kept per clinician: a few listings' worth; ranges far apart start a fresh entry.
MAX_DAYS = 400


def rfc3339(instant: int, days: dict[int, str]) -> str:
    """UTC, second precision, `Z`: two table look-ups instead of a datetime formatting."""
    day, second = divmod(instant, DAY)
    if second % 60:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(instant))
    prefix = days.get(day)
    if prefix is None:
        prefix = days[day] = time.strftime("%Y-%m-%d", time.gmtime(day * DAY))
    return prefix + _MINUTE_SUFFIX[second // 60]


@dataclass(frozen=True, slots=True)
class RenderedDay:
    starts: array[int]  # slot starts, epoch seconds, sorted
    ends: array[int]
    offsets: array[int]  # where each slot's JSON object begins in `text`; one more at the end
    text: bytes  # b'{"start":..,"end":..},{"start":..}' ... with a trailing comma

    @classmethod
    def render(cls, slots: Iterable[tuple[int, int]], days: dict[int, str]) -> RenderedDay:
        starts, ends, offsets = array("q"), array("q"), array("q")
        parts: list[str] = []
        position = 0
        for start, end in slots:
            part = f'{{"start":"{rfc3339(start, days)}","end":"{rfc3339(end, days)}"}},'
            starts.append(start)
            ends.append(end)
            offsets.append(position)
            parts.append(part)
            position += len(part)
        offsets.append(position)
        # Bytes, ready for the socket: a listing is joined from these slices without re-encoding.
        return cls(starts, ends, offsets, "".join(parts).encode("ascii"))

    def between(self, first_start: int, last_start: int) -> bytes:
        """The JSON objects of the slots starting in [first_start, last_start], comma-joined."""
        i = bisect.bisect_left(self.starts, first_start)
        j = bisect.bisect_right(self.starts, last_start)
        return self.text[self.offsets[i] : self.offsets[j] - 1] if i < j else b""


class SlotCache:
    """Rendered days per clinician, for the current version only, least recently used evicted."""

    def __init__(self, max_clinicians: int = 128) -> None:
        self._max = max_clinicians
        self._entries: OrderedDict[uuid.UUID, tuple[Version, dict[int, RenderedDay]]] = (
            OrderedDict()
        )

    def get(
        self, clinician_id: uuid.UUID, version: Version, first_day: int, last_day: int
    ) -> list[RenderedDay] | None:
        entry = self._entries.get(clinician_id)
        if entry is None or entry[0] != version:
            return None
        rendered = entry[1]
        days = [rendered.get(day) for day in range(first_day, last_day + 1)]
        if any(day is None for day in days):
            return None
        self._entries.move_to_end(clinician_id)
        return [day for day in days if day is not None]

    def put(self, clinician_id: uuid.UUID, version: Version, days: dict[int, RenderedDay]) -> None:
        entry = self._entries.get(clinician_id)
        if entry is not None and entry[0] == version and len(entry[1]) + len(days) <= MAX_DAYS:
            entry[1].update(days)
        else:
            self._entries[clinician_id] = (version, dict(days))
        self._entries.move_to_end(clinician_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
