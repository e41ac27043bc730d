"""Slot generation: pure functions from a clinician's schedule to bookable instants.

Hours are wall-clock times in the clinician's zone. Each day's window is turned into two UTC
instants first and slots step through real time from the window's start, so a visit always
lasts `slot_minutes` of real time. On a spring-forward day a window 01:00-04:00 in New York
is two real hours (six 20-minute slots: 01:00, 01:20, 01:40, 03:00 ...); on a fall-back day it
is four. A wall time that does not exist (02:30 on spring-forward day) is read with the offset
in force before the change, i.e. as 03:30; an ambiguous one (01:30 on fall-back day) as its
first occurrence. Every instant here is an integer of seconds since the epoch (UTC): the slot
listing handles thousands of them per request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

_DAY = dt.timedelta(days=1)
END_OF_DAY = dt.time(0, 0)  # "24:00" as an end: midnight at the end of the day


@dataclass(frozen=True, slots=True)
class Hours:
    start: dt.time
    # None means 24:00, the end of the day.
    end: dt.time | None


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: str
    slot_minutes: int
    # Index = weekday (0 = Monday); each a tuple of non-overlapping hours.
    weekly: tuple[tuple[Hours, ...], ...]
    # A date mapped to its replacement hours; an empty tuple is a day off.
    exceptions: dict[dt.date, tuple[Hours, ...]] = field(default_factory=dict)
    min_notice_minutes: int = 0
    horizon_days: int | None = None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def step(self) -> int:
        return self.slot_minutes * 60


def _instant(day: dt.date, clock: dt.time | None, zone: ZoneInfo) -> int:
    if clock is None:
        # 24:00 is the next day's midnight.
        return int(dt.datetime.combine(day + _DAY, END_OF_DAY, zone).timestamp())
    return int(dt.datetime.combine(day, clock, zone).timestamp())


def day_windows(schedule: Schedule, day: dt.date) -> list[tuple[int, int]]:
    """The UTC windows [start, end) of one local date's hours."""
    zone = schedule.zone
    hours = schedule.exceptions.get(day)
    if hours is None:
        hours = schedule.weekly[day.weekday()]
    windows = []
    for item in hours:
        start = _instant(day, item.start, zone)
        end = _instant(day, item.end, zone)
        if end > start:
            windows.append((start, end))
    return windows


def _local_dates(schedule: Schedule, start: int, end: int) -> Iterable[dt.date]:
    zone = schedule.zone
    # A day's window may reach past its own date (24:00, time zone offsets): look one day wider.
    first = dt.datetime.fromtimestamp(start, zone).date() - _DAY
    last = dt.datetime.fromtimestamp(end, zone).date() + _DAY
    day = first
    while day <= last:
        yield day
        day += _DAY


def bounds(schedule: Schedule, now: int) -> tuple[int, int | None]:
    """The earliest start (exclusive) and the latest start (exclusive) offered at `now`."""
    earliest = now + schedule.min_notice_minutes * 60
    latest = None if schedule.horizon_days is None else now + schedule.horizon_days * 86_400
    return earliest, latest


def _windows(schedule: Schedule, start: int, end: int) -> list[tuple[int, int]]:
    windows: list[tuple[int, int]] = []
    for day in _local_dates(schedule, start, end):
        windows.extend(sorted(day_windows(schedule, day)))
    return windows


def iter_free(
    schedule: Schedule,
    start: int,
    end: int,
    now: int | None,
    busy: Sequence[tuple[int, int]] = (),
) -> Iterator[tuple[int, int]]:
    """Offered slots lying wholly inside [start, end) that overlap no busy interval, in order.

    With `now` None, notice and horizon are not applied (the caller applies them later).
    Windows come day after day and slots step forward within each, so one forward pointer over
    the busy intervals (merged, sorted) decides every overlap.
    """
    step = schedule.step
    low, high_start = start, end - step
    if now is not None:
        earliest, latest = bounds(schedule, now)
        low = max(start, earliest + 1)
        if latest is not None:
            high_start = min(high_start, latest - 1)
    merged = _merge(busy)
    count, pointer = len(merged), 0
    for w_start, w_end in _windows(schedule, start, end):
        first = w_start
        if first < low:
            # Jump to the first grid point of this window at or after `low`.
            first = w_start + -(-(low - w_start) // step) * step
        for s in range(first, min(w_end - step, high_start) + 1, step):
            e = s + step
            while pointer < count and merged[pointer][1] <= s:
                pointer += 1
            if pointer < count and merged[pointer][0] < e:
                continue
            yield s, e


def _merge(busy: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for b_start, b_end in sorted(busy):
        if merged and b_start <= merged[-1][1]:
            if b_end > merged[-1][1]:
                merged[-1] = (merged[-1][0], b_end)
        else:
            merged.append((b_start, b_end))
    return merged


def candidate_slots(schedule: Schedule, start: int, end: int, now: int) -> list[tuple[int, int]]:
    """Slots lying wholly inside [start, end) and offered at `now`, ignoring bookings."""
    return list(iter_free(schedule, start, end, now))


def free_slots(
    schedule: Schedule,
    start: int,
    end: int,
    now: int,
    busy: Sequence[tuple[int, int]],
) -> list[tuple[int, int]]:
    """Offered slots in [start, end) that overlap no busy interval (sorted by start)."""
    return list(iter_free(schedule, start, end, now, busy))


def offered_end(schedule: Schedule, start: int, now: int) -> int | None:
    """The end of the slot starting at `start` if one is offered at `now`, else None."""
    earliest, latest = bounds(schedule, now)
    if start <= earliest or (latest is not None and start >= latest):
        return None
    step = schedule.step
    for day in _local_dates(schedule, start, start):
        for w_start, w_end in day_windows(schedule, day):
            if w_start <= start <= w_end - step and (start - w_start) % step == 0:
                return start + step
    return None


def to_instant(value: dt.datetime) -> int:
    """Whole seconds since the epoch; slot boundaries never carry fractions."""
    return int(value.timestamp())
