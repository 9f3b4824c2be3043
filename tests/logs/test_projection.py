"""What the logs service writes: jobs, runs, attempts and output, from real streams."""

from __future__ import annotations

from datetime import timedelta

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.app import create_service
from cronbus.shared.bus import Bus
from cronbus.shared.events import JobDeleted, JobPaused, JobResumed, JobUpdated, RunFinished, run_id_for
from cronbus.shared.history.schema import jobs, log_chunks, run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import (
    T0,
    job_created,
    positions,
    publish,
    rows,
    run_events,
    running_logs,
    spec,
    wait_positions,
)
from tests.support import wait_for


async def test_a_run_and_its_job_are_projected(history_settings: Settings, bus: Bus, history: AsyncEngine):
    created = job_created("job-1")
    lifecycle = run_events("job-1", T0, attempts=2)
    updated = JobUpdated(
        job_id="job-1", revision=2, spec=spec("nightly-backup"), occurred_at=T0 + timedelta(1)
    )
    await publish(bus, history_settings, created, *lifecycle, updated)

    expected = {"logs-jobs": 2, "logs-dispatch": 1, "logs-runs": 4, "logs-logs": 2}
    async with running_logs(history_settings, create_service(history_settings)):
        # Each stream has its own projector: read only once all four have stored everything.
        await wait_positions(history, expected)
        [run] = await rows(history, runs)
        [job] = await rows(history, jobs)
        attempts = await rows(history, run_attempts)
        chunks = await rows(history, log_chunks)

    run_id = run_id_for("job-1", T0)
    assert run["id"] == run_id
    assert run["job_id"] == "job-1"
    assert run["slot"] == T0
    assert run["attempt"] == 2
    assert run["pool"] == "default"
    assert run["trigger"] == "schedule"
    assert run["runner"] == "runner-2"
    assert run["dispatched_at"] == T0 + timedelta(milliseconds=5)
    assert run["lateness_ms"] == 5.0
    assert run["started_at"] == T0 + timedelta(seconds=20)
    assert run["finished_at"] == T0 + timedelta(seconds=21)
    assert run["exit_code"] == 0
    assert run["duration_ms"] == 2000.0
    assert run["error"] is None
    assert (run["cpu_ms"], run["peak_rss_bytes"], run["output_bytes"], run["truncated"]) == (
        3.0,
        4096,
        10,
        False,
    )

    assert [(a["attempt"], a["status"], a["runner"], a["exit_code"], a["error"]) for a in attempts] == [
        (1, "failed", "runner-1", 1, "exit status 1"),
        (2, "succeeded", "runner-2", 0, None),
    ]
    assert attempts[0]["started_at"] == T0 + timedelta(seconds=10)
    assert [(c["attempt"], c["seq"], c["stream"], c["data"]) for c in chunks] == [
        (1, 0, "stdout", b"attempt 1\n"),
        (2, 0, "stdout", b"attempt 2\n"),
    ]
    assert chunks[0]["at"] == T0 + timedelta(seconds=10)

    assert job["name"] == "nightly-backup"
    assert job["spec"] == msgspec.to_builtins(spec("nightly-backup"))
    assert (job["paused"], job["deleted"]) == (False, False)
    assert job["created_at"] == T0
    assert job["updated_at"] == T0 + timedelta(1)

    assert await positions(history) == expected


async def test_job_pause_resume_and_delete(history_settings: Settings, bus: Bus, history: AsyncEngine):
    async with running_logs(history_settings):
        await publish(bus, history_settings, job_created("job-2"), JobPaused(job_id="job-2", revision=2))
        await wait_for(lambda: _with(history, jobs, paused=True), timeout=15, what="paused")
        await publish(bus, history_settings, JobResumed(job_id="job-2", revision=3))
        await wait_for(lambda: _with(history, jobs, paused=False, revision=3), timeout=15, what="resumed")
        await publish(bus, history_settings, JobDeleted(job_id="job-2", revision=4))
        [job] = await wait_for(lambda: _with(history, jobs, deleted=True), timeout=15, what="deleted")
    assert (job["revision"], job["paused"]) == (4, False)


async def test_a_retrying_run_and_each_outcome(history_settings: Settings, bus: Bus, history: AsyncEngine):
    dispatched, started, _chunk, _finished = run_events("job-3", T0, attempts=1)
    retrying = RunFinished(
        run_id=started.run_id, job_id="job-3", slot=T0, status="timed_out", final=False, occurred_at=T0
    )
    async with running_logs(history_settings):
        await publish(bus, history_settings, dispatched)
        await wait_for(lambda: _first(history, runs, status="dispatched"), timeout=15, what="dispatched")
        await publish(bus, history_settings, started)
        await wait_for(lambda: _first(history, runs, status="running"), timeout=15, what="running")
        await publish(bus, history_settings, retrying)
        run = await wait_for(lambda: _first(history, runs, status="retrying"), timeout=15, what="retrying")
        [attempt] = await rows(history, run_attempts)
    assert run["finished_at"] == T0
    assert attempt["status"] == "timed_out"


async def _with(engine: AsyncEngine, table, **values):  # type: ignore[no-untyped-def]
    found = [r for r in await rows(engine, table) if all(r[k] == v for k, v in values.items())]
    return found or None


async def _first(engine: AsyncEngine, table, **values):  # type: ignore[no-untyped-def]
    found = await _with(engine, table, **values)
    return found[0] if found else None
