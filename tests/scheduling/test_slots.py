"""Slot generation: DST vectors, and properties over random schedules (Hypothesis)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduling import slots
from scheduling.slots import Hours, Schedule

UTC = dt.UTC
ZONES = [
    "America/New_York",
    "Europe/Berlin",
    "UTC",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Sao_Paulo",
    "Asia/Kathmandu",
]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def t(clock: str) -> dt.time:
    return dt.time.fromisoformat(clock)


def every_day(hours: tuple[Hours, ...], zone: str, minutes: int = 30) -> Schedule:
    return Schedule(timezone=zone, slot_minutes=minutes, weekly=(hours,) * 7)


def starts(schedule: Schedule, day: dt.date) -> list[str]:
    """The day's slot starts as UTC 'HH:MM' (with the date when it differs)."""
    begin = utc(day.year, day.month, day.day) - 86_400
    result = slots.candidate_slots(schedule, begin, begin + 3 * 86_400, now=0)
    zone = ZoneInfo(schedule.timezone)
    out = []
    for s, _ in result:
        local = dt.datetime.fromtimestamp(s, zone)
        if local.date() == day:
            out.append(dt.datetime.fromtimestamp(s, UTC).strftime("%m-%d %H:%M"))
    return out


class TestDaylightSavingVectors:
    def test_new_york_spring_forward_window_is_two_real_hours(self) -> None:
        schedule = every_day((Hours(t("01:00"), t("04:00")),), "America/New_York")
        assert starts(schedule, dt.date(2026, 3, 8)) == [
            "03-08 06:00",  # 01:00 EST
            "03-08 06:30",  # 01:30 EST
            "03-08 07:00",  # 03:00 EDT (02:00-03:00 does not exist)
            "03-08 07:30",  # 03:30 EDT, ending 04:00 EDT
        ]

    def test_new_york_fall_back_window_is_four_real_hours(self) -> None:
        schedule = every_day((Hours(t("01:00"), t("04:00")),), "America/New_York")
        assert starts(schedule, dt.date(2026, 11, 1)) == [
            "11-01 05:00",  # 01:00 EDT (first occurrence)
            "11-01 05:30",
            "11-01 06:00",  # 01:00 EST (second occurrence)
            "11-01 06:30",
            "11-01 07:00",  # 02:00 EST
            "11-01 07:30",
            "11-01 08:00",
            "11-01 08:30",  # 03:30 EST, ending 04:00 EST
        ]

    def test_berlin_spring_forward_window_is_two_real_hours(self) -> None:
        schedule = every_day((Hours(t("01:00"), t("04:00")),), "Europe/Berlin")
        assert starts(schedule, dt.date(2026, 3, 29)) == [
            "03-29 00:00",  # 01:00 CET
            "03-29 00:30",
            "03-29 01:00",  # 03:00 CEST (02:00-03:00 does not exist)
            "03-29 01:30",
        ]

    def test_berlin_fall_back_window_is_four_real_hours(self) -> None:
        schedule = every_day((Hours(t("01:00"), t("04:00")),), "Europe/Berlin")
        assert starts(schedule, dt.date(2026, 10, 25)) == [
            "10-24 23:00",  # 01:00 CEST
            "10-24 23:30",
            "10-25 00:00",  # 02:00 CEST (first occurrence)
            "10-25 00:30",
            "10-25 01:00",  # 02:00 CET (second occurrence)
            "10-25 01:30",
            "10-25 02:00",
            "10-25 02:30",  # 03:30 CET, ending 04:00 CET
        ]

    @pytest.mark.parametrize(
        ("zone", "before", "after", "before_utc", "after_utc"),
        [
            ("America/New_York", dt.date(2026, 3, 7), dt.date(2026, 3, 8), "14:00", "13:00"),
            ("America/New_York", dt.date(2026, 10, 31), dt.date(2026, 11, 1), "13:00", "14:00"),
            ("Europe/Berlin", dt.date(2026, 3, 28), dt.date(2026, 3, 29), "08:00", "07:00"),
            ("Europe/Berlin", dt.date(2026, 10, 24), dt.date(2026, 10, 25), "07:00", "08:00"),
        ],
    )
    def test_office_hours_keep_their_wall_clock_across_the_change(
        self, zone: str, before: dt.date, after: dt.date, before_utc: str, after_utc: str
    ) -> None:
        schedule = every_day((Hours(t("09:00"), t("12:00")),), zone)
        assert starts(schedule, before)[0].endswith(before_utc)
        assert starts(schedule, after)[0].endswith(after_utc)
        assert len(starts(schedule, before)) == len(starts(schedule, after)) == 6

    def test_window_starting_in_the_gap_starts_when_the_clock_resumes(self) -> None:
        schedule = every_day((Hours(t("02:30"), t("04:00")),), "America/New_York")
        # 02:30 does not exist on 8 March; it is read as 03:30 EDT (07:30 UTC).
        assert starts(schedule, dt.date(2026, 3, 8)) == ["03-08 07:30"]

    def test_end_of_day_window_reaches_midnight(self) -> None:
        schedule = every_day((Hours(t("23:00"), None),), "Europe/Berlin", minutes=30)
        assert starts(schedule, dt.date(2026, 7, 1)) == ["07-01 21:00", "07-01 21:30"]


