"""The events cronbus services exchange: past-tense msgspec Structs in tagged unions.

Rules (DESIGN.md "Events"): explicit dotted tags that never change; new fields get
defaults; a field's type never changes; unknown fields are ignored on decode so old
readers keep working while writers evolve.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import msgspec

RUN_NAMESPACE = uuid.UUID("6f1c8a3e-3b7d-5c2a-9e41-0c7b2d8f4a10")

OverlapPolicy: TypeAlias = Literal["allow", "skip", "queue", "replace"]
CatchupPolicy: TypeAlias = Literal["skip", "latest", "all"]
RunStatus: TypeAlias = Literal["succeeded", "failed", "timed_out", "cancelled", "lost", "skipped"]
Trigger: TypeAlias = Literal["schedule", "manual", "catchup"]
OutputStream: TypeAlias = Literal["stdout", "stderr", "system"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_event_id() -> str:
    return uuid.uuid4().hex


def slot_ms(slot: datetime) -> int:
    """A slot as integer milliseconds since the epoch: the unit of dispatch identity."""
    return round(slot.timestamp() * 1000)


# --- run identity ------------------------------------------------------------------------------
#
# Every run's id and the `Nats-Msg-Id` of its dispatch come from here, so no two kinds of run
# can share an id: JetStream drops a second dispatch with a message id it has seen, which is
# what makes a repeated dispatch of the same run harmless, and would silently lose a different
# run that happened to get the same id. Message ids by kind:
#
#   scheduled (and caught-up) slot   <job_id>:<slot_ms>
#   manual, with an Idempotency-Key  <job_id>:manual:<key>
#   manual, without one              <job_id>:manual:<random run id>
#
# Only a scheduled slot's id is digits after the job id, so no other kind can ever collide
# with one, whatever the clock says. A backfilled slot is its scheduled run (the same ids), so
# a slot the scheduler dispatched is never backfilled again, nor the other way round.

_RUN_NAMESPACE = RUN_NAMESPACE.bytes


class RunIds(NamedTuple):
    """A run's id and the message id its dispatch is published with."""

    run_id: str
    msg_id: str


def _uuid_text(raw: bytes, version: int) -> str:
    """RFC 4122 text of 16 bytes with the version and variant bits set (what `uuid.UUID` does,
    without building one: at 10,000 dispatches a second the object is measurable)."""
    octets = bytearray(raw[:16])
    octets[6] = (octets[6] & 0x0F) | (version << 4)
    octets[8] = (octets[8] & 0x3F) | 0x80
    h = octets.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid5(name: str) -> str:
    """`str(uuid.uuid5(RUN_NAMESPACE, name))`, cheaper."""
    return _uuid_text(hashlib.sha1(_RUN_NAMESPACE + name.encode()).digest(), 5)


def scheduled_run(job_id: str, slot_ms: int) -> RunIds:
    """A scheduled slot (also when caught up later): the same on every replica and retry."""
    key = scheduled_msg_id(job_id, slot_ms)
    return RunIds(run_id=_uuid5(key), msg_id=key)


def scheduled_run_id(job_id: str, slot_ms: int) -> str:
    return _uuid5(scheduled_msg_id(job_id, slot_ms))


def scheduled_msg_id(job_id: str, slot_ms: int) -> str:
    """`scheduled_run(...).msg_id` alone (a takeover compares many of them with DISPATCH)."""
    return f"{job_id}:{slot_ms}"


def manual_run(job_id: str, request_key: str | None) -> RunIds:
    """A run asked for by hand. The same `request_key` names the same run (a retried request
    dispatches once); without one, every request is a new run."""
    if request_key:
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cronbus:manual:{job_id}:{request_key}"))
        return RunIds(run_id=run_id, msg_id=f"{job_id}:manual:{request_key}")
    run_id = str(uuid.uuid4())
    return RunIds(run_id=run_id, msg_id=f"{job_id}:manual:{run_id}")


def run_id_for(job_id: str, slot: datetime) -> str:
    """The run id of a scheduled slot: the same on every replica and every retry."""
    return scheduled_run(job_id, slot_ms(slot)).run_id


