"""`Schedule`: when a job fires. Pure: time is always passed in, never read.

Kinds: cron (5 fields, or 6 with seconds first), the `@hourly`-style aliases,
`@every <duration>` (slots on a grid through the job's anchor, so every replica computes the same
slots; without an anchor the grid runs through the Unix epoch)
and `@at <ISO-8601>` (one slot). Cron fields are read in the job's IANA time zone.

croniter parses the fields (names, ranges, steps, `L`, `#`); matching is our own, on wall-clock
time, because croniter alone gets two things wrong that cronbus promises (DESIGN.md "Time
semantics"): it reads `N-N` as `*`, and it fires twice when a local time repeats at the end of
daylight saving time. It also reads `5-1` as `*` and takes steps such as `*/99`; both are
refused here. Limits: `@every` 1s to 366d, `@at` in the years 1970 to 2200, IANA zone names
only. Here:

* a wall-clock time that does not exist (spring forward) fires once, at the first valid instant
  after it (the transition itself); several such times collapse into that one slot;
* a wall-clock time that occurs twice (fall back) fires once, at its first occurrence;
* day-of-month and day-of-week: when both are restricted (neither starts with `*` or `?`) a day
  matches if either matches, otherwise both must (the classic Vixie cron rule).
"""

from __future__ import annotations

import bisect
import calendar
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter

