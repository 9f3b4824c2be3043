"""`Schedule`: cron, aliases, @every, @at, time zones and DST, against real transitions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from cronbus.shared.schedule import Schedule, ScheduleError, jitter_for, parse_timezone


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, zone: str, after: str, n: int = 2) -> list[str]:
    schedule = Schedule.parse(expression, zone)
    return [s.strftime("%Y-%m-%dT%H:%M:%S") for s in schedule.next_fires(utc(after), n)]


# (expression, zone, after (UTC), the next slots (UTC), what the case shows)
DST_CASES = [
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-03-28T12:00",
        ["2026-03-29T01:00:00", "2026-03-30T00:30:00"],
        "02:30 does not exist: fires at 03:00 CEST, the first valid instant after it",
    ),
    (
        "0 * * * *",
        "Europe/Berlin",
        "2026-03-29T00:30",
        ["2026-03-29T01:00:00", "2026-03-29T02:00:00"],
        "the skipped 02:00 and the real 03:00 are one slot, not two",
    ),
    (
        "30 2 * * *",
        "Europe/Berlin",
        "2026-10-24T12:00",
        ["2026-10-25T00:30:00", "2026-10-26T01:30:00"],
        "02:30 happens twice: fires once, at the first (CEST)",
    ),
    (
        "*/30 * * * *",
        "Europe/Berlin",
        "2026-10-24T23:45",
        ["2026-10-25T00:00:00", "2026-10-25T00:30:00", "2026-10-25T02:00:00"],
        "the repeated hour is not fired again",
    ),
    (
        "30 2 * * *",
        "America/New_York",
        "2026-03-07T12:00",
        ["2026-03-08T07:00:00", "2026-03-09T06:30:00"],
        "spring forward: 03:00 EDT",
    ),
    (
        "30 1 * * *",
        "America/New_York",
        "2026-10-31T12:00",
        ["2026-11-01T05:30:00", "2026-11-02T06:30:00"],
        "fall back: 01:30 EDT only",
    ),
    (
        "15 2 * * *",
        "Australia/Lord_Howe",
        "2026-10-03T00:00",
        ["2026-10-03T15:30:00", "2026-10-04T15:15:00"],
        "30-minute DST: 02:15 does not exist, fires at 02:30 +11",
    ),
    (
        "45 1 * * *",
        "Australia/Lord_Howe",
        "2026-04-04T00:00",
        ["2026-04-04T14:45:00", "2026-04-05T15:15:00"],
        "30-minute fall back: 01:45 +11 only",
    ),
    (
        "30 23 * * *",
        "America/Santiago",
        "2026-04-04T12:00",
        ["2026-04-05T02:30:00", "2026-04-06T03:30:00"],
        "fall back at midnight: 23:30 -03 only",
    ),
    (
        "30 0 * * *",
        "America/Santiago",
        "2026-09-05T12:00",
        ["2026-09-06T04:00:00", "2026-09-07T03:30:00"],
        "spring forward at midnight: 00:30 does not exist, fires at 01:00 -03",
    ),
    (
        "0 9 * * *",
        "Asia/Kolkata",
        "2026-01-01T00:00",
        ["2026-01-01T03:30:00", "2026-01-02T03:30:00"],
        "a half-hour offset without DST",
    ),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected", "why"), DST_CASES)
def test_dst_transitions(expression: str, zone: str, after: str, expected: list[str], why: str) -> None:
    assert fires(expression, zone, after, len(expected)) == expected, why


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # croniter alone reads N-N as '*'.
        ("5-5 * * * *", "2026-01-01T00:00", ["2026-01-01T00:05:00", "2026-01-01T01:05:00"]),
        ("0 3-3 * * *", "2026-01-01T00:00", ["2026-01-01T03:00:00", "2026-01-02T03:00:00"]),
        # Both day fields restricted: either matches (the 13th, or any Friday).
        (
            "0 0 13 * 5",
            "2026-01-01T00:00",
            ["2026-01-02T00:00:00", "2026-01-09T00:00:00", "2026-01-13T00:00:00"],
        ),
        # Only one restricted: that one decides.
        ("0 0 * * 5", "2026-01-01T00:00", ["2026-01-02T00:00:00", "2026-01-09T00:00:00"]),
        ("0 0 13 * *", "2026-01-01T00:00", ["2026-01-13T00:00:00", "2026-02-13T00:00:00"]),
        ("0 0 ? * MON", "2026-01-01T00:00", ["2026-01-05T00:00:00", "2026-01-12T00:00:00"]),
        ("0 0 * * 5#3", "2026-01-01T00:00", ["2026-01-16T00:00:00", "2026-02-20T00:00:00"]),
        ("0 0 L 2 *", "2027-01-01T00:00", ["2027-02-28T00:00:00", "2028-02-29T00:00:00"]),
        ("0 0 29 2 *", "2026-01-01T00:00", ["2028-02-29T00:00:00", "2032-02-29T00:00:00"]),
        ("0 0 * * 7", "2026-01-01T00:00", ["2026-01-04T00:00:00", "2026-01-11T00:00:00"]),
        # Six fields: seconds first.
        ("*/20 * * * * *", "2026-01-01T00:00", ["2026-01-01T00:00:20", "2026-01-01T00:00:40"]),
        ("@hourly", "2026-01-01T00:30", ["2026-01-01T01:00:00", "2026-01-01T02:00:00"]),
        ("@daily", "2026-01-01T00:30", ["2026-01-02T00:00:00", "2026-01-03T00:00:00"]),
        ("@weekly", "2026-01-01T00:30", ["2026-01-04T00:00:00", "2026-01-11T00:00:00"]),
        ("@monthly", "2026-01-01T00:30", ["2026-02-01T00:00:00", "2026-03-01T00:00:00"]),
        ("@yearly", "2026-01-01T00:30", ["2027-01-01T00:00:00", "2028-01-01T00:00:00"]),
        # @every is anchored to the epoch: the same grid on every replica, whenever it starts.
        ("@every 7s", "2026-01-01T00:00", ["2026-01-01T00:00:07", "2026-01-01T00:00:14"]),
        ("@every 1h30m", "2026-01-01T00:00", ["2026-01-01T01:30:00", "2026-01-01T03:00:00"]),
        ("@at 2026-02-03T04:05:06Z", "2026-01-01T00:00", ["2026-02-03T04:05:06"]),
    ],
)
def test_expressions(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, "UTC", after, 3)[: len(expected)] == expected
    assert len(fires(expression, "UTC", after, len(expected))) == len(expected)


def test_every_is_anchored_to_the_epoch() -> None:
    schedule = Schedule.parse("@every 7s")
    for after in (utc("2026-01-01T00:00:00"), utc("2031-07-09T13:14:15.5")):
        slot = schedule.next_after(after)
        assert slot is not None
        assert int(slot.timestamp()) % 7 == 0
        assert after < slot <= after + timedelta(seconds=7)


def test_at_in_a_zone_and_after_it() -> None:
    schedule = Schedule.parse("@at 2026-06-01T09:00", "Europe/Berlin")
    assert schedule.next_after(utc("2026-01-01T00:00")) == utc("2026-06-01T07:00")
    assert schedule.next_after(utc("2026-06-01T07:00")) is None
    assert list(schedule.slots_between(utc("2026-01-01T00:00"), utc("2027-01-01T00:00"))) == [
        utc("2026-06-01T07:00")
    ]


def test_slots_between_is_half_open() -> None:
    schedule = Schedule.parse("0 * * * *")
    slots = list(schedule.slots_between(utc("2026-01-01T00:00"), utc("2026-01-01T03:00")))
    assert slots == [utc("2026-01-01T01:00"), utc("2026-01-01T02:00"), utc("2026-01-01T03:00")]


@pytest.mark.parametrize(
    ("expression", "zone", "says"),
    [
        ("0 0 30 2 *", "UTC", "can never fire"),
        ("0 0 31 4,6 *", "UTC", "can never fire"),
        ("61 * * * *", "UTC", "minute field '61'"),
        ("0 24 * * *", "UTC", "hour field '24'"),
        ("0 0 32 * *", "UTC", "day-of-month field '32'"),
        ("0 0 * 13 *", "UTC", "month field '13'"),
        ("0 0 * * FOO", "UTC", "day-of-week field 'FOO'"),
        ("70 * * * * *", "UTC", "second field '70'"),
        ("0 0 15W * *", "UTC", "'W'"),
        ("* * * *", "UTC", "4 fields"),
        ("* * * * * * *", "UTC", "7 fields"),
        ("@fortnightly", "UTC", "unknown alias"),
        ("@every soon", "UTC", "'@every' needs a duration"),
        ("@every 0s", "UTC", "at least 1s"),
        ("@at tomorrow", "UTC", "'@at' needs an ISO-8601 time"),
        ("", "UTC", "empty"),
        # croniter reads a backwards range as '*' and takes any step: both are refused.
        ("1-0 * * * *", "UTC", "runs backwards"),
        ("0 0 * * FRI-MON", "UTC", "runs backwards"),
        ("0 0 * DEC-JAN *", "UTC", "runs backwards"),
        ("*/99999999999 * * * *", "UTC", "must be 1 to 60"),
        ("0 */25 * * *", "UTC", "must be 1 to 24"),
        ("*/0 * * * *", "UTC", "step '0'"),
        ("@every 99999999999999999999d", "UTC", "longer than the maximum, 366d"),
        ("@every 367d", "UTC", "longer than the maximum, 366d"),
        ("@every nan", "UTC", "not a finite duration"),
        ("@every inf", "UTC", "not a finite duration"),
        ("@every -5s", "UTC", "'@every' needs a duration"),
        ("@at 0001-01-01T00:00:00Z", "UTC", "the year must be 1970 to 2200"),
        ("@at 9999-12-31T23:59:59", "Europe/Berlin", "the year must be 1970 to 2200"),
        ("0 3 * * *\x00", "UTC", "control characters"),
        ("0 " + ",".join(["1"] * 600) + " * * *", "UTC", "at most 1000"),
    ],
)
def test_invalid_expressions_say_what_and_where(expression: str, zone: str, says: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse(expression, zone)
    assert caught.value.field == "schedule"
    assert says in caught.value.reason
    # Every message offers an example of something that works.
    assert "e.g." in caught.value.reason or "like" in caught.value.reason or "use" in caught.value.reason


@pytest.mark.parametrize(
    "zone",
    [
        "posixrules",
        "localtime",
        "Factory",
        "right/UTC",
        "posix/Europe/Berlin",
        "x" * 300,
        "../UTC",
        "Europe/",
    ],
)
def test_only_iana_zone_names(zone: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        Schedule.parse("0 3 * * *", zone)
    assert caught.value.field == "timezone"
    assert "is not an IANA time zone" in caught.value.reason


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_iana_zones_stay_valid(zone: str) -> None:
    assert Schedule.parse("0 3 * * *", zone).timezone == zone


@pytest.mark.parametrize(
    "expression",
    ["*/60 * * * *", "0 9-17 * * MON-FRI", "0 0 * * 0-7", "0 0 1 JAN-DEC *", "5-5 * * * *", "@every 366d",
     "@at 1970-01-01T00:00:00Z", "@at 2200-12-31T23:59:59Z", "0 0 * * 5#3", "0 0 L * *"],
)  # fmt: skip
def test_bounded_forms_stay_valid(expression: str) -> None:
    assert Schedule.parse(expression, "UTC").expression == expression


def test_unknown_zone() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_timezone("Mars/Olympus")
    assert caught.value.field == "timezone"
    with pytest.raises(ScheduleError):
        Schedule.parse("* * * * *", "Europe/Nowhere")


def test_schedules_are_values() -> None:
    assert Schedule.parse("0 3 * * *", "UTC") == Schedule.parse("0  3 * * *", "UTC")
    assert hash(Schedule.parse("0 3 * * *")) == hash(Schedule.parse("0 3 * * *"))


def test_jitter_is_deterministic_and_bounded() -> None:
    slot = utc("2026-01-01T00:00")
    assert jitter_for("a", slot, 0) == timedelta(0)
    values = {jitter_for(f"job{i}", slot, 10.0) for i in range(50)}
    assert all(timedelta(0) <= v < timedelta(seconds=10) for v in values)
    assert len(values) > 40
    assert jitter_for("a", slot, 10.0) == jitter_for("a", slot, 10.0)


# --- properties -------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
]


def _field(low: int, high: int, allow_step: bool = True) -> st.SearchStrategy[str]:
    single = st.integers(low, high).map(str)
    span = st.tuples(st.integers(low, high), st.integers(low, high)).filter(lambda t: t[0] < t[1])
    options = [
        st.just("*"),
        single,
        span.map(lambda t: f"{t[0]}-{t[1]}"),
        st.lists(st.integers(low, high), min_size=2, max_size=4, unique=True).map(
            lambda v: ",".join(map(str, v))
        ),
    ]
    if allow_step:
        options.append(st.integers(2, max(2, (high - low) // 2)).map(lambda k: f"*/{k}"))
    return st.one_of(options)


# Hours 0-3 are where DST transitions happen: weight them.
cron_expressions = st.tuples(
    _field(0, 59),
    st.one_of(_field(0, 23), _field(0, 3)),
    # No '*/k' in the day fields: croniter (the oracle below) counts those as restricted.
    _field(1, 28, allow_step=False),
    _field(1, 12),
    _field(0, 6, allow_step=False),
).map(" ".join)

instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def _is_transition(slot: datetime, zone: ZoneInfo) -> bool:
    return (slot - timedelta(seconds=1)).astimezone(zone).utcoffset() != slot.astimezone(zone).utcoffset()


@settings(max_examples=150, deadline=None)
@given(expression=cron_expressions, zone=st.sampled_from(ZONES), after=instants)
def test_slots_increase_match_and_never_repeat(expression: str, zone: str, after: datetime) -> None:
    schedule = Schedule.parse(expression, zone)
    tz = ZoneInfo(zone)
    slots = schedule.next_fires(after, 12)
    assert slots, expression
    assert all(a < b for a, b in zip([after, *slots], slots, strict=False))
    walls = [s.astimezone(tz).replace(tzinfo=None) for s in slots]
    # A wall-clock time never fires twice (the repeated hour of a fall-back).
    assert len(set(walls)) == len(walls)
    for slot, wall in zip(slots, walls, strict=True):
        # Each slot matches in local time, or is the transition that skipped a matching time.
        assert croniter.match(expression, wall) or _is_transition(slot, tz), (slot, wall)


@settings(max_examples=150, deadline=None)
@given(expression=cron_expressions, after=instants)
def test_in_utc_the_slots_are_crons(expression: str, after: datetime) -> None:
    """Without DST our matcher and croniter agree slot for slot."""
    ours = Schedule.parse(expression, "UTC").next_fires(after, 8)
    it = croniter(expression, after)
    theirs = [it.get_next(datetime).astimezone(UTC) for _ in range(8)]
    assert ours == theirs


@settings(max_examples=100, deadline=None)
@given(seconds=st.integers(1, 90_000), after=instants)
def test_every_slots_are_evenly_spaced(seconds: int, after: datetime) -> None:
    slots = Schedule.parse(f"@every {seconds}s").next_fires(after, 4)
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(slots)} == {float(seconds)}
    assert 0 < (slots[0] - after).total_seconds() <= seconds
