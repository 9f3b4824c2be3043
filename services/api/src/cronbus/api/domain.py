"""The API's domain: validating job input, folding job events into state, and views.

Pure: no I/O and no clock reads (the current time is passed in). Specific exceptions here
become problem details at the HTTP edge (problems.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum
from functools import lru_cache
from typing import Any

import msgspec

from cronbus.api import validation as limits
from cronbus.api.schemas import (
    CatchupOut,
    FieldError,
    HttpExecutorIn,
    HttpExecutorOut,
    JobIn,
    JobOut,
    JobPatch,
    JobStateName,
    LastRun,
    LeaderGap,
    RetentionIn,
    RetentionOut,
    RetriesOut,
    ShellExecutorIn,
    ShellExecutorOut,
    SlotOut,
)
from cronbus.shared.durations import DurationError, format_duration, parse_duration
from cronbus.shared.events import (
    Catchup,
    Executor,
    HttpExecutor,
    JobCreated,
    JobDeleted,
    JobEvents,
    JobPaused,
    JobResumed,
    JobSpec,
    JobUpdated,
    Retention,
    Retries,
    ShellExecutor,
)
from cronbus.shared.names import NameError_, check_token
from cronbus.shared.schedule import Schedule, ScheduleError
from cronbus.shared.secrets import MASK, secret_names
from cronbus.shared.sizes import SizeError, parse_size

NEXT_FIRES = 5


@lru_cache(maxsize=4096)
def parse_schedule(expression: str, timezone: str) -> Schedule:
    """Schedule.parse, remembered: it is pure, and parsing costs more than the rest of a view."""
    return Schedule.parse(expression, timezone)


_HTTP_METHOD = re.compile(r"^[A-Z]{3,10}$")


# --- errors ------------------------------------------------------------------------------------


class InvalidInput(ValueError):
    """Input that cannot become what was asked for; `errors` name each field and reason."""

    def __init__(self, errors: list[FieldError], detail: str = "") -> None:
        self.errors = errors
        self.detail = detail or "; ".join(f"{e.field}: {e.reason}" for e in errors)
        super().__init__(self.detail)


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}; list jobs with GET /v1/jobs")
        self.job_id = job_id


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}; list a job's runs with GET /v1/jobs/{{id}}/runs")
        self.run_id = run_id


class RevisionConflict(RuntimeError):
    """The job changed since the revision the client named (or concurrently with this write)."""

    def __init__(self, job_id: str, expected: int | None, current: int | None) -> None:
        detail = f"job {job_id} is at revision {current}" if current is not None else f"job {job_id} changed"
        if expected is not None:
            detail += f", not {expected}"
        super().__init__(f"{detail}; fetch it again and retry with the current revision")
        self.current = current


class JobIsPaused(RuntimeError):
    """A write that would dispatch runs of a paused job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id} is paused: resume it (POST /v1/jobs/{job_id}/resume) before backfilling it"
        )
        self.job_id = job_id


class ProjectionBehind(TimeoutError):
    """The history has not caught up with a revision a read asked for, within the bound."""

    def __init__(self, job_id: str, revision: int, seen: int | None, waited: float) -> None:
        have = "nothing yet" if seen is None else f"revision {seen}"
        super().__init__(
            f"job {job_id} revision {revision} is not in the history after {waited:.0f}s (it has {have}); "
            "is the logs service running? Retry shortly"
        )


# --- ids ---------------------------------------------------------------------------------------


def check_id(kind: str, value: str) -> str:
    """`value` as a canonical UUID string, or InvalidInput: ids become NATS subject tokens."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidInput(
            [FieldError(field="id", reason=f"{value!r} is not a {kind} id (a UUID like {uuid.UUID(int=0)})")]
        ) from None
    return str(parsed)


# --- roles -------------------------------------------------------------------------------------


class Role(IntEnum):
    """Each role may do what the roles below it may do."""

    viewer = 1
    operator = 2
    admin = 3

    @classmethod
    def named(cls, name: str) -> Role | None:
        return cls.__members__.get(name)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `name` goes into events as their `actor`."""

    name: str
    role: Role


# --- job input -> spec -------------------------------------------------------------------------