class TestRules:
    def test_exception_day_off_and_replacement_hours(self) -> None:
        day_off, short_day = dt.date(2026, 12, 24), dt.date(2026, 12, 31)
        schedule = Schedule(
            timezone="UTC",
            slot_minutes=60,
            weekly=((Hours(t("09:00"), t("12:00")),),) * 7,
            exceptions={day_off: (), short_day: (Hours(t("14:00"), t("15:00")),)},
        )
        assert starts(schedule, day_off) == []
        assert starts(schedule, short_day) == ["12-31 14:00"]
        assert starts(schedule, dt.date(2026, 12, 23)) == [
            "12-23 09:00",
            "12-23 10:00",
            "12-23 11:00",
        ]

    def test_notice_and_horizon_bound_the_offer(self) -> None:
        schedule = Schedule(
            timezone="UTC",
            slot_minutes=60,
            weekly=((Hours(t("00:00"), None),),) * 7,
            min_notice_minutes=120,
            horizon_days=1,
        )
        now = utc(2026, 6, 1, 10, 0)
        offered = slots.candidate_slots(schedule, now - 86_400, now + 3 * 86_400, now)
        assert offered[0][0] == utc(2026, 6, 1, 13, 0)  # 12:00 is not *after* now + 2 h
        assert offered[-1][0] == utc(2026, 6, 2, 9, 0)  # starts before now + 1 day
        assert slots.offered_end(schedule, utc(2026, 6, 1, 12, 0), now) is None
        assert slots.offered_end(schedule, utc(2026, 6, 1, 13, 0), now) == utc(2026, 6, 1, 14)
        assert slots.offered_end(schedule, utc(2026, 6, 2, 10, 0), now) is None

    def test_back_to_back_bookings_leave_neighbours_free(self) -> None:
        schedule = every_day((Hours(t("09:00"), t("10:00")),), "UTC", minutes=20)
        day = utc(2026, 6, 3)
        busy = [(utc(2026, 6, 3, 9, 20), utc(2026, 6, 3, 9, 40))]
        free = slots.free_slots(schedule, day, day + 86_400, 0, busy)
        assert free == [
            (utc(2026, 6, 3, 9, 0), utc(2026, 6, 3, 9, 20)),
            (utc(2026, 6, 3, 9, 40), utc(2026, 6, 3, 10, 0)),
        ]

    def test_off_grid_booking_blocks_every_slot_it_touches(self) -> None:
        schedule = every_day((Hours(t("09:00"), t("10:00")),), "UTC", minutes=20)
        day = utc(2026, 6, 3)
        busy = [(utc(2026, 6, 3, 9, 10), utc(2026, 6, 3, 9, 30))]
        free = slots.free_slots(schedule, day, day + 86_400, 0, busy)
        assert free == [(utc(2026, 6, 3, 9, 40), utc(2026, 6, 3, 10, 0))]


# Properties ---------------------------------------------------------------------------------

