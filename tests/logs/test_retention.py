"""Retention: old finished runs go, older runs lose their output, running ones stay; bounded passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.retention import JobLimits, Retention, RetentionLimits, RetentionPass
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.bus import Bus
from cronbus.shared.events import (
    Event,
    JobCreated,
    JobSpec,
    LogChunk,
    RunDispatched,
    RunEvent,
    RunFinished,
    RunStarted,
    ShellExecutor,
    run_id_for,
)
from cronbus.shared.events import Retention as JobRetention
from cronbus.shared.history.schema import log_chunks, output_sizes, run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, positions, publish, rows, run_events, running_logs, spec
from tests.support import wait_for


async def _write(writer: HistoryWriter, events: list[RunEvent]) -> None:
    await writer.apply("test", [Sequenced(i, e) for i, e in enumerate(events, start=1)], 0)


async def test_retention_keeps_the_newest_runs_and_output_per_job(history: AsyncEngine):
    writer = HistoryWriter(history)
    slots_a = [T0 + timedelta(minutes=m) for m in range(12)]
    for slot in slots_a:
        await _write(writer, run_events("job-a", slot, attempts=1))
    for m in range(3):
        await _write(writer, run_events("job-b", T0 + timedelta(minutes=m), attempts=1))
    # A run still going, older than all of them: retention leaves it alone.
    old_slot = T0 - timedelta(days=1)
    await _write(
        writer, [e for e in run_events("job-a", old_slot, attempts=1) if not isinstance(e, RunFinished)]
    )

    retention = Retention(writer, RetentionLimits(runs_per_job=5, logs_per_job=2, runs_per_pass=4))
    passes = []
    for _ in range(10):
        done = await retention.run_pass()
        passes.append(done)
        assert done.runs_deleted + done.outputs_deleted <= 4
        if not (done.runs_deleted or done.outputs_deleted):
            break
    assert sum(p.runs_deleted for p in passes) == 7
    assert sum(p.outputs_deleted for p in passes) == 3 + 1

    kept = {(r["job_id"], r["slot"]): r["status"] for r in await rows(history, runs)}
    assert kept == {
        **{("job-a", s): "succeeded" for s in slots_a[7:]},
        ("job-a", old_slot): "running",
        **{("job-b", T0 + timedelta(minutes=m)): "succeeded" for m in range(3)},
    }
    with_output = {c["run_id"] for c in await rows(history, log_chunks)}
    assert with_output == {
        run_id_for("job-a", slots_a[10]),
        run_id_for("job-a", slots_a[11]),
        run_id_for("job-a", old_slot),
        run_id_for("job-b", T0 + timedelta(minutes=1)),
        run_id_for("job-b", T0 + timedelta(minutes=2)),
    }
    assert {a["run_id"] for a in await rows(history, run_attempts)} == {
        r["id"] for r in await rows(history, runs)
    }


async def test_no_limits_keep_everything(history: AsyncEngine):
    writer = HistoryWriter(history)
    for m in range(4):
        await _write(writer, run_events("job-c", T0 + timedelta(minutes=m), attempts=1))
    done = await Retention(writer, RetentionLimits(runs_per_job=0, logs_per_job=0)).run_pass()
    assert (done.runs_deleted, done.outputs_deleted) == (0, 0)
    assert len(await rows(history, runs)) == 4


async def test_the_service_applies_retention_periodically(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    settings = replace(
        history_settings, history_runs_per_job=2, history_logs_per_job=1, history_retention_interval=0.2
    )
    events = [e for m in range(5) for e in run_events("job-r", T0 + timedelta(minutes=m), attempts=1)]
    async with running_logs(settings):
        await publish(bus, settings, *events)

        async def trimmed() -> bool:
            found = await rows(history, runs)
            chunks = await rows(history, log_chunks)
            return len(found) == 2 and len(chunks) == 1 and all(r["status"] == "succeeded" for r in found)

        await wait_for(trimmed, timeout=20, what="history trimmed to 2 runs, 1 with output")
    assert {r["slot"] for r in await rows(history, runs)} == {
        T0 + timedelta(minutes=3),
        T0 + timedelta(minutes=4),
    }


# --- per-job limits and byte budgets -------------------------------------------------------


def job_with(job_id: str, retention: JobRetention) -> JobCreated:
    spec = JobSpec(
        name=job_id, schedule="* * * * *", executor=ShellExecutor(command="true"), retention=retention
    )
    return JobCreated(job_id=job_id, revision=1, spec=spec, occurred_at=T0)


def run_with_output(job_id: str, slot: datetime, *chunk_sizes: int, finished: bool = True) -> list[RunEvent]:
    """A one-attempt run whose output is chunks of the given sizes (unfinished: still running)."""
    run_id = run_id_for(job_id, slot)
    ids = {"run_id": run_id, "job_id": job_id, "slot": slot}
    events: list[RunEvent] = [
        RunDispatched(pool="default", spec=spec(), dispatched_at=slot, occurred_at=slot, **ids),
        RunStarted(runner="r", occurred_at=slot, **ids),
    ]
    events += [LogChunk(seq=i, data=b"x" * n, occurred_at=slot, **ids) for i, n in enumerate(chunk_sizes)]
    if finished:
        events.append(RunFinished(status="succeeded", output_bytes=sum(chunk_sizes), occurred_at=slot, **ids))
    return events


async def _apply(writer: HistoryWriter, events: list[Event]) -> None:
    await writer.apply("test", [Sequenced(i, e) for i, e in enumerate(events, start=1)], 0)


async def output_by_run(engine: AsyncEngine) -> dict[str, int]:
    """Bytes of output stored per run, from the chunks themselves."""
    sizes: dict[str, int] = {}
    for chunk in await rows(engine, log_chunks):
        sizes[chunk["run_id"]] = sizes.get(chunk["run_id"], 0) + len(chunk["data"])
    return sizes


async def assert_sizes_match_output(engine: AsyncEngine) -> None:
    """`output_sizes` says what the chunks hold: one row per run with output, its byte count."""
    recorded = {r["run_id"]: r["bytes"] for r in await rows(engine, output_sizes)}
    assert recorded == await output_by_run(engine)


async def drain(retention: Retention, per_pass: int) -> list[RetentionPass]:
    """Passes until one deletes nothing; each stays within its bound."""
    passes = []
    for _ in range(50):
        done = await retention.run_pass()
        assert done.runs_deleted + done.outputs_deleted <= per_pass
        passes.append(done)
        if not (done.runs_deleted or done.outputs_deleted):
            return passes
    raise AssertionError("retention did not settle within 50 passes")


def minutes(*ms: int) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in ms]


async def test_a_jobs_own_run_limit_overrides_the_global_one(history: AsyncEngine):
    writer = HistoryWriter(history)
    await _apply(
        writer,
        [
            job_with("job-fewer", JobRetention(runs=2)),
            job_with("job-more", JobRetention(runs=6)),
            job_with("job-all", JobRetention(runs=0)),
            job_with("job-default", JobRetention(log_bytes=10_000)),
        ],
    )
    # "job-unknown" has runs but no jobs row (not projected yet): the global limit applies.
    job_ids = ("job-fewer", "job-more", "job-all", "job-default", "job-unknown")
    for job_id in job_ids:
        for slot in minutes(*range(8)):
            await _apply(writer, [*run_with_output(job_id, slot, 10)])

    retention = Retention(writer, RetentionLimits(runs_per_job=4, logs_per_job=0, runs_per_pass=5))
    passes = await drain(retention, 5)

    kept = {
        job_id: sorted(r["slot"] for r in await rows(history, runs) if r["job_id"] == job_id)
        for job_id in job_ids
    }
    assert kept == {
        "job-fewer": minutes(6, 7),
        "job-more": minutes(*range(2, 8)),
        "job-all": minutes(*range(8)),
        "job-default": minutes(*range(4, 8)),
        "job-unknown": minutes(*range(4, 8)),
    }
    assert sum(p.runs_deleted for p in passes) == 6 + 2 + 0 + 4 + 4
    assert sum(p.bytes_deleted for p in passes) == 16 * 10
    await assert_sizes_match_output(history)


async def test_log_byte_budgets_keep_the_newest_output_and_every_run(history: AsyncEngine):
    writer = HistoryWriter(history)
    await _apply(
        writer,
        [
            job_with("job-own", JobRetention(log_bytes=250)),
            job_with("job-unlimited", JobRetention(log_bytes=0)),
        ],
    )
    for slot in minutes(*range(6)):
        await _apply(writer, [*run_with_output("job-own", slot, 50, 50)])
    # Unfinished runs count towards the budget but never lose their output: the newest one
    # (still running) and a very old one (still running, alone over the budget).
    await _apply(writer, [*run_with_output("job-own", T0 + timedelta(minutes=6), 100, finished=False)])
    stuck = T0 - timedelta(days=1)
    await _apply(writer, [*run_with_output("job-own", stuck, 1000, finished=False)])
    for slot in minutes(*range(4)):
        await _apply(writer, [*run_with_output("job-global", slot, 400)])
        await _apply(writer, [*run_with_output("job-unlimited", slot, 400)])
    runs_before = await rows(history, runs)

    retention = Retention(
        writer, RetentionLimits(runs_per_job=0, logs_per_job=0, log_bytes_per_job=1000, runs_per_pass=3)
    )
    passes = await drain(retention, 3)

    with_output = set(await output_by_run(history))
    assert with_output == {
        # job-own: 100 (running) + 100 + ... the run that crosses 250 and all older lose it.
        run_id_for("job-own", T0 + timedelta(minutes=6)),
        run_id_for("job-own", T0 + timedelta(minutes=5)),
        run_id_for("job-own", stuck),
        # job-global (1000 bytes by default): the newest two of 400 bytes.
        *(run_id_for("job-global", s) for s in minutes(2, 3)),
        # job-unlimited: its own 0 beats the global budget.
        *(run_id_for("job-unlimited", s) for s in minutes(*range(4))),
    }
    assert sum(p.outputs_deleted for p in passes) == 5 + 2
    assert sum(p.bytes_deleted for p in passes) == 5 * 100 + 2 * 400
    assert sum(p.runs_deleted for p in passes) == 0
    assert await rows(history, runs) == runs_before
    assert len(await rows(history, run_attempts)) == len(runs_before)
    await assert_sizes_match_output(history)


async def test_the_total_budget_takes_output_from_the_oldest_finished_runs_of_any_job(history: AsyncEngine):
    writer = HistoryWriter(history)
    for m in range(8):
        await _apply(writer, [*run_with_output("job-a" if m % 2 == 0 else "job-b", *minutes(m), 300)])
    oldest = T0 - timedelta(hours=1)
    await _apply(writer, [*run_with_output("job-c", oldest, 500, finished=False)])
    runs_before = await rows(history, runs)

    # 8 * 300 + 500 = 2900 bytes against 800: the seven oldest finished outputs (2100 bytes) go.
    retention = Retention(
        writer,
        RetentionLimits(
            runs_per_job=0, logs_per_job=0, log_bytes_per_job=0, log_bytes_total=800, runs_per_pass=3
        ),
    )
    passes = await drain(retention, 3)

    assert await output_by_run(history) == {
        run_id_for("job-b", T0 + timedelta(minutes=7)): 300,
        run_id_for("job-c", oldest): 500,
    }
    assert sum(p.outputs_deleted for p in passes) == 7
    assert sum(p.bytes_deleted for p in passes) == 2100
    assert await rows(history, runs) == runs_before
    await assert_sizes_match_output(history)


async def test_output_sizes_count_each_chunk_once(history: AsyncEngine):
    """Replays and duplicate chunks (same run, attempt and seq) add nothing to a run's size."""
    writer = HistoryWriter(history)
    events = run_with_output("job-d", T0, 70, 30, finished=False)
    await _apply(writer, [*events, *events[2:]])  # duplicates within one batch
    await _apply(writer, [*events])  # and a replay of the whole run
    assert {r["run_id"]: r["bytes"] for r in await rows(history, output_sizes)} == {
        run_id_for("job-d", T0): 100
    }
    await assert_sizes_match_output(history)