def _duration(
    errors: list[FieldError], field: str, value: str | float, *, maximum: float, positive: bool = False
) -> float:
    try:
        # Milliseconds are the API's precision: "12650353ms" must read back as the 12650.353 it
        # was written from (float arithmetic alone gives 12650.353000000001), or PATCH would drift.
        seconds = round(parse_duration(value), 3)
    except DurationError as exc:
        errors.append(FieldError(field=field, reason=str(exc)))
        return 0.0
    if positive and seconds <= 0:
        errors.append(FieldError(field=field, reason=f"{value!r} must be more than zero, e.g. '10m'"))
    limits.check_duration(errors, field, seconds, maximum)
    return seconds


def check_spec(job: JobIn, prefix: str = "") -> tuple[JobSpec | None, list[FieldError]]:
    """The event form of `job` (durations in seconds), or every problem with it.

    `prefix` goes before each field name: `[17].` for the 18th job of a batch.
    """
    errors: list[FieldError] = []
    name = job.name.strip()
    if not name:
        errors.append(FieldError(field="name", reason="empty; give the job a name, e.g. 'backup'"))
    else:
        limits.check_text(errors, "name", name, max_chars=limits.MAX_NAME)
    try:
        parse_schedule(job.schedule, job.timezone)
    except ScheduleError as exc:
        errors.append(FieldError(field=exc.field, reason=exc.reason))
    try:
        check_token("pool", job.pool)
    except NameError_ as exc:
        errors.append(FieldError(field="pool", reason=str(exc)))
    timeout = (
        None
        if job.timeout is None
        else _duration(errors, "timeout", job.timeout, maximum=limits.MAX_TIMEOUT, positive=True)
    )
    window = _duration(errors, "catchup.window", job.catchup.window, maximum=limits.MAX_CATCHUP_WINDOW)
    backoff = _duration(errors, "retries.backoff", job.retries.backoff, maximum=limits.MAX_BACKOFF)
    max_backoff = _duration(
        errors, "retries.max_backoff", job.retries.max_backoff, maximum=limits.MAX_MAX_BACKOFF
    )
    jitter = _duration(errors, "jitter", job.jitter, maximum=limits.MAX_JITTER)
    limits.check_retries(errors, "", job.retries.max_attempts, job.retries.multiplier)
    start_at = limits.check_instant(errors, "start_at", job.start_at)
    end_at = limits.check_instant(errors, "end_at", job.end_at)
    if start_at and end_at and end_at <= start_at:
        errors.append(FieldError(field="end_at", reason="must be after start_at"))
    limits.check_text(
        errors, "description", job.description, max_bytes=limits.MAX_DESCRIPTION_BYTES, multiline=True
    )
    limits.check_labels(errors, "", job.labels)
    executor = _executor(errors, job.executor)
    retention = _retention(errors, job.retention)
    anchor = limits.check_instant(errors, "anchor", job.anchor)
    if executor is not None:
        _check_no_mask(errors, executor)
    if errors:
        return None, [FieldError(field=prefix + e.field, reason=e.reason) for e in errors]
    assert executor is not None
    return JobSpec(
        name=name,
        schedule=" ".join(job.schedule.split()),
        executor=executor,
        timezone=job.timezone,
        pool=job.pool,
        timeout=timeout,
        overlap=job.overlap,
        catchup=Catchup(policy=job.catchup.policy, window=window),
        retries=Retries(
            max_attempts=job.retries.max_attempts,
            backoff=backoff,
            multiplier=job.retries.multiplier,
            max_backoff=max_backoff,
        ),
        jitter=jitter,
        start_at=start_at,
        end_at=end_at,
        description=job.description,
        labels=job.labels,
        retention=retention,
        anchor=anchor,
    ), []


def spec_from_input(job: JobIn) -> JobSpec:
    """The event form of `job` (durations in seconds), or InvalidInput naming every problem."""
    spec, errors = check_spec(job)
    if spec is None:
        raise InvalidInput(errors)
    return spec


# The history store keeps counts and sizes in signed 64-bit columns and parameters.
_MAX_LIMIT = 2**63 - 1


def _retention(errors: list[FieldError], retention: RetentionIn) -> Retention:
    runs = retention.runs
    if runs is not None and not 0 <= runs <= _MAX_LIMIT:
        errors.append(
            FieldError(
                field="retention.runs", reason=f"{runs} is out of range; give 0 (keep every run) or more"
            )
        )
    log_bytes = None
    if retention.log_bytes is not None:
        try:
            log_bytes = parse_size(retention.log_bytes)
        except SizeError as exc:
            errors.append(FieldError(field="retention.log_bytes", reason=str(exc)))
        else:
            if log_bytes > _MAX_LIMIT:
                errors.append(
                    FieldError(field="retention.log_bytes", reason=f"{retention.log_bytes!r} is too large")
                )
    return Retention(runs=runs, log_bytes=log_bytes)