def dispatch_msg_id(job_id: str, slot: datetime) -> str:
    """`Nats-Msg-Id` of a slot's dispatch: JetStream drops a second publish of the same slot."""
    return scheduled_run(job_id, slot_ms(slot)).msg_id


# --- job specification (the wire form: durations in seconds) -------------------------------


class ShellExecutor(msgspec.Struct, kw_only=True, tag="shell", tag_field="type"):
    """Runs `command` through `/bin/sh -c` (a string) or directly (an argv list)."""

    command: str | list[str]
    env: dict[str, str] = {}
    cwd: str | None = None
    # Names in `env` whose values are secret: write-only in the API, masked in output.
    secrets: list[str] = []


class HttpExecutor(msgspec.Struct, kw_only=True, tag="http", tag_field="type"):
    """Calls `url`; the run succeeds when the status is in `expect_status` (any 2xx when empty)."""

    url: str
    method: str = "GET"
    headers: dict[str, str] = {}
    body: str | None = None
    expect_status: list[int] = []
    follow_redirects: bool = True
    max_body_bytes: int = 1_048_576
    # Names in `headers` whose values are secret, besides those secret by name
    # (Authorization, Cookie, *-Token, *-Key): see cronbus.shared.secrets.
    secrets: list[str] = []


Executor: TypeAlias = ShellExecutor | HttpExecutor


class Catchup(msgspec.Struct, kw_only=True):
    """What to do with slots missed during downtime or a pause, within `window` seconds."""

    policy: CatchupPolicy = "latest"
    window: float = 3600.0


class Retries(msgspec.Struct, kw_only=True):
    """Attempts per run, and the delay before attempt n+1: backoff * multiplier**(n-1), capped."""

    max_attempts: int = 1
    backoff: float = 10.0
    multiplier: float = 2.0
    max_backoff: float = 3600.0

    def delay_after(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * self.multiplier ** max(0, attempt - 1))


class Retention(msgspec.Struct, kw_only=True):
    """How much of this job's history the logs service keeps; None uses the global setting.

    `runs`: finished runs kept (0 keeps all). `log_bytes`: bytes of output kept for the
    newest runs; older runs keep their row but lose their output (0 keeps all).
    """

    runs: int | None = None
    log_bytes: int | None = None


class JobSpec(msgspec.Struct, kw_only=True):
    name: str
    schedule: str
    executor: Executor
    timezone: str = "UTC"
    pool: str = "default"
    timeout: float | None = None
    overlap: OverlapPolicy = "allow"
    catchup: Catchup = msgspec.field(default_factory=Catchup)
    retries: Retries = msgspec.field(default_factory=Retries)
    jitter: float = 0.0
    start_at: datetime | None = None
    end_at: datetime | None = None
    description: str = ""
    labels: dict[str, str] = {}
    retention: Retention = msgspec.field(default_factory=Retention)
    # `@every` slots lie on the grid through this instant. The API sets it to the job's
    # creation time unless the client names one; None (jobs from before anchors existed)
    # keeps the grid through the Unix epoch, so their slots never move.
    anchor: datetime | None = None


# --- events --------------------------------------------------------------------------------


class Event(msgspec.Struct, kw_only=True, tag_field="type"):
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)


class JobEvent(Event, kw_only=True):
    job_id: str
    revision: int
    actor: str = ""


class JobCreated(JobEvent, kw_only=True, tag="job.created"):
    spec: JobSpec
    paused: bool = False


class JobUpdated(JobEvent, kw_only=True, tag="job.updated"):
    spec: JobSpec


class JobDeleted(JobEvent, kw_only=True, tag="job.deleted"):
    pass


class JobPaused(JobEvent, kw_only=True, tag="job.paused"):
    pass


class JobResumed(JobEvent, kw_only=True, tag="job.resumed"):
    pass


class RunEvent(Event, kw_only=True):
    run_id: str
    job_id: str
    slot: datetime
    attempt: int = 1


class RunDispatched(RunEvent, kw_only=True, tag="run.dispatched"):
    """One run to execute. Carries the job spec as it was, so a runner needs nothing else."""

    pool: str
    spec: JobSpec
    job_revision: int = 0
    trigger: Trigger = "schedule"
    dispatched_at: datetime = msgspec.field(default_factory=utcnow)
    lateness_ms: float = 0.0
    scheduler: str = ""


