"""Poison events: hand-made bad messages on JOBS and RUNS are set aside (or cleaned), recorded
for operators, and never stall the events that follow them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.poison import is_poison, read_message, without_nul
from cronbus.logs.projector import write_batch
from cronbus.logs.store import HistoryWriter
from cronbus.shared.bus import Bus
from cronbus.shared.events import (
    JobCreated,
    LogChunk,
    RunFinished,
    decode_job_event,
    decode_run_event,
    encode,
    run_id_for,
)
from cronbus.shared.history.schema import jobs, projector_positions, rejected_events, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, job_created, positions, publish, rows, run_events, running_logs, spec
from tests.support import wait_for


def _bad_job(job_id: str, **changes: Any) -> bytes:
    """A job.created as JSON, with `changes` merged in (values JSON cannot type-check)."""
    event = msgspec.to_builtins(job_created(job_id))
    event.update(changes)
    return msgspec.json.encode(event)


def _finished(job_id: str, slot_minutes: int, **changes: Any) -> tuple[str, bytes]:
    slot = T0 + timedelta(minutes=slot_minutes)
    run_id = run_id_for(job_id, slot)
    event = RunFinished(
        run_id=run_id, job_id=job_id, slot=slot, status="succeeded", runner="r1", occurred_at=slot
    )
    data = msgspec.to_builtins(event) | changes
    return run_id, msgspec.json.encode(data)


async def test_bad_events_are_set_aside_and_the_good_ones_after_them_are_projected(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    n = history_settings.names
    good_before = [job_created("job-a"), *run_events("job-a", T0, attempts=1)]
    await publish(bus, history_settings, *(e for e in good_before if not isinstance(e, LogChunk)))

    bad: dict[str, int] = {}
    # JOBS: not JSON; an unknown tag; a NUL in the name and a label (cleaned and kept); a
    # revision no INTEGER column holds (set aside by the database).
    bad["jobs-garbage"] = (await bus.js.publish(n.job_subject("job-x"), b"\xff\x00 not json {")).seq
    bad["jobs-unknown-tag"] = (
        await bus.js.publish(n.job_subject("job-x"), _bad_job("job-x", type="job.exploded"))
    ).seq
    nul_job = JobCreated(job_id="job-nul", revision=1, spec=spec("night\x00ly"), occurred_at=T0)
    nul_job.spec.labels = {"team\x00": "ops\x00"}
    bad["jobs-nul"] = (await bus.js.publish(n.job_subject("job-nul"), encode(nul_job))).seq
    bad["jobs-huge-revision"] = (
        await bus.js.publish(n.job_subject("job-huge"), _bad_job("job-huge", revision=10**30))
    ).seq
    # RUNS: not JSON; an unknown tag; an exit code no column holds; a NUL in the error text.
    bad["runs-garbage"] = (await bus.js.publish(n.run_subject("job-a", "x"), b"\x00\x01\x02")).seq
    unknown_run, unknown_data = _finished("job-a", 1, type="run.exploded")
    bad["runs-unknown-tag"] = (await bus.js.publish(n.run_subject("job-a", unknown_run), unknown_data)).seq
    huge_run, huge_data = _finished("job-a", 2, exit_code=10**30)
    bad["runs-huge-exit"] = (await bus.js.publish(n.run_subject("job-a", huge_run), huge_data)).seq
    nul_run, nul_data = _finished("job-a", 3, status="failed", error="boom\x00!")
    bad["runs-nul"] = (await bus.js.publish(n.run_subject("job-a", nul_run), nul_data)).seq

    good_after = [job_created("job-b"), *run_events("job-b", T0 + timedelta(minutes=9), attempts=2)]
    await publish(bus, history_settings, *(e for e in good_after if not isinstance(e, LogChunk)))
    jobs_last = (await bus.js.stream_info(n.jobs_stream)).state.last_seq
    runs_last = (await bus.js.stream_info(n.runs_stream)).state.last_seq

    async with running_logs(history_settings) as service:
        positions = await wait_for(
            lambda: _positions_at(history, {"logs-jobs": jobs_last, "logs-runs": runs_last}),
            timeout=20,
            what="jobs and runs projectors at the streams' ends",
        )
        settled = await wait_for(
            lambda: _settled(bus, [(n.jobs_stream, "logs-jobs"), (n.runs_stream, "logs-runs")]),
            timeout=10,
            what="consumers with nothing pending",
        )
        rejected_count = sum(p.rejected for p in service.projectors)

    assert positions == {"logs-jobs": jobs_last, "logs-runs": runs_last}
    assert settled
    found_jobs = {j["id"]: j for j in await rows(history, jobs)}
    assert set(found_jobs) == {"job-a", "job-b", "job-nul"}
    assert found_jobs["job-nul"]["name"] == "nightly"
    assert found_jobs["job-nul"]["spec"]["labels"] == {"team": "ops"}
    found_runs = {r["id"]: r for r in await rows(history, runs)}
    assert found_runs[run_id_for("job-a", T0)]["status"] == "succeeded"
    assert found_runs[run_id_for("job-b", T0 + timedelta(minutes=9))]["status"] == "succeeded"
    assert found_runs[nul_run]["status"] == "failed"
    assert found_runs[nul_run]["error"] == "boom!"
    assert unknown_run not in found_runs
    assert huge_run not in found_runs

    recorded = {(r["stream"], r["stream_seq"]): r for r in await rows(history, rejected_events)}
    expected = {
        "jobs-garbage": (n.jobs_stream, False),
        "jobs-unknown-tag": (n.jobs_stream, False),
        "jobs-nul": (n.jobs_stream, True),
        "jobs-huge-revision": (n.jobs_stream, False),
        "runs-garbage": (n.runs_stream, False),
        "runs-unknown-tag": (n.runs_stream, False),
        "runs-huge-exit": (n.runs_stream, False),
        "runs-nul": (n.runs_stream, True),
    }
    assert set(recorded) == {(stream, bad[name]) for name, (stream, _) in expected.items()}
    for name, (stream, sanitized) in expected.items():
        row = recorded[(stream, bad[name])]
        assert row["sanitized"] is sanitized, (name, row)
        assert row["reason"], name
        assert row["consumer"] in ("logs-jobs", "logs-runs")
    assert recorded[(n.runs_stream, bad["runs-garbage"])]["data"] == b"\x00\x01\x02"
    assert "cannot be written" in recorded[(n.runs_stream, bad["runs-huge-exit"])]["reason"]
    assert rejected_count == 6


async def test_a_poison_event_in_a_batch_does_not_keep_the_rest_of_it_out(history: AsyncEngine):
    """The writer alone: a batch that fails on one event's data is written event by event."""
    writer = HistoryWriter(history)
    huge_run, huge_data = _finished("job-w", 1, exit_code=10**30)
    ok_run, ok_data = _finished("job-w", 2)
    batch = []
    for seq, (subject, data) in enumerate([("s.ok", ok_data), ("s.huge", huge_data)], start=1):
        decoded = read_message(_decode_run, "S_RUNS", seq, subject, data)
        batch.append((seq, subject, data, decoded))
    written = await write_batch(writer, "test-w", "S_RUNS", batch)
    assert written.set_aside == {2}
    assert written.applied == 1
    assert [r["id"] for r in await rows(history, runs)] == [ok_run]
    [recorded] = await rows(history, rejected_events)
    assert (recorded["stream"], recorded["stream_seq"], recorded["subject"]) == ("S_RUNS", 2, "s.huge")
    assert [p["stream_seq"] for p in await rows(history, projector_positions)] == [2]
    # Again (a redelivery): nothing changes, nothing is recorded twice.
    await write_batch(writer, "test-w", "S_RUNS", batch)
    assert len(await rows(history, rejected_events)) == 1
    assert huge_run not in [r["id"] for r in await rows(history, runs)]


