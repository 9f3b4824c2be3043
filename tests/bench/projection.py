"""Projection benchmark: events per second the logs service applies into SQLite and PostgreSQL.

Each figure fills DISPATCH, RUNS and LOGS of an embedded nats-server with the whole life of
short runs (dispatched, started, one output chunk, finished; for the last figure the output
rides inline on run.finished instead, as runners send short output), then starts a real
`cronbus logs` process and times it from its first stored position to the streams' last
sequences. Each figure also notes the logs process's CPU time per event, which other work on
the machine changes much less than the rate. PostgreSQL is measured when
CRONBUS_TEST_DATABASE_URL (or BENCH_DATABASE_URL) names a server: the benchmark creates a
database of its own there and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.shared.bus import Bus, ensure_topology
from cronbus.shared.events import (
    Event,
    JobSpec,
    LogChunk,
    OutputPart,
    RunDispatched,
    RunFinished,
    RunStarted,
    ShellExecutor,
    encode,
    run_id_for,
)
from cronbus.shared.history.schema import projector_positions
from cronbus.shared.history.store import create_engine
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings, build_settings
from tests.bench.common import Figure
from tests.support import service_command, stop_process

RUNS = 10_000  # 4 events each
TARGET = 20_000.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def fill_streams(settings: Settings, runs: int, *, inline: bool = False) -> dict[str, int]:
    """Publish `runs` whole run lives; the last sequence of each stream that got any.

    `inline`: each run's output rides on its run.finished (no log.chunk), as runners send a
    short attempt's output."""
    names = settings.names
    spec = JobSpec(name="bench", schedule="* * * * * *", executor=ShellExecutor(command="true"))
    bus = await Bus.open(settings, "bench")
    try:
        await ensure_topology(bus.js, settings)
        pending: list[asyncio.Future[object]] = []
        for i in range(runs):
            job_id = f"job-{i % 100}"
            slot = T0 + timedelta(seconds=i)
            run_id = run_id_for(job_id, slot)
            ids: dict[str, Any] = {"run_id": run_id, "job_id": job_id, "slot": slot}
            output = [OutputPart(seq=0, data=b"ok\n")] if inline else []
            life: list[tuple[str, Event]] = [
                (names.dispatch_subject("default", job_id), RunDispatched(**ids, pool="default", spec=spec)),
                (names.run_subject(job_id, run_id), RunStarted(**ids, runner="bench")),
                (names.log_subject(run_id), LogChunk(**ids, seq=0, data=b"ok\n")),
                (
                    names.run_subject(job_id, run_id),
                    RunFinished(
                        **ids, status="succeeded", runner="bench", exit_code=0, output_bytes=3, output=output
                    ),
                ),
            ]
            for subject, event in life:
                if inline and isinstance(event, LogChunk):
                    continue
                pending.append(await bus.js.publish_async(subject, encode(event)))
            if len(pending) >= 4000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        last = {}
        for stream in (names.dispatch_stream, names.runs_stream, names.logs_stream):
            last[stream] = (await bus.js.stream_info(stream)).state.last_seq
        return {stream: seq for stream, seq in last.items() if seq}
    finally:
        await bus.close()


async def positions(engine: AsyncEngine) -> dict[str, int]:
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(projector_positions.c.consumer, projector_positions.c.stream_seq)
            )
            return {consumer: seq for consumer, seq in rows}
    except Exception:
        return {}  # not migrated yet


@dataclass(frozen=True, slots=True)
class Projected:
    """One projection: events per second, how many, and the logs process's CPU per event."""

    rate: float
    events: int
    cpu_us: float

    def note(self) -> str:
        # Other work on the machine changes the rate much more than the CPU per event.
        return (
            f"{self.events} events; logs CPU {self.cpu_us:.0f} us/event "
            f"({1e6 / max(self.cpu_us, 1e-6):,.0f} events per CPU-second); load {os.getloadavg()[0]:.1f}"
        )


def _cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU of the process and its threads (the SQLite driver runs in one)."""
    times = process.cpu_times()
    return times.user + times.system


async def project(
    settings: Settings, database_url: str, workdir: Path, runs: int, *, inline: bool = False
) -> Projected:
    """Events per second from the first stored position to the last, the event count and the
    logs process's CPU time per event over the same span."""
    last = await fill_streams(settings, runs, inline=inline)
    total = sum(last.values())
    sql_url = build_settings(environ={}, database_url=database_url, data_dir=workdir).sql_url
    env = {**os.environ, "CRONBUS_LOG_LEVEL": "WARNING", "CRONBUS_DATABASE_URL": database_url}
    env["CRONBUS_HISTORY_RETENTION_INTERVAL"] = "0"
    with (workdir / "logs.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *service_command(
                "logs", nats_url=settings.nats_url, prefix=settings.prefix, instance_id="bench-logs"
            ),
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    # One engine for all the polling: the benchmark shares the cores with what it measures.
    engine = create_engine(sql_url)
    try:
        logs = psutil.Process(proc.pid)
        first: float | None = None
        cpu_began = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            seen = await positions(engine)
            done = sum(min(seq, max(last.values())) for seq in seen.values())
            if first is None and done > 0:
                first = time.monotonic()
                cpu_began = _cpu_seconds(logs)
            if len(seen) >= len(last) and sum(seen.values()) >= total:
                assert first is not None
                cpu = _cpu_seconds(logs) - cpu_began
                return Projected(total / max(time.monotonic() - first, 1e-6), total, cpu * 1e6 / total)
            await asyncio.sleep(0.05)
        raise RuntimeError(f"projection did not finish within 600 s; see {workdir / 'logs.log'}")
    finally:
        await engine.dispose()
        await stop_process(proc, timeout=30)


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str | None]:
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("CRONBUS_TEST_DATABASE_URL")
    if not admin:
        yield None
        return
    admin = admin.replace("postgresql+asyncpg://", "postgresql://")
    name = "cronbus_bench_" + uuid.uuid4().hex[:8]
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def main() -> list[Figure]:
    figures = []
    with tempfile.TemporaryDirectory(prefix="cronbus-bench-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log") as server:

            def fresh() -> Settings:
                return build_settings(environ={}, nats_url=server.url, prefix="b" + uuid.uuid4().hex[:8])

            lite = await project(fresh(), f"sqlite:///{workdir / 'history.db'}", workdir, RUNS)
            figures.append(
                Figure(
                    "projection into SQLite",
                    lite.rate,
                    "events/s",
                    f">= {TARGET:,.0f}",
                    lite.rate >= TARGET,
                    lite.note(),
                )
            )
            async with postgres_database() as pg_url:
                if pg_url is None:
                    figures.append(
                        Figure("projection into PostgreSQL", 0, "events/s", f">= {TARGET:,.0f}", None,
                               "skipped: set CRONBUS_TEST_DATABASE_URL")
                    )  # fmt: skip
                else:
                    pg = await project(fresh(), pg_url, workdir, RUNS)
                    figures.append(
                        Figure("projection into PostgreSQL", pg.rate, "events/s", f">= {TARGET:,.0f}",
                               pg.rate >= TARGET, pg.note())
                    )  # fmt: skip
            # The same runs with their output inline on run.finished (no log.chunk), as runners
            # send a short attempt's output: 3 events a run, output written from RUNS.
            url = f"sqlite:///{workdir / 'history-inline.db'}"
            inline = await project(fresh(), url, workdir, RUNS, inline=True)
            figures.append(
                Figure("projection into SQLite, output inline", inline.rate, "events/s", f">= {TARGET:,.0f}",
                       inline.rate >= TARGET, inline.note())
            )  # fmt: skip
    return figures