class RunStarted(RunEvent, kw_only=True, tag="run.started"):
    runner: str
    host: str = ""
    pid: int | None = None


class LogChunk(RunEvent, kw_only=True, tag="log.chunk"):
    seq: int
    stream: OutputStream = "stdout"
    data: bytes = b""


class OutputPart(msgspec.Struct, kw_only=True, array_like=True):
    """One chunk of an attempt's output carried inside its `run.finished` (see `output`)."""

    seq: int
    stream: OutputStream = "stdout"
    data: bytes = b""


# The most output a `run.finished` carries inline; more goes to the LOGS stream.
INLINE_OUTPUT_LIMIT: Final = 16 * 1024


class RunFinished(RunEvent, kw_only=True, tag="run.finished"):
    status: RunStatus
    runner: str = ""
    exit_code: int | None = None
    duration_ms: float = 0.0
    error: str = ""
    # False when another attempt follows (the run is not over yet).
    final: bool = True
    retry_at: datetime | None = None
    cpu_ms: float | None = None
    peak_rss_bytes: int | None = None
    output_bytes: int = 0
    truncated: bool = False
    # A `lost` attempt its runner gave back on a graceful stop: not the job's failure, so it
    # does not count against `retries.max_attempts`.
    handed_back: bool = False
    # The attempt's whole output, when it was short and none of it went to the LOGS stream
    # (a typical HTTP call or quick command): one event instead of a `log.chunk` and a
    # `run.finished`. An attempt's output is either all here or all on LOGS, never split.
    output: list[OutputPart] = []


class AuditRecorded(Event, kw_only=True, tag="audit.recorded"):
    """Who did what, for an action that is not a job event (those carry their `actor`
    themselves): a manual run, a cancel, a backfill, a key created or revoked, an expired key
    used, a crontab import. `action` is a stable dotted name (docs/api.md, "Audit")."""

    action: str
    actor: str
    job_id: str | None = None
    revision: int | None = None
    detail: dict[str, Any] = {}


JobEvents: TypeAlias = JobCreated | JobUpdated | JobDeleted | JobPaused | JobResumed
RunEvents: TypeAlias = RunDispatched | RunStarted | RunFinished
AnyEvent: TypeAlias = JobEvents | RunEvents | LogChunk | AuditRecorded


class MalformedEvent(ValueError):
    """Bytes on a stream that are not a known event: log and terminate, never retry."""


_encoder = msgspec.json.Encoder()
_job_decoder = msgspec.json.Decoder(JobEvents)
_run_decoder = msgspec.json.Decoder(RunEvents)
_dispatch_decoder = msgspec.json.Decoder(RunDispatched)
_log_decoder = msgspec.json.Decoder(LogChunk)
_audit_decoder = msgspec.json.Decoder(AuditRecorded)
_any_decoder = msgspec.json.Decoder(AnyEvent)


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedEvent(str(exc)) from exc


def decode_job_event(data: bytes) -> JobEvents:
    return _decode(_job_decoder, data)


def decode_run_event(data: bytes) -> RunEvents:
    return _decode(_run_decoder, data)


def decode_dispatch(data: bytes) -> RunDispatched:
    return _decode(_dispatch_decoder, data)


def decode_log_chunk(data: bytes) -> LogChunk:
    return _decode(_log_decoder, data)


def decode_audit(data: bytes) -> AuditRecorded:
    return _decode(_audit_decoder, data)


def decode_event(data: bytes) -> AnyEvent:
    return _decode(_any_decoder, data)


class RunIdentity(msgspec.Struct, kw_only=True):
    """The ids of a run event, readable even when the rest of it is not (e.g. an unknown executor)."""

    type: str = ""
    run_id: str
    job_id: str
    slot: datetime
    attempt: int = 1
    pool: str = "default"


_identity_decoder = msgspec.json.Decoder(RunIdentity)


def decode_run_identity(data: bytes) -> RunIdentity:
    return _decode(_identity_decoder, data)
