"""Events: round trips, tolerance of unknown fields, stable tags, deterministic ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from cronbus.shared.events import (
    HttpExecutor,
    JobCreated,
    JobDeleted,
    JobPaused,
    JobResumed,
    JobSpec,
    JobUpdated,
    LogChunk,
    MalformedEvent,
    Retention,
    Retries,
    RunDispatched,
    RunFinished,
    RunStarted,
    ShellExecutor,
    decode_dispatch,
    decode_event,
    decode_job_event,
    decode_log_chunk,
    decode_run_event,
    decode_run_identity,
    dispatch_msg_id,
    encode,
    run_id_for,
)

SLOT = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
SPEC = JobSpec(name="backup", schedule="0 3 * * *", executor=ShellExecutor(command="echo hi"), timeout=600.0)


def all_events() -> list[msgspec.Struct]:
    run = {"run_id": run_id_for("j1", SLOT), "job_id": "j1", "slot": SLOT, "attempt": 2}
    return [
        JobCreated(job_id="j1", revision=1, spec=SPEC),
        JobUpdated(job_id="j1", revision=2, spec=SPEC),
        JobPaused(job_id="j1", revision=3),
        JobResumed(job_id="j1", revision=4),
        JobDeleted(job_id="j1", revision=5),
        RunDispatched(pool="default", spec=SPEC, **run),
        RunStarted(runner="r1", host="h", pid=7, **run),
        LogChunk(seq=3, stream="stderr", data=b"\xff\xfe not utf-8 \x00", **run),
        RunFinished(status="failed", exit_code=3, final=False, **run),
    ]


@pytest.mark.parametrize("event", all_events(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips_through_the_generic_decoder(event):
    assert decode_event(encode(event)) == event


def test_tags_are_the_stable_dotted_names():
    tags = {json.loads(encode(e))["type"] for e in all_events()}
    assert tags == {
        "job.created", "job.updated", "job.paused", "job.resumed", "job.deleted",
        "run.dispatched", "run.started", "log.chunk", "run.finished",
    }  # fmt: skip


def test_each_stream_decoder_reads_its_own_events():
    events = all_events()
    assert [decode_job_event(encode(e)) for e in events[:5]] == events[:5]
    assert decode_dispatch(encode(events[5])) == events[5]
    assert [decode_run_event(encode(e)) for e in (events[5], events[6], events[8])] == [
        events[5], events[6], events[8],
    ]  # fmt: skip
    assert decode_log_chunk(encode(events[7])).data == b"\xff\xfe not utf-8 \x00"


def test_unknown_fields_are_ignored_so_newer_writers_do_not_break_older_readers():
    raw = json.loads(encode(all_events()[5]))
    raw["added_in_a_later_version"] = {"x": 1}
    raw["spec"]["also_new"] = True
    event = decode_dispatch(json.dumps(raw).encode())
    assert event.spec == SPEC


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"type": "job.exploded", "job_id": "x"}', b'{"type": "job.created"}', b"[]"],
)
def test_malformed_bytes_raise_malformed_event(data):
    with pytest.raises(MalformedEvent):
        decode_event(data)


def test_identity_is_readable_when_the_executor_type_is_unknown():
    raw = json.loads(encode(all_events()[5]))
    raw["spec"]["executor"] = {"type": "docker", "image": "alpine"}
    data = json.dumps(raw).encode()
    with pytest.raises(MalformedEvent):
        decode_dispatch(data)
    identity = decode_run_identity(data)
    assert (identity.job_id, identity.slot, identity.attempt) == ("j1", SLOT, 2)


def test_run_id_and_msg_id_depend_only_on_job_and_slot():
    assert run_id_for("j1", SLOT) == run_id_for("j1", SLOT.astimezone(UTC))
    assert run_id_for("j1", SLOT) != run_id_for("j1", SLOT + timedelta(seconds=1))
    assert run_id_for("j1", SLOT) != run_id_for("j2", SLOT)
    assert dispatch_msg_id("j1", SLOT) == f"j1:{int(SLOT.timestamp() * 1000)}"


def test_http_executor_defaults_and_retry_backoff():
    spec = JobSpec(name="ping", schedule="@every 5s", executor=HttpExecutor(url="http://127.0.0.1:1/"))
    assert isinstance(decode_job_event(encode(JobCreated(job_id="j", revision=1, spec=spec))).spec.executor,
                      HttpExecutor)  # fmt: skip
    retries = Retries(max_attempts=5, backoff=10, multiplier=2, max_backoff=30)
    assert [retries.delay_after(n) for n in (1, 2, 3, 4)] == [10, 20, 30, 30]


def test_events_written_before_retention_existed_decode_with_the_defaults():
    """A job.created and a run.dispatched as older writers sent them: no `retention` in the spec."""
    spec = {"name": "backup", "schedule": "0 3 * * *", "executor": {"type": "shell", "command": "true"}}
    created = decode_job_event(
        json.dumps({"type": "job.created", "job_id": "j1", "revision": 1, "spec": spec}).encode()
    )
    assert isinstance(created, JobCreated)
    assert created.spec.retention == Retention(runs=None, log_bytes=None)
    run = {"run_id": run_id_for("j1", SLOT), "job_id": "j1", "slot": SLOT.isoformat()}
    dispatched = decode_dispatch(
        json.dumps({"type": "run.dispatched", "pool": "default", "spec": spec, **run}).encode()
    )
    assert dispatched.spec.retention == Retention()


def test_a_jobs_retention_round_trips():
    spec = msgspec.structs.replace(SPEC, retention=Retention(runs=500, log_bytes=50_000_000))
    raw = json.loads(encode(JobUpdated(job_id="j1", revision=2, spec=spec)))
    assert raw["spec"]["retention"] == {"runs": 500, "log_bytes": 50_000_000}
    assert decode_job_event(json.dumps(raw).encode()) == JobUpdated(
        job_id="j1",
        revision=2,
        spec=spec,
        event_id=raw["event_id"],
        occurred_at=datetime.fromisoformat(raw["occurred_at"]),
    )
