"""Retention: old finished runs go, older runs lose their output, running ones stay; bounded passes."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.retention import Retention, RetentionLimits
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.bus import Bus
from cronbus.shared.events import RunEvent, RunFinished, run_id_for
from cronbus.shared.history.schema import log_chunks, run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, publish, rows, run_events, running_logs
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
