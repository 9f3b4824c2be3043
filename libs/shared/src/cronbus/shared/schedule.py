"""`Schedule`: when a job fires. Pure: time is always passed in, never read.

Kinds: cron (5 fields, or 6 with seconds first), the `@hourly`-style aliases,
`@every <duration>` (anchored to the Unix epoch, so every replica computes the same slots)
and `@at <ISO-8601>` (one slot). Cron fields are read in the job's IANA time zone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

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


class ScheduleError(ValueError):
    """An expression or time zone that cannot be scheduled. `field` names the culprit."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            "timezone", f"{name!r} is not an IANA time zone; use a name like 'UTC' or 'Europe/Berlin'"
        ) from None


@dataclass(frozen=True, slots=True)
class Schedule:
    expression: str
    timezone: str = "UTC"
    kind: str = "cron"
    # cron: the normalised expression; every: the interval in seconds; at: the instant.
    cron: str = ""
    interval: float = 0.0
    at: datetime | None = None

    @classmethod
    def parse(cls, expression: str, timezone: str = "UTC") -> Schedule:
        zone = parse_timezone(timezone)
        text = " ".join(expression.split())
        if not text:
            raise ScheduleError("schedule", "empty; write a cron expression like '0 3 * * *'")
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
            return cls(expression=text, timezone=timezone, kind="every", interval=seconds)
        if lowered.startswith("@at"):
            rest = text[len("@at") :].strip()
            try:
                instant = datetime.fromisoformat(rest)
            except ValueError:
                raise ScheduleError(
                    "schedule", f"'@at' needs an ISO-8601 time like '@at 2030-01-31T09:00:00Z', not {rest!r}"
                ) from None
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=zone)
            return cls(expression=text, timezone=timezone, kind="at", at=instant.astimezone(UTC))
        cron = ALIASES.get(lowered, text)
        if cron.startswith("@"):
            raise ScheduleError(
                "schedule",
                f"unknown alias {text!r}; use one of {', '.join(ALIASES)}, '@every 90s' or '@at ...'",
            )
        fields = cron.split(" ")
        if len(fields) not in (5, 6):
            raise ScheduleError(
                "schedule",
                f"{len(fields)} fields in {text!r}; cron takes 5 (minute hour day month weekday, "
                "e.g. '0 3 * * *') or 6 with seconds first (e.g. '*/10 * * * * *')",
            )
        if len(fields) == 6:
            # Seconds first for users; croniter wants them last.
            cron = " ".join([*fields[1:], fields[0]])
        try:
            croniter(cron, datetime(2000, 1, 1, tzinfo=zone))
        except (CroniterBadCronError, ValueError, KeyError) as exc:
            raise ScheduleError("schedule", f"{text!r} is not a valid cron expression: {exc}") from None
        schedule = cls(expression=text, timezone=timezone, kind="cron", cron=cron)
        try:
            first = schedule.next_after(datetime(2000, 1, 1, tzinfo=UTC))
        except CroniterBadDateError:
            first = None
        if first is None:
            raise ScheduleError("schedule", f"{text!r} can never fire (no such date); check day and month")
        return schedule

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, after: datetime) -> datetime | None:
        """The first slot strictly after `after` (aware), in UTC; None when there is none."""
        after = after.astimezone(UTC)
        if self.kind == "every":
            step = self.interval
            k = int(after.timestamp() // step) + 1
            return datetime.fromtimestamp(k * step, UTC)
        if self.kind == "at":
            assert self.at is not None
            return self.at if self.at > after else None
        it = croniter(self.cron, after.astimezone(self.zone))
        try:
            nxt: datetime = it.get_next(datetime)
        except CroniterBadDateError:
            return None
        return nxt.astimezone(UTC)

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
    import hashlib

    digest = hashlib.blake2b(f"{job_id}:{int(slot.timestamp() * 1000)}".encode(), digest_size=8).digest()
    fraction = int.from_bytes(digest, "big") / 2**64
    return timedelta(seconds=fraction * max_jitter)