def _executor(
    errors: list[FieldError], executor: ShellExecutorIn | HttpExecutorIn
) -> ShellExecutor | HttpExecutor | None:
    if isinstance(executor, ShellExecutorIn):
        command = executor.command
        if (isinstance(command, str) and not command.strip()) or (isinstance(command, list) and not command):
            errors.append(
                FieldError(field="executor.command", reason="empty; give a command to run, e.g. 'echo hi'")
            )
            return None
        before = len(errors)
        limits.check_shell(errors, "", executor)
        if len(errors) > before:
            return None
        return ShellExecutor(command=command, env=executor.env, cwd=executor.cwd, secrets=executor.secrets)
    before = len(errors)
    limits.check_http(errors, "", executor)
    ok = len(errors) == before
    if not executor.url.startswith(("http://", "https://")):
        errors.append(
            FieldError(field="executor.url", reason=f"{executor.url!r} must start with http:// or https://")
        )
        ok = False
    method = executor.method.upper()
    if not _HTTP_METHOD.match(method):
        errors.append(
            FieldError(field="executor.method", reason=f"{executor.method!r} is not an HTTP method")
        )
        ok = False
    bad = [s for s in executor.expect_status if not 100 <= s <= 599]
    if bad:
        errors.append(FieldError(field="executor.expect_status", reason=f"{bad} are not HTTP status codes"))
        ok = False
    if executor.max_body_bytes < 0:
        errors.append(FieldError(field="executor.max_body_bytes", reason="must be zero or more"))
        ok = False
    if not ok:
        return None
    return HttpExecutor(
        url=executor.url,
        method=method,
        headers=executor.headers,
        body=executor.body,
        expect_status=executor.expect_status,
        follow_redirects=executor.follow_redirects,
        max_body_bytes=executor.max_body_bytes,
        secrets=executor.secrets,
    )


def input_from_spec(spec: JobSpec) -> dict[str, Any]:
    """The input form of `spec` (durations as strings): what a PATCH is laid over."""
    return {
        "name": spec.name,
        "schedule": spec.schedule,
        "executor": msgspec.to_builtins(spec.executor),
        "timezone": spec.timezone,
        "pool": spec.pool,
        "timeout": None if spec.timeout is None else format_duration(spec.timeout),
        "overlap": spec.overlap,
        "catchup": {"policy": spec.catchup.policy, "window": format_duration(spec.catchup.window)},
        "retries": {
            "max_attempts": spec.retries.max_attempts,
            "backoff": format_duration(spec.retries.backoff),
            "multiplier": spec.retries.multiplier,
            "max_backoff": format_duration(spec.retries.max_backoff),
        },
        "jitter": format_duration(spec.jitter),
        "start_at": spec.start_at,
        "end_at": spec.end_at,
        "description": spec.description,
        "labels": spec.labels,
        "retention": {"runs": spec.retention.runs, "log_bytes": spec.retention.log_bytes},
        "anchor": spec.anchor,
    }


def patched_spec(spec: JobSpec, patch: JobPatch) -> JobSpec:
    """`spec` with the fields `patch` gives replaced, validated like a new job.

    A secret sent back as "***" (as a client read it) keeps the value stored for it.
    """
    merged = input_from_spec(spec)
    changes = msgspec.to_builtins(patch)  # UNSET fields are left out
    changes.pop("revision", None)
    if isinstance(changes.get("executor"), dict):
        changes["executor"] = _unmasked(spec, changes["executor"])
    merged.update(changes)
    merged = msgspec.to_builtins(merged)
    try:
        job = msgspec.convert(merged, JobIn)
    except msgspec.ValidationError as exc:
        raise InvalidInput([limits.field_error(str(exc))]) from None
    return spec_from_input(job)


def _check_no_mask(errors: list[FieldError], executor: Executor) -> None:
    """A secret given as "***" only keeps a stored value (a PATCH restores it before this):
    one still "***" here has none, e.g. a new job made from an export."""
    bag, values = (
        ("env", executor.env) if isinstance(executor, ShellExecutor) else ("headers", executor.headers)
    )
    for name in secret_names(executor):
        if values[name] == MASK:
            errors.append(
                FieldError(
                    field=f"executor.{bag}.{name}",
                    reason=f'"{MASK}" stands for a stored secret and this job has none: give the value',
                )
            )


