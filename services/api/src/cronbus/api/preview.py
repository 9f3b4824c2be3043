"""The next fires of a schedule as a person reads them: each in UTC and in the job's zone, with a
note where daylight saving time moves it (pure: the caller passes the instant to count from)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronbus.api.domain import FieldError, InvalidInput
from cronbus.shared.schedule import Schedule, ScheduleError

MAX_PREVIEW = 100


@dataclass(frozen=True, slots=True)
class Fire:
    at: datetime  # UTC
    local: datetime  # the same instant in the schedule's zone
    note: str | None = None


def preview(expression: str, timezone: str, after: datetime, count: int,
            anchor: datetime | None = None) -> list[Fire]:  # fmt: skip
    """The next `count` fires strictly after `after`, or InvalidInput naming the field."""
    errors: list[FieldError] = []
    if not 1 <= count <= MAX_PREVIEW:
        errors.append(FieldError(field="count", reason=f"{count}; ask for 1 to {MAX_PREVIEW} fires"))
    try:
        schedule = Schedule.parse(expression, timezone, anchor)
    except ScheduleError as exc:
        errors.append(FieldError(field=exc.field, reason=exc.reason))
    if errors:
        raise InvalidInput(errors)
    zone = schedule.zone
    fires = []
    for at in schedule.next_fires(after, count):
        local = at.astimezone(zone)
        fires.append(Fire(at=at, local=local, note=dst_note(schedule, local)))
    return fires


def dst_note(schedule: Schedule, local: datetime) -> str | None:
    """Why a cron fire is not at the wall time its expression names, or happens only once where
    the wall time occurs twice; None when daylight saving time plays no part."""
    if schedule.kind != "cron" or schedule.fields is None:
        return None
    zone = local.tzinfo
    wall = local.replace(tzinfo=None)
    # Through UTC: arithmetic on an aware time in its own zone is wall-clock arithmetic.
    before = (local.astimezone(UTC) - timedelta(seconds=1)).astimezone(zone)
    if before.utcoffset() != local.utcoffset() and _offset(local) > _offset(before):
        # Clocks went forward at this instant: the expression may have named a skipped time.
        skipped_from = before.replace(tzinfo=None) + timedelta(seconds=1)
        named = schedule.fields.next_match(skipped_from - timedelta(microseconds=1))
        if named is not None and named < wall:
            return (
                f"{named:%H:%M} does not exist on {named:%Y-%m-%d} (clocks go forward), "
                f"fires at {local:%H:%M}"
            )
        return None
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        return (
            f"{wall:%H:%M} occurs twice on {wall:%Y-%m-%d} (clocks go back), "
            f"fires once, at the first (UTC{first:%z})"
        )
    return None


def _offset(moment: datetime) -> timedelta:
    return moment.utcoffset() or timedelta(0)