def test_a_jobs_limits_come_from_its_spec_and_fall_back_to_the_global_ones():
    limits = RetentionLimits(runs_per_job=10, log_bytes_per_job=1000)
    assert limits.for_job(None) == JobLimits(runs=10, log_bytes=1000)
    assert limits.for_job({"name": "spec written before retention existed"}) == JobLimits(10, 1000)
    assert limits.for_job({"retention": {"runs": 3, "log_bytes": None}}) == JobLimits(3, 1000)
    assert limits.for_job({"retention": {"log_bytes": 0}}) == JobLimits(10, 0)
    # Never written by the API; read as "no limit of its own" rather than failing the pass.
    assert limits.for_job({"retention": {"runs": -1, "log_bytes": "lots"}}) == JobLimits(10, 1000)
    assert limits.for_job({"retention": {"runs": -1, "log_bytes": 5}}) == JobLimits(10, 5)


async def test_the_service_applies_a_jobs_byte_budget_and_the_total(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    settings = replace(
        history_settings,
        history_runs_per_job=0,
        history_logs_per_job=0,
        history_log_bytes_per_job=0,
        history_log_bytes_total=2500,
        history_retention_interval=0.2,
    )
    events: list[Event] = [job_with("job-s", JobRetention(log_bytes=1500))]
    for m in range(5):
        events += run_with_output("job-s", *minutes(m), 500)
        events += run_with_output("job-t", *minutes(m), 600)
    async with running_logs(settings):
        seqs = await publish(bus, settings, *events)
        last_chunk = max(seq for seq, e in zip(seqs, events, strict=True) if isinstance(e, LogChunk))

        async def trimmed() -> dict[str, int] | None:
            stored = await positions(history)
            found = await rows(history, runs)
            if stored.get("logs-logs", 0) < last_chunk or len(found) != 10:
                return None
            if not all(r["status"] == "succeeded" for r in found):
                return None
            output = await output_by_run(history)
            return output if sum(output.values()) <= 2500 else None

        output = await wait_for(trimmed, timeout=20, what="all projected, output trimmed to the budgets")
    # job-s keeps its newest three runs' output (1500 bytes, its own budget); then the total
    # (5500 - 1000 bytes against 2500) takes the oldest finished of any job: job-t's minutes
    # 0 and 1, and both runs of minute 2.
    assert output == {
        **{run_id_for("job-s", s): 500 for s in minutes(3, 4)},
        **{run_id_for("job-t", s): 600 for s in minutes(3, 4)},
    }
    await assert_sizes_match_output(history)