from cronbus.shared.durations import DurationError, parse_duration

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Far enough to find the rarest real schedule (29 February on a given weekday: a 28-year cycle).
_SEARCH_YEARS = 30
# The longest schedule text accepted: a cron list of every minute is under 200 characters.
MAX_EXPRESSION = 1000
# The longest `@every` interval: a year (leap years included).
MAX_INTERVAL = 366 * 86400.0
# The years an `@at` instant may fall in.
MIN_YEAR, MAX_YEAR = 1970, 2200
# (name, position in a 5-field expression, range, example) for messages that help.
_FIELDS = (
    ("minute", 0, "0-59", "'*/15' or '0,30'"),
    ("hour", 1, "0-23", "'3' or '9-17'"),
    ("day-of-month", 2, "1-31 or L", "'1', '1,15' or 'L'"),
    ("month", 3, "1-12 or JAN-DEC", "'*' or 'JAN,JUL'"),
    ("day-of-week", 4, "0-7 or SUN-SAT (0 and 7 are Sunday)", "'MON-FRI' or '5#3'"),
)
_SECOND = ("second", -1, "0-59", "'0' or '*/10'")
# How many values each field has: the largest step that still means something.
_SPAN = {"second": 60, "minute": 60, "hour": 24, "day-of-month": 31, "month": 12, "day-of-week": 7}
_NAMED = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1
    )
} | {name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# Names zoneinfo can load that are not IANA zones: the system's own setting, tzdata's
# placeholder, a build artefact, and the duplicate trees with and without leap seconds.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})
_NOT_ZONE_TREES = ("posix/", "right/")
_ZONE_EXAMPLES = "use a name like 'UTC', 'Europe/Berlin' or 'America/New_York'"
# `5-5` and `5-5/2` mean just 5; croniter would read them as `*`.
_SINGLE_RANGE = re.compile(r"(?<![\w#])(\w+)-\1(?:/\d+)?(?![\w#])", re.IGNORECASE)


class ScheduleError(ValueError):
    """An expression or time zone that cannot be scheduled. `field` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@lru_cache(maxsize=1)
def iana_zones() -> frozenset[str]:
    """The IANA time zone names this host knows (tzdata), without the aliases that are not zones."""
    return frozenset(
        name
        for name in available_timezones()
        if name not in _NOT_ZONES and not name.startswith(_NOT_ZONE_TREES)
    )


def parse_timezone(name: str) -> ZoneInfo:
    """The zone named `name`, which must be an IANA name (`UTC`, `Europe/Berlin`, `Etc/GMT+5`)."""
    if name not in iana_zones():
        shown = repr(name) if len(name) <= 64 else f"{name[:64]!r}... ({len(name)} characters)"
        raise ScheduleError("timezone", f"{shown} is not an IANA time zone; {_ZONE_EXAMPLES}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError("timezone", f"{name!r} cannot be loaded on this host; {_ZONE_EXAMPLES}") from None


@dataclass(frozen=True, slots=True)
class CronFields:
    """A cron expression compiled to sorted allowed values; matching runs on naive wall time."""

    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    last_day: bool
    months: tuple[int, ...]
    # Cron numbering: 0 = Sunday.
    weekdays: frozenset[int]
    # weekday -> which occurrences in the month (`5#3` = the third Friday).
    nth: tuple[tuple[int, frozenset[int]], ...]
    dom_restricted: bool
    dow_restricted: bool

    def day_matches(self, day: date) -> bool:
        dom = day.day in self.days or (
            self.last_day and day.day == calendar.monthrange(day.year, day.month)[1]
        )
        weekday = (day.weekday() + 1) % 7
        dow = weekday in self.weekdays
        if dow and self.nth:
            for nth_weekday, occurrences in self.nth:
                if nth_weekday == weekday:
                    dow = (day.day - 1) // 7 + 1 in occurrences
        if self.dom_restricted and self.dow_restricted:
            return dom or dow
        return dom and dow

    def next_match(self, start: datetime) -> datetime | None:
        """The first naive wall-clock time strictly after `start` (naive) that matches."""
        t = start.replace(microsecond=0) + timedelta(seconds=1)
        last_year = t.year + _SEARCH_YEARS
        while t.year <= last_year:
            if t.month not in self.months:
                i = bisect.bisect_right(self.months, t.month)
                if i < len(self.months):
                    t = datetime(t.year, self.months[i], 1)
                else:
                    t = datetime(t.year + 1, self.months[0], 1)
                continue
            if not self.day_matches(t.date()):
                t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if t.hour not in self.hours:
                i = bisect.bisect_right(self.hours, t.hour)
                if i < len(self.hours):
                    t = t.replace(hour=self.hours[i], minute=0, second=0)
                else:
                    t = datetime(t.year, t.month, t.day) + timedelta(days=1)
                continue
            if t.minute not in self.minutes:
                i = bisect.bisect_right(self.minutes, t.minute)
                if i < len(self.minutes):
                    t = t.replace(minute=self.minutes[i], second=0)
                else:
                    t = t.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if t.second not in self.seconds:
                i = bisect.bisect_right(self.seconds, t.second)
                if i < len(self.seconds):
                    t = t.replace(second=self.seconds[i])
                else:
                    t = t.replace(second=0) + timedelta(minutes=1)
                continue
            return t
        return None


def _values(expanded: list[int | str], low: int, high: int) -> list[int]:
    if expanded == ["*"]:
        return list(range(low, high + 1))
    return sorted({int(v) for v in expanded if v != "l"})


def _unrestricted(text: str) -> bool:
    return text.startswith(("*", "?"))


def _check_field(name: str, position: int, allowed: str, example: str, text: str) -> None:
    """Raise a ScheduleError that names the one cron field croniter cannot read."""
    upper = text.upper()
    if "W" in upper and name == "day-of-month":
        raise ScheduleError(
            "schedule", f"{name} field {text!r}: 'W' (nearest weekday) is not supported; use e.g. {example}"
        )
    if upper.startswith("H"):
        raise ScheduleError("schedule", f"{name} field {text!r}: hashed values ('H') are not supported")
    probe = ["*"] * 5
    probe[max(position, 0)] = text
    try:
        croniter.expand(" ".join(probe))
    except (CroniterError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise ScheduleError(
            "schedule", f"{name} field {text!r} is not valid (allowed: {allowed}; e.g. {example}): {exc}"
        ) from None
    _check_ranges_and_steps(name, example, text)


def _field_value(text: str) -> int | None:
    """A plain field value as a number (names included); None for anything else (`L`, `5#3`)."""
    lowered = text.lower()
    if lowered in _NAMED:
        return _NAMED[lowered]
    return int(lowered) if lowered.isdigit() else None


def _check_ranges_and_steps(name: str, example: str, text: str) -> None:
    """Reject what croniter reads as something else: `5-1` (as `*`) and steps beyond the field."""
    for part in text.split(","):
        span, _, step = part.partition("/")
        if step and (not step.isdigit() or not 1 <= int(step) <= _SPAN[name]):
            raise ScheduleError(
                "schedule", f"{name} field {text!r}: step {step!r} must be 1 to {_SPAN[name]}; e.g. {example}"
            )
        low, dash, high = span.partition("-")
        first, last = _field_value(low), _field_value(high)
        if dash and first is not None and last is not None and first > last:
            raise ScheduleError(
                "schedule",
                f"{name} field {text!r}: the range {span!r} runs backwards; write it low to high "
                f"(e.g. '{high}-{low}'), or as a list (e.g. '{low},{high}')",
            )


def compile_cron(text: str) -> tuple[str, CronFields]:
    """(the normalised 5- or 6-field expression, its compiled fields) for cron text or an alias."""
    cron = ALIASES.get(text.lower(), text)
    if cron.startswith("@"):
        raise ScheduleError(
            "schedule",
            f"unknown alias {text!r}; use one of {', '.join(ALIASES)}, '@every 90s' or '@at ...'",
        )
    parts = cron.split(" ")
    if len(parts) not in (5, 6):
        raise ScheduleError(
            "schedule",
            f"{len(parts)} fields in {text!r}; cron takes 5 (minute hour day month weekday, "
            "e.g. '0 3 * * *') or 6 with seconds first (e.g. '*/10 * * * * *')",
        )
    parts = [_SINGLE_RANGE.sub(r"\1", p) for p in parts]
    second = parts[0] if len(parts) == 6 else "0"
    five = parts[-5:]
    for (name, position, allowed, example), text_field in zip(_FIELDS, five, strict=True):
        _check_field(name, position, allowed, example, text_field)
    _check_field(*_SECOND, second)
    try:
        expanded, nth = croniter.expand(" ".join(five))
        seconds_expanded, _ = croniter.expand(f"{second} * * * *")
    except (CroniterError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise ScheduleError("schedule", f"{text!r} is not a valid cron expression: {exc}") from None
    minutes, hours, days, months, weekdays = expanded
    fields = CronFields(
        seconds=tuple(_values(seconds_expanded[0], 0, 59)),
        minutes=tuple(_values(minutes, 0, 59)),
        hours=tuple(_values(hours, 0, 23)),
        days=frozenset(_values(days, 1, 31)),
        last_day="l" in days,
        months=tuple(_values(months, 1, 12)),
        weekdays=frozenset(v % 7 for v in _values(weekdays, 0, 6)),
        nth=tuple((int(k) % 7, frozenset(int(x) for x in v)) for k, v in nth.items()),
        dom_restricted=not _unrestricted(five[2]),
        dow_restricted=not _unrestricted(five[4]),
    )
    normalised = " ".join(parts if len(parts) == 6 else five)
    return normalised, fields


def _to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of naive wall time `wall` in `zone`: its first occurrence when it repeats,
    the transition that skipped it when it does not exist."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap the two folds bracket the transition; find it to the second.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    lo, hi = int(min(first, other).timestamp()), int(max(first, other).timestamp())
    after = datetime.fromtimestamp(hi, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    expression: str
    timezone: str = "UTC"
    kind: str = "cron"
    # cron: the normalised expression; every: the interval in seconds; at: the instant.
    cron: str = ""
    interval: float = 0.0
    # every: where the grid sits, in ms after an epoch-aligned slot (the anchor modulo the
    # interval): slots are epoch + phase_ms + k * interval.
    phase_ms: int = 0
    at: datetime | None = None
    fields: CronFields | None = field(default=None, repr=False, compare=False)

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC", anchor: datetime | None = None) -> Schedule:
        """`anchor` places an `@every` grid (a slot falls on it); cron and `@at` ignore it."""
        zone = parse_timezone(timezone)
        if len(expression) > MAX_EXPRESSION:
            raise ScheduleError(
                "schedule",
                f"{len(expression)} characters; a schedule has at most {MAX_EXPRESSION}, e.g. '0 3 * * *'",
            )
        text = " ".join(expression.split())
        if not text:
            raise ScheduleError("schedule", "empty; write a cron expression like '0 3 * * *'")
        if not text.isprintable():
            raise ScheduleError("schedule", "contains control characters; write e.g. '0 3 * * *'")
        lowered = text.lower()
        if lowered.startswith("@every"):
            rest = text[len("@every") :].strip()
            try:
                seconds = parse_duration(rest)
            except DurationError as exc:
                raise ScheduleError(
                    "schedule", f"'@every' needs a duration like '@every 90s': {exc}"
                ) from None
            if seconds < 1:
                raise ScheduleError("schedule", "'@every' must be at least 1s, e.g. '@every 5s'")
            if seconds > MAX_INTERVAL:
                raise ScheduleError(
                    "schedule",
                    f"'@every {rest}' is longer than the maximum, 366d; use a cron expression for rarer "
                    "schedules, e.g. '0 0 1 1 *'",
                )
            every = cls(expression=text, timezone=timezone, kind="every", interval=seconds)
            return every.anchored(anchor) if anchor is not None else every
        if lowered.startswith("@at"):
            rest = text[len("@at") :].strip()
            try:
                instant = datetime.fromisoformat(rest)
            except ValueError:
                raise ScheduleError(
                    "schedule", f"'@at' needs an ISO-8601 time like '@at 2030-01-31T09:00:00Z', not {rest!r}"
                ) from None
            # Checked before any conversion: years 1 and 9999 overflow when shifted by a zone.
            if not MIN_YEAR <= instant.year <= MAX_YEAR:
                raise ScheduleError(
                    "schedule",
                    f"'@at {rest}': the year must be {MIN_YEAR} to {MAX_YEAR}, "
                    "e.g. '@at 2030-01-31T09:00:00Z'",
                )
            if instant.tzinfo is None:
                instant = _to_instant(instant, zone)
            return cls(expression=text, timezone=timezone, kind="at", at=instant.astimezone(UTC))
        cron, fields = compile_cron(text)
        if fields.next_match(datetime(2000, 1, 1)) is None:
            raise ScheduleError(
                "schedule",
                f"{text!r} can never fire: no date has both that day-of-month and that month "
                "(e.g. 30 February); check the day and month fields, e.g. '0 0 28 2 *'",
            )
        return cls(expression=text, timezone=timezone, kind="cron", cron=cron, fields=fields)

    def anchored(self, anchor: datetime) -> Schedule:
        """This `@every` schedule on the grid through `anchor`; other kinds are returned as they are."""
        if self.kind != "every":
            return self
        step = round(self.interval * 1000)
        phase = ((anchor.astimezone(UTC) - _EPOCH) // timedelta(milliseconds=1)) % step
        return self if phase == self.phase_ms else replace(self, phase_ms=phase)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, after: datetime) -> datetime | None:
        """The first slot strictly after `after` (aware), in UTC; None when there is none."""
        after = after.astimezone(UTC)
        if self.kind == "every":
            # Integer milliseconds: float steps would drift off the grid.
            step = round(self.interval * 1000)
            now_ms = (after - _EPOCH) // timedelta(milliseconds=1) - self.phase_ms
            return _EPOCH + timedelta(milliseconds=(now_ms // step + 1) * step + self.phase_ms)
        if self.kind == "at":
            assert self.at is not None
            return self.at if self.at > after else None
        assert self.fields is not None
        zone = self.zone
        wall = after.astimezone(zone).replace(tzinfo=None)
        while True:
            nxt = self.fields.next_match(wall)
            if nxt is None:
                return None
            instant = _to_instant(nxt, zone)
            # Inside the second pass of a repeated hour, wall times map to their first (earlier)
            # occurrence, already past: keep walking.
            if instant > after:
                return instant
            wall = nxt

    def next_fires(self, after: datetime, n: int = 5) -> list[datetime]:
        out: list[datetime] = []
        t: datetime | None = after
        while len(out) < n and t is not None:
            t = self.next_after(t)
            if t is not None:
                out.append(t)
        return out

    def slots_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Slots s with start < s <= end, in order."""
        t = self.next_after(start)
        while t is not None and t <= end:
            yield t
            t = self.next_after(t)


def jitter_for(job_id: str, slot: datetime, max_jitter: float) -> timedelta:
    """A delay in [0, max_jitter) derived from (job_id, slot): every leader computes the same."""
    if max_jitter <= 0:
        return timedelta(0)
    digest = hashlib.blake2b(f"{job_id}:{round(slot.timestamp() * 1000)}".encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    return timedelta(seconds=fraction * max_jitter)
