"""What the logs tests share: event factories, publishing, running the service, reading rows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.app import LogsService
from cronbus.logs.projector import Pacing
from cronbus.shared.bus import Bus
from cronbus.shared.events import (
    Event,
    JobCreated,
    JobEvent,
    JobSpec,
    LogChunk,
    RunDispatched,
    RunEvent,
    RunFinished,
    RunStarted,
    ShellExecutor,
    encode,
    run_id_for,
)
from cronbus.shared.history.schema import jobs, log_chunks, projector_positions, run_attempts, runs
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import inject_headers
from tests.support import wait_for

T0 = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
# Short waits so a stopping service or a recovering database is noticed quickly in tests.
FAST = Pacing(batch=64, fetch_timeout=0.3, backoff_first=0.05, backoff_max=0.3, idle_checks_every=2)


def spec(name: str = "backup") -> JobSpec:
    return JobSpec(name=name, schedule="0 3 * * *", executor=ShellExecutor(command="echo hi"))


def job_created(job_id: str, *, revision: int = 1, name: str = "backup") -> JobCreated:
    return JobCreated(job_id=job_id, revision=revision, spec=spec(name), occurred_at=T0)


def run_events(
    job_id: str, slot: datetime, *, attempts: int = 2, finisher: str | None = None
) -> list[RunEvent]:
    """A run's whole life: dispatched, then `attempts` attempts, all but the last retried.

    `finisher` is the runner its run.finished events name (default: the one that started it).
    """
    run_id = run_id_for(job_id, slot)
    events: list[RunEvent] = [
        RunDispatched(
            run_id=run_id, job_id=job_id, slot=slot, pool="default", spec=spec(), trigger="schedule",
            dispatched_at=slot + timedelta(milliseconds=5), lateness_ms=5.0, occurred_at=slot,
        )
    ]  # fmt: skip
    for attempt in range(1, attempts + 1):
        start = slot + timedelta(seconds=10 * attempt)
        last = attempt == attempts
        events.append(
            RunStarted(run_id=run_id, job_id=job_id, slot=slot, attempt=attempt, runner=f"runner-{attempt}",
                       occurred_at=start)
        )  # fmt: skip
        events.append(
            LogChunk(run_id=run_id, job_id=job_id, slot=slot, attempt=attempt, seq=0,
                     data=f"attempt {attempt}\n".encode(), occurred_at=start)
        )  # fmt: skip
        events.append(
            RunFinished(
                run_id=run_id, job_id=job_id, slot=slot, attempt=attempt,
                runner=finisher or f"runner-{attempt}", status="succeeded" if last else "failed",
                final=last, exit_code=0 if last else 1,
                duration_ms=1000.0 * attempt, error="" if last else "exit status 1", cpu_ms=3.0,
                peak_rss_bytes=4096, output_bytes=10, occurred_at=start + timedelta(seconds=1),
            )
        )  # fmt: skip
    return events


async def publish(bus: Bus, settings: Settings, *events: Event) -> list[int]:
    """Publish each event to the subject it belongs on; their stream sequences."""
    seqs = []
    for event in events:
        ack = await bus.js.publish(subject_of(settings, event), encode(event), headers=inject_headers())
        seqs.append(ack.seq)
    return seqs


def subject_of(settings: Settings, event: Event) -> str:
    n = settings.names
    match event:
        case JobEvent():
            return n.job_subject(event.job_id)
        case RunDispatched():
            return n.dispatch_subject(event.pool, event.job_id)
        case LogChunk():
            return n.log_subject(event.run_id)
        case RunEvent():
            return n.run_subject(event.job_id, event.run_id)
    raise TypeError(event)


@contextlib.asynccontextmanager
async def running_logs(settings: Settings, service: LogsService | None = None) -> AsyncIterator[LogsService]:
    """The logs service running as a task; stopped (and checked to stop cleanly) on exit."""
    service = service or LogsService(settings, pacing=FAST)
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        await wait_for(lambda: service.ready.is_set() or task.done(), timeout=20, what="logs ready")
        if task.done():
            task.result()
        yield service
    finally:
        stopping.set()
        loop = asyncio.get_running_loop()
        since = loop.time()
        await asyncio.wait_for(task, timeout=20)
        # A clean stop is prompt: nothing waits out the grace period (20 s) or the ack wait
        # (60 s). The bound is generous so a loaded machine does not make it flaky.
        assert loop.time() - since < 10.0, f"the logs service took {loop.time() - since:.1f}s to stop"


async def rows(engine: AsyncEngine, table: Table) -> list[dict[str, Any]]:
    """Every row of `table`, ordered by its primary key."""
    async with engine.connect() as conn:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r._mapping) for r in result]


async def snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """The projected history, minus bookkeeping times: what a replay must leave unchanged."""
    out = {t.name: await rows(engine, t) for t in (jobs, runs, run_attempts, log_chunks)}
    out["projector_positions"] = [
        {k: v for k, v in r.items() if k != "updated_at"} for r in await rows(engine, projector_positions)
    ]
    return out


async def positions(engine: AsyncEngine) -> dict[str, int]:
    """Each projector's stored stream position, by consumer name."""
    return {p["consumer"]: p["stream_seq"] for p in await rows(engine, projector_positions)}


async def wait_positions(engine: AsyncEngine, expected: dict[str, int], *, timeout: float = 15.0) -> None:
    """Waits until every projector has stored the position `expected` gives it: all of
    its stream is in SQL (the consumers project independently, in any order)."""

    async def reached() -> bool:
        found = await positions(engine)
        return all(found.get(consumer, 0) >= seq for consumer, seq in expected.items())

    await wait_for(reached, timeout=timeout, what=f"projector positions {expected}")


async def wait_rows(
    engine: AsyncEngine, table: Table, count: int, *, timeout: float = 15.0
) -> list[dict[str, Any]]:
    """The rows of `table` once there are `count` of them (fails if there are ever more)."""

    async def enough() -> list[dict[str, Any]] | None:
        found = await rows(engine, table)
        assert len(found) <= count, f"{table.name}: {len(found)} rows, expected {count}"
        return found if len(found) == count else None

    result: list[dict[str, Any]] = await wait_for(
        enough, timeout=timeout, what=f"{count} rows in {table.name}"
    )
    return result