clock = st.integers(min_value=0, max_value=24 * 4 - 1).map(
    lambda quarter: dt.time(quarter // 4, quarter % 4 * 15)
)


@st.composite
def day_hours(draw: st.DrawFn) -> tuple[Hours, ...]:
    points = sorted(set(draw(st.lists(clock, min_size=0, max_size=6))))
    if len(points) % 2:
        points = points[:-1]
    hours = [Hours(points[i], points[i + 1]) for i in range(0, len(points), 2)]
    if draw(st.booleans()) and hours:
        last = hours[-1]
        hours[-1] = Hours(last.start, None)  # until 24:00
    return tuple(hours)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    base = dt.date(2026, 1, 1)
    exceptions = {
        base + dt.timedelta(days=draw(st.integers(0, 400))): draw(day_hours())
        for _ in range(draw(st.integers(0, 5)))
    }
    return Schedule(
        timezone=draw(st.sampled_from(ZONES)),
        slot_minutes=draw(st.sampled_from([5, 10, 15, 20, 30, 45, 60, 90])),
        weekly=tuple(draw(day_hours()) for _ in range(7)),
        exceptions=exceptions,
        min_notice_minutes=draw(st.sampled_from([0, 0, 30, 24 * 60])),
        horizon_days=draw(st.sampled_from([None, None, 3, 30])),
    )


instants = st.integers(min_value=utc(2026, 1, 1), max_value=utc(2027, 1, 31))
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(instants)
    return start, start + draw(st.integers(0, 62 * 86_400))


def _oracle_inside_hours(schedule: Schedule, start: int, end: int) -> bool:
    """Checked on wall clocks, independently of how the generator converts windows."""
    zone = ZoneInfo(schedule.timezone)
    local_start = dt.datetime.fromtimestamp(start, zone)
    local_end = dt.datetime.fromtimestamp(end, zone)
    day = local_start.date()
    hours = schedule.exceptions.get(day, schedule.weekly[day.weekday()])
    for item in hours:
        if local_start.time() < item.start and not _in_gap(day, item.start, zone):
            continue
        if item.end is None:
            if local_end.date() == day or local_end.time() == dt.time(0, 0):
                return True
        elif local_end.date() == day and local_end.time() <= item.end:
            return True
    return False


def _in_gap(day: dt.date, clock_time: dt.time, zone: ZoneInfo) -> bool:
    naive = dt.datetime.combine(day, clock_time)
    roundtrip = naive.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return roundtrip != naive


class TestProperties:
    @PROPERTY
    @given(schedules(), ranges(), instants)
    def test_every_offered_slot_is_bookable(
        self, schedule: Schedule, span: tuple[int, int], now: int
    ) -> None:
        for start, end in slots.candidate_slots(schedule, span[0], span[1], now):
            assert slots.offered_end(schedule, start, now) == end
            assert span[0] <= start
            assert end <= span[1]

    @PROPERTY
    @given(schedules(), ranges(), instants, st.data())
    def test_every_bookable_instant_is_offered(
        self, schedule: Schedule, span: tuple[int, int], now: int, data: st.DataObject
    ) -> None:
        offered = set(slots.candidate_slots(schedule, span[0], span[1], now))
        minute = 60
        for _ in range(200):
            start = data.draw(st.integers(span[0] // minute, span[1] // minute)) * minute
            end = slots.offered_end(schedule, start, now)
            if end is not None and span[0] <= start and end <= span[1]:
                assert (start, end) in offered

    @PROPERTY
    @given(schedules(), ranges(), instants)
    def test_no_slot_outside_hours_notice_or_horizon(
        self, schedule: Schedule, span: tuple[int, int], now: int
    ) -> None:
        earliest, latest = slots.bounds(schedule, now)
        for start, end in slots.candidate_slots(schedule, span[0], span[1], now):
            assert end - start == schedule.slot_minutes * 60
            assert start > earliest
            assert latest is None or start < latest
            assert _oracle_inside_hours(schedule, start, end), (start, end)

    @PROPERTY
    @given(
        schedules(),
        ranges(),
        st.lists(st.tuples(instants, st.integers(60, 4 * 3600)), max_size=30),
    )
    def test_free_slots_overlap_no_booking_and_only_bookings_remove_slots(
        self, schedule: Schedule, span: tuple[int, int], raw_busy: list[tuple[int, int]]
    ) -> None:
        busy = [(start, start + length) for start, length in raw_busy]
        offered = slots.candidate_slots(schedule, span[0], span[1], 0)
        free = slots.free_slots(schedule, span[0], span[1], 0, busy)
        assert free == sorted(free)
        for start, end in offered:
            overlaps = any(b_start < end and b_end > start for b_start, b_end in busy)
            assert ((start, end) in free) != overlaps

    @PROPERTY
    @given(schedules(), ranges(), st.sampled_from(ZONES), st.sampled_from(ZONES))
    def test_same_instants_whatever_the_viewers_zone(
        self, schedule: Schedule, span: tuple[int, int], zone_a: str, zone_b: str
    ) -> None:
        def seen_from(zone: str) -> list[tuple[int, int]]:
            start = dt.datetime.fromtimestamp(span[0], ZoneInfo(zone))
            end = dt.datetime.fromtimestamp(span[1], ZoneInfo(zone))
            return slots.candidate_slots(
                schedule, slots.to_instant(start), slots.to_instant(end), 0
            )

        assert seen_from(zone_a) == seen_from(zone_b)