def _decode_run(data: bytes) -> Any:
    return decode_run_event(data)


def test_nul_is_removed_from_every_string_and_nothing_else_changes():
    event = JobCreated(job_id="j", revision=1, spec=spec("a\x00b"), occurred_at=T0)
    event.spec.labels = {"k\x00": "v\x00"}
    cleaned = without_nul(event)
    assert isinstance(cleaned, JobCreated)
    assert cleaned.spec.name == "ab"
    assert cleaned.spec.labels == {"k": "v"}
    assert cleaned.event_id == event.event_id
    plain = job_created("j")
    assert without_nul(plain) is plain
    decoded = read_message(decode_job_event, "S", 1, "s", encode(event))
    assert decoded.rejection is not None and decoded.rejection.sanitized


@pytest.mark.parametrize(
    ("exc", "poison"),
    [
        (OverflowError("Python int too large to convert to SQLite INTEGER"), True),
        (OperationalError("SELECT 1", {}, ConnectionRefusedError("refused")), False),
        (DBAPIError("SELECT 1", {}, OSError("connection lost"), connection_invalidated=True), False),
        (TimeoutError(), False),
        (ConnectionResetError(), False),
    ],
)
def test_poison_is_told_apart_from_trouble_that_passes(exc: BaseException, poison: bool):
    assert is_poison(exc) is poison


async def _positions_at(history: AsyncEngine, want: dict[str, int]) -> dict[str, int] | None:
    found = await positions(history)
    got = {c: found.get(c, 0) for c in want}
    return got if got == want else None


async def _settled(bus: Bus, consumers: list[tuple[str, str]]) -> bool:
    for stream, consumer in consumers:
        info = await bus.js.consumer_info(stream, consumer)
        if info.num_ack_pending or info.num_pending:
            return False
    return True
