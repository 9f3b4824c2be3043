"""The API's wire format: explicit msgspec Structs, separate from the events.

Input structs forbid unknown fields so a typo is an error instead of a silently ignored
setting; output structs never do, so clients can read newer answers. Durations are strings
like "10m" on the wire (numbers of seconds are accepted on input too). What else bounds input
is checked in validation.py, before anything is appended.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from cronbus.shared.events import CatchupPolicy, OverlapPolicy

Duration = Annotated[
    str | float,
    Meta(description="a duration such as '90s', '10m', '1h30m', '250ms', or a number of seconds"),
]
Size = Annotated[
    int | str,
    Meta(
        description="a number of bytes, or a size such as '500KB', '50MB', '1.5GiB' "
        "(KB/MB/GB: powers of 1000; KiB/MiB/GiB: powers of 1024)"
    ),
]


# --- input -----------------------------------------------------------------------------------


class ShellExecutorIn(
    msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="shell", tag_field="type"
):
    """Runs `command` with /bin/sh -c (a string) or directly (a list of arguments).

    `secrets` names `env` keys whose values are write-only: answers show them as "***".
    """

    command: str | list[str]
    env: dict[str, str] = {}
    cwd: str | None = None
    secrets: list[str] = []


class HttpExecutorIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag="http", tag_field="type"):
    """Calls `url`; the run succeeds when the status is in `expect_status` (any 2xx when empty).

    `secrets` names `headers` whose values are write-only (answers show "***"), besides those
    secret by name: Authorization, Proxy-Authorization, Cookie, Set-Cookie, *-Token, *-Key.
    """

    url: str
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    expect_status: list[int] = []
    follow_redirects: bool = True
    max_body_bytes: int = 1_048_576
    secrets: list[str] = []


ExecutorIn = ShellExecutorIn | HttpExecutorIn


class CatchupIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    policy: CatchupPolicy = "latest"
    window: Duration = "1h"


class RetriesIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    max_attempts: int = 1
    backoff: Duration = "10s"
    multiplier: float = 2.0
    max_backoff: Duration = "1h"


class RetentionIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How much of the job's history to keep; null (or left out) uses the server's default.

    `runs`: finished runs kept (0 keeps all). `log_bytes`: output is kept for the newest runs
    until their total exceeds this; older runs keep their record but lose their output.
    """

    runs: int | None = None
    log_bytes: Size | None = None


class JobIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A job to create (`POST /v1/jobs`)."""

    name: str
    schedule: str
    executor: ExecutorIn
    timezone: str = "UTC"
    pool: str = "default"
    timeout: Duration | None = None
    overlap: OverlapPolicy = "allow"
    catchup: CatchupIn = msgspec.field(default_factory=CatchupIn)
    retries: RetriesIn = msgspec.field(default_factory=RetriesIn)
    jitter: Duration = 0.0
    start_at: datetime | None = None
    end_at: datetime | None = None
    description: str = ""
    labels: dict[str, str] = {}
    retention: RetentionIn = msgspec.field(default_factory=RetentionIn)
    # `@every` slots lie on the grid through this instant; left out, the job's creation time.
    anchor: datetime | None = None


class JobPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A change to a job (`PATCH /v1/jobs/{id}`): only the fields given change.

    `revision`, when given, must be the job's current revision (like `If-Match`).
    """

    revision: int | UnsetType = UNSET
    name: str | UnsetType = UNSET
    schedule: str | UnsetType = UNSET
    executor: ExecutorIn | UnsetType = UNSET
    timezone: str | UnsetType = UNSET
    pool: str | UnsetType = UNSET
    timeout: Duration | UnsetType | None = UNSET
    overlap: OverlapPolicy | UnsetType = UNSET
    catchup: CatchupIn | UnsetType = UNSET
    retries: RetriesIn | UnsetType = UNSET
    jitter: Duration | UnsetType = UNSET
    start_at: datetime | UnsetType | None = UNSET
    end_at: datetime | UnsetType | None = UNSET
    description: str | UnsetType = UNSET
    labels: dict[str, str] | UnsetType = UNSET
    retention: RetentionIn | UnsetType = UNSET
    anchor: datetime | UnsetType | None = UNSET


# --- output ----------------------------------------------------------------------------------


class ShellExecutorOut(msgspec.Struct, kw_only=True, tag="shell", tag_field="type"):
    """`env` values named in `secrets` read "***"."""

    command: str | list[str]
    env: dict[str, str]
    cwd: str | None
    secrets: list[str] = []


class HttpExecutorOut(msgspec.Struct, kw_only=True, tag="http", tag_field="type"):
    """Secret `headers` (named in `secrets`, or secret by name) read "***"."""

    url: str
    method: str
    headers: dict[str, str]
    body: str | None
    expect_status: list[int]
    follow_redirects: bool
    max_body_bytes: int
    secrets: list[str] = []


class CatchupOut(msgspec.Struct, kw_only=True):
    policy: CatchupPolicy
    window: str


class RetriesOut(msgspec.Struct, kw_only=True):
    max_attempts: int
    backoff: str
    multiplier: float
    max_backoff: str


class RetentionOut(msgspec.Struct, kw_only=True):
    """The job's own limits; null means the server's default applies. `log_bytes` in bytes."""

    runs: int | None
    log_bytes: int | None


JobStateName = Literal["scheduled", "paused", "finished", "failing"]


class LastRun(msgspec.Struct, kw_only=True):
    """A job's newest run (by slot): `finished_at` is null while it is not over."""

    id: str
    slot: datetime
    status: str
    finished_at: datetime | None