def _unmasked(spec: JobSpec, executor: dict[str, Any]) -> dict[str, Any]:
    """`executor` (input form) with each "***" that stands for a stored secret put back."""
    stored = spec.executor
    key = "env" if isinstance(stored, ShellExecutor) else "headers"
    given = executor.get(key)
    if executor.get("type") != stored.__struct_config__.tag or not isinstance(given, dict):
        return executor
    values = stored.env if isinstance(stored, ShellExecutor) else stored.headers
    # Header names are case-insensitive; env names are not.
    fold = (lambda k: k) if isinstance(stored, ShellExecutor) else str.lower
    secret = {fold(name): values[name] for name in secret_names(stored)}
    restored = {k: secret.get(fold(k), v) if v == MASK else v for k, v in given.items()}
    return {**executor, key: restored}


# --- job state ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobState:
    """A job after its events so far."""

    id: str
    spec: JobSpec
    revision: int
    paused: bool
    deleted: bool
    created_at: datetime
    updated_at: datetime


def evolve(state: JobState | None, event: JobEvents) -> JobState | None:
    """The job after `event`. Events for a job that was never created are ignored."""
    match event:
        case JobCreated():
            return JobState(
                id=event.job_id,
                spec=event.spec,
                revision=event.revision,
                paused=event.paused,
                deleted=False,
                created_at=event.occurred_at,
                updated_at=event.occurred_at,
            )
    if state is None:
        return None
    state = replace(state, revision=event.revision, updated_at=event.occurred_at)
    match event:
        case JobUpdated():
            return replace(state, spec=event.spec)
        case JobPaused():
            return replace(state, paused=True)
        case JobResumed():
            return replace(state, paused=False)
        case JobDeleted():
            return replace(state, deleted=True)
    return state


def _interval(spec: JobSpec) -> float | None:
    """The interval of an `@every` schedule in seconds; None for other (or unreadable) ones."""
    try:
        schedule = parse_schedule(spec.schedule, spec.timezone)
    except ScheduleError:
        return None
    return schedule.interval if schedule.kind == "every" else None


def phase_offset(job_id: str, interval: float) -> timedelta:
    """Where in one interval job `job_id`'s grid lies after its creation: a fraction of the
    interval taken from a hash of the id, so it is the same everywhere and jobs created
    together (a batch, a script's loop) spread over the interval instead of firing together."""
    fraction = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") / 2**64
    return timedelta(milliseconds=int(fraction * round(interval * 1000)))


def anchored(spec: JobSpec, now: datetime, job_id: str, previous: JobSpec | None = None) -> JobSpec:
    """`spec` with the anchor of its `@every` grid: the one it names, else `now` (to the ms)
    plus the job's `phase_offset`, so its first run comes within one interval of its creation.

    A job whose interval schedule ran on the epoch grid before anchors existed keeps that grid
    through its changes, so none of its slots moves.
    """
    interval = _interval(spec)
    if spec.anchor is not None or interval is None:
        return spec
    if previous is not None and previous.anchor is None and _interval(previous) is not None:
        return spec
    # Milliseconds: slot identity's unit.
    created = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return msgspec.structs.replace(spec, anchor=created + phase_offset(job_id, interval))


def next_fires(spec: JobSpec, now: datetime, n: int = NEXT_FIRES) -> list[datetime]:
    """The next `n` slots after `now` inside the job's start/end bounds; none for a schedule
    that no longer parses or cannot be computed (stored before input was bounded)."""
    try:
        schedule = parse_schedule(spec.schedule, spec.timezone)
        if spec.anchor is not None:
            schedule = schedule.anchored(spec.anchor)
        after = max(now, spec.start_at) if spec.start_at else now
        fires = schedule.next_fires(after, n)
    except (ScheduleError, OverflowError, ValueError):
        return []
    if spec.end_at is not None:
        fires = [f for f in fires if f <= spec.end_at]
    return fires


def _masked(values: dict[str, str], secret: frozenset[str]) -> dict[str, str]:
    return {k: MASK if k in secret else v for k, v in values.items()} if secret else values


# Outcomes that make a job `failing` unless `succeeded`; a `skipped` run (overlap policy) did
# not run, so it says nothing about the job's health.
RAN_OUTCOMES = ("succeeded", "failed", "timed_out", "cancelled", "lost")


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a job's state needs from its runs: the newest, and the newest finished one's status
    (`RAN_OUTCOMES` only)."""

    last_run: LastRun | None = None
    last_outcome: str | None = None


NO_RUNS = RunSummary()


def is_one_off(spec: JobSpec) -> bool:
    """An `@at` job (how the history's SQL tells it too: the schedule starts with '@at')."""
    return spec.schedule[:3].lower() == "@at"


def job_state(state: JobState, now: datetime, runs: RunSummary) -> JobStateName:
    """`paused`, else `finished` (a one-off that ran, or `end_at` passed), else `failing` (the
    last finished run did not succeed), else `scheduled`. history.state_of is the same rule
    in SQL, for filtering: keep them together."""
    if state.paused:
        return "paused"
    spec = state.spec
    if (spec.end_at is not None and spec.end_at < now) or (is_one_off(spec) and runs.last_run is not None):
        return "finished"
    if runs.last_outcome is not None and runs.last_outcome != "succeeded":
        return "failing"
    return "scheduled"


def job_view(state: JobState, now: datetime, runs: RunSummary = NO_RUNS) -> JobOut:
    """The job as answered to every role: secret values read "***" (they are write-only)."""
    spec = state.spec
    executor: ShellExecutorOut | HttpExecutorOut
    secret = secret_names(spec.executor)
    if isinstance(spec.executor, ShellExecutor):
        executor = ShellExecutorOut(
            command=spec.executor.command,
            env=_masked(spec.executor.env, secret),
            cwd=spec.executor.cwd,
            secrets=spec.executor.secrets,
        )
    else:
        e = spec.executor
        executor = HttpExecutorOut(
            url=e.url,
            method=e.method,
            headers=_masked(e.headers, secret),
            body=e.body,
            expect_status=e.expect_status,
            follow_redirects=e.follow_redirects,
            max_body_bytes=e.max_body_bytes,
            secrets=e.secrets,
        )
    return JobOut(
        id=state.id,
        revision=state.revision,
        name=spec.name,
        schedule=spec.schedule,
        timezone=spec.timezone,
        executor=executor,
        pool=spec.pool,
        timeout=None if spec.timeout is None else format_duration(spec.timeout),
        overlap=spec.overlap,
        catchup=CatchupOut(policy=spec.catchup.policy, window=format_duration(spec.catchup.window)),
        retries=RetriesOut(
            max_attempts=spec.retries.max_attempts,
            backoff=format_duration(spec.retries.backoff),
            multiplier=spec.retries.multiplier,
            max_backoff=format_duration(spec.retries.max_backoff),
        ),
        jitter=format_duration(spec.jitter),
        start_at=spec.start_at,
        end_at=spec.end_at,
        description=spec.description,
        labels=spec.labels,
        retention=RetentionOut(runs=spec.retention.runs, log_bytes=spec.retention.log_bytes),
        anchor=spec.anchor,
        paused=state.paused,
        created_at=state.created_at,
        updated_at=state.updated_at,
        next_fires=[] if state.paused or state.deleted else next_fires(spec, now),
        state=job_state(state, now, runs),
        last_run=runs.last_run,
    )


# --- slots (backfill, "why didn't it run?") ------------------------------------------------------

# The most slots one backfill or slot listing covers.
MAX_SLOTS = 10_000


def slots_in(spec: JobSpec, start: datetime, end: datetime, *, field_prefix: str = "") -> list[datetime]:
    """The slots of the job's schedule in [start, end), oldest first; InvalidInput for a reversed
    or empty range, one holding more than MAX_SLOTS, or a schedule that no longer computes.

    Slots are the nominal times (before jitter), inside the job's start/end bounds or not: a
    caller that dispatches them drops those outside."""
    errors: list[FieldError] = []
    for name, value in ((f"{field_prefix}from", start), (f"{field_prefix}to", end)):
        if value.tzinfo is None:
            errors.append(FieldError(field=name, reason="give a UTC offset, e.g. '2030-01-31T09:00:00Z'"))
    if errors:
        raise InvalidInput(errors)
    if end <= start:
        raise InvalidInput(
            [
                FieldError(
                    field=f"{field_prefix}to",
                    reason=f"must be after from ({start.isoformat()}): the range is [from, to)",
                )
            ]
        )
    try:
        schedule = parse_schedule(spec.schedule, spec.timezone)
        if spec.anchor is not None:
            schedule = schedule.anchored(spec.anchor)
        found: list[datetime] = []
        for slot in schedule.slots_between(start - timedelta(milliseconds=1), end):
            if slot >= end:
                break
            if len(found) == MAX_SLOTS:
                raise InvalidInput(
                    [
                        FieldError(
                            field=f"{field_prefix}to",
                            reason=f"the range holds more than {MAX_SLOTS} slots of {spec.schedule!r}; "
                            "split it into smaller ranges",
                        )
                    ]
                )
            found.append(slot)
    except (ScheduleError, OverflowError, ValueError) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(
            [FieldError(field="schedule", reason=f"the job's schedule does not compute: {exc}")]
        ) from None
    return found


@dataclass(frozen=True, slots=True)
class Interval:
    """[start, end); `end` None: still going on."""

    start: datetime
    end: datetime | None

    def holds(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)


@dataclass(frozen=True, slots=True)
class SlotFacts:
    """What is known about a job's slots, each from a record: its runs (SQL and DISPATCH),
    the job's own events (created, paused, resumed, deleted, each with its bounds and
    catch-up policy in force), and the schedulers' terms of leadership."""

    # slot -> (run id, status, error) of its scheduled (or caught-up, backfilled) run
    runs: dict[datetime, tuple[str, str, str | None]]
    created_at: datetime
    paused: list[Interval] = field(default_factory=list)
    deleted_at: datetime | None = None
    gaps: list[LeaderGap] = field(default_factory=list)


def explain_slot(slot: datetime, spec: JobSpec, facts: SlotFacts, now: datetime, *, settle: float) -> SlotOut:
    """What became of `slot`, from the facts alone. `settle`: seconds after a slot before its
    absence from the history means something (the dispatch and its projection take time)."""
    run = facts.runs.get(slot)
    if run is not None:
        run_id, status, error = run
        if status == "skipped":
            reason = (
                error if error and error.startswith("overlap policy") else f"overlap policy: {error or ''}"
            )
            return SlotOut(
                slot=slot, outcome="skipped", run_id=run_id, status=status, reason=reason.rstrip(": ")
            )
        return SlotOut(slot=slot, outcome="dispatched", run_id=run_id, status=status)
    if slot > now:
        return SlotOut(slot=slot, outcome="pending")
    if slot < facts.created_at:
        return SlotOut(slot=slot, outcome="skipped", reason="before the job was created")
    if facts.deleted_at is not None and slot >= facts.deleted_at:
        return SlotOut(slot=slot, outcome="skipped", reason="deleted")
    if (spec.start_at is not None and slot < spec.start_at) or (
        spec.end_at is not None and slot > spec.end_at
    ):
        return SlotOut(slot=slot, outcome="skipped", reason="outside start/end")
    if any(p.holds(slot) for p in facts.paused):
        return SlotOut(slot=slot, outcome="skipped", reason="paused")
    for gap in facts.gaps:
        if gap.from_ < slot and (gap.to is None or slot <= gap.to):
            if gap.to is not None and slot >= gap.to - timedelta(seconds=spec.catchup.window):
                return SlotOut(
                    slot=slot,
                    outcome="skipped",
                    reason=f"catch-up policy {spec.catchup.policy!r}: no scheduler was leading at the slot",
                    gap=gap,
                )
            return SlotOut(slot=slot, outcome="missed", gap=gap)
    if (now - slot).total_seconds() < settle:
        return SlotOut(slot=slot, outcome="pending")
    return SlotOut(slot=slot, outcome="pending", reason="no dispatch or decision recorded yet")


# --- cursors -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    """A position in a list: the sort key and id of the last item of the previous page."""

    at: datetime
    id: str

    def encode(self) -> str:
        raw = json.dumps([self.at.isoformat(), self.id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            at, id_ = json.loads(raw)
            when = datetime.fromisoformat(at)
            if when.tzinfo is None or not isinstance(id_, str):
                raise ValueError(text)
        except (ValueError, TypeError, binascii.Error):
            raise InvalidInput(
                [
                    FieldError(
                        field="cursor", reason="not a cursor from this API; pass the 'next' value unchanged"
                    )
                ]
            ) from None
        return cls(at=when, id=id_)