class JobOut(msgspec.Struct, kw_only=True):
    """A job as it is now. `next_fires`: the next five slots (UTC); empty when paused.

    `state`: `paused`; else `finished` (a one-off `@at` that ran, or `end_at` passed); else
    `failing` (its last finished run did not succeed; skipped runs do not count); else
    `scheduled`. `last_run`: its newest run, null when it has none.
    """

    id: str
    revision: int
    name: str
    schedule: str
    timezone: str
    executor: ShellExecutorOut | HttpExecutorOut
    pool: str
    timeout: str | None
    overlap: OverlapPolicy
    catchup: CatchupOut
    retries: RetriesOut
    jitter: str
    start_at: datetime | None
    end_at: datetime | None
    description: str
    labels: dict[str, str]
    retention: RetentionOut
    anchor: datetime | None = None
    paused: bool
    created_at: datetime
    updated_at: datetime
    next_fires: list[datetime]
    state: JobStateName = "scheduled"
    last_run: LastRun | None = None


class JobPage(msgspec.Struct, kw_only=True):
    items: list[JobOut]
    next: str | None = msgspec.field(default=None)


class JobBatch(msgspec.Struct, kw_only=True):
    """The jobs a batch create made, in the order they were given."""

    items: list[JobOut]


class SkippedLine(msgspec.Struct, kw_only=True):
    """A crontab line that did not become a job, and why."""

    line: int
    text: str
    reason: str


class CrontabImport(msgspec.Struct, kw_only=True):
    """`POST /v1/import/crontab`: the jobs of the crontab (made now, found from an earlier
    import of the same entries, or with `dry_run` as they would be) and the lines skipped."""

    items: list[JobOut]
    skipped: list[SkippedLine]


class BackfillIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /v1/jobs/{id}/backfill`: the slots of the job's schedule in [from, to)."""

    from_: datetime = msgspec.field(name="from")
    to: datetime


class SlotRun(msgspec.Struct, kw_only=True):
    slot: datetime
    run_id: str


class BackfillOut(msgspec.Struct, kw_only=True):
    """`slots`: how many the range holds; `dispatched`: those dispatched now; `already`: those
    dispatched before (by the scheduler or an earlier backfill), not dispatched again."""

    slots: int
    dispatched: list[SlotRun]
    already: list[SlotRun]


class LeaderGap(msgspec.Struct, kw_only=True):
    """A time no scheduler was leading: `to` is null while it lasts."""

    from_: datetime = msgspec.field(name="from")
    to: datetime | None


SlotOutcome = Literal["dispatched", "skipped", "missed", "pending"]


class SlotOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One slot of a job's schedule and what became of it.

    `dispatched`: `run_id` and `status` (the run's, `dispatched` until it starts). `skipped`:
    `reason`. `missed`: `gap`, when no scheduler was leading. `pending`: in the future, or
    not decided (or not in the history) yet.
    """

    slot: datetime
    outcome: SlotOutcome
    run_id: str | None = None
    status: str | None = None
    reason: str | None = None
    gap: LeaderGap | None = None


class SlotList(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs/{id}/slots`: every slot of the schedule in [from, to), oldest first."""

    items: list[SlotOut]


class AttemptOut(msgspec.Struct, kw_only=True):
    attempt: int
    status: str
    runner: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    duration_ms: float | None
    error: str | None


class RunOut(msgspec.Struct, kw_only=True):
    """A run. `status`: dispatched, running, retrying, succeeded, failed, timed_out, cancelled,
    lost or skipped. `attempts` is filled on `GET /v1/runs/{id}` only."""

    id: str
    job_id: str
    slot: datetime
    attempt: int
    status: str
    trigger: str
    pool: str
    runner: str | None
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    duration_ms: float | None
    lateness_ms: float | None
    error: str | None
    cpu_ms: float | None
    peak_rss_bytes: int | None
    output_bytes: int
    truncated: bool
    attempts: list[AttemptOut] = []
    # The run's trace (W3C trace id, 32 hex digits) on `GET /v1/runs/{id}`, once it started:
    # find its spans in the tracing backend, and its service log lines by `trace_id`.
    trace_id: str | None = None


class RunPage(msgspec.Struct, kw_only=True):
    items: list[RunOut]
    next: str | None = msgspec.field(default=None)


class RunAccepted(msgspec.Struct, kw_only=True):
    """A manual run that was dispatched; follow it at `GET /v1/runs/{id}`."""

    id: str
    job_id: str
    slot: datetime
    attempt: int
    status: Literal["dispatched"] = "dispatched"
    trigger: Literal["manual"] = "manual"


class CancelRequested(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["cancel_requested"] = "cancel_requested"


class SchedulerOut(msgspec.Struct, kw_only=True):
    leader: str
    lease_revision: int
    jobs: int
    watermark: datetime | None
    dispatch_lag_ms: float
    dispatched_total: int
    updated_at: datetime
    schedule_errors: dict[str, str]


class RunnerOut(msgspec.Struct, kw_only=True):
    id: str
    host: str
    pid: int
    pools: list[str]
    running: int
    # Runs it may execute at once: `slots` (any run) plus `http_slots` (HTTP runs only).
    capacity: int
    version: str
    started_at: datetime
    updated_at: datetime
    slots: int
    http_slots: int


class HistoryOut(msgspec.Struct, kw_only=True):
    """Events the logs service set aside because they can never be applied (`rejected`), and
    those it applied only after cleaning them (`sanitized`); see docs/history.md."""

    rejected_events: int
    sanitized_events: int
    last_rejected_at: datetime | None


class StatusOut(msgspec.Struct, kw_only=True):
    """`scheduler` is null when no leader has reported yet; `history` is null when the
    history database cannot be read."""

    scheduler: SchedulerOut | None
    runners: list[RunnerOut]
    history: HistoryOut | None = None


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}


class FieldError(msgspec.Struct, kw_only=True):
    field: str
    reason: str


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    errors: list[FieldError] = []
