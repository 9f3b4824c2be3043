"""A database that fails or disappears: the projector waits, retries, and loses nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.shared.bus import Bus
from cronbus.shared.history.schema import log_chunks, run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, positions, publish, rows, run_events, running_logs, wait_rows
from tests.support import wait_for


def _failures(caplog: pytest.LogCaptureFixture, consumer: str) -> Callable[[], int]:
    def count() -> int:
        return sum(1 for r in caplog.records if r.getMessage().startswith(f"{consumer}: cannot write"))

    return count


async def test_failing_writes_are_retried_until_they_succeed(
    history_settings: Settings, bus: Bus, history: AsyncEngine, caplog: pytest.LogCaptureFixture
):
    """The `runs` table disappears (renamed away) while events arrive, then comes back."""
    caplog.set_level(logging.INFO)
    first = run_events("job-db", T0, attempts=1)
    later = [e for m in range(1, 6) for e in run_events("job-db", T0 + timedelta(minutes=m), attempts=2)]
    async with running_logs(history_settings):
        await publish(bus, history_settings, *first)
        await wait_rows(history, log_chunks, 1)
        await wait_for(lambda: _succeeded(history, 1), timeout=15, what="first run")
        before = await positions(history)

        async with history.begin() as conn:
            await conn.execute(text("ALTER TABLE runs RENAME TO runs_away"))
        await publish(bus, history_settings, *later)
        # Log chunks do not touch `runs`, so they keep flowing; run events must wait.
        await wait_rows(history, log_chunks, 11)
        await wait_for(_failures(caplog, "logs-runs"), timeout=15, what="a failed write of RUNS")
        await wait_for(_failures(caplog, "logs-dispatch"), timeout=15, what="a failed write of DISPATCH")
        stuck = await positions(history)
        assert stuck["logs-runs"] == before["logs-runs"]
        assert stuck["logs-dispatch"] == before["logs-dispatch"]
        async with history.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM run_attempts"))).scalar() == 1

        async with history.begin() as conn:
            await conn.execute(text("ALTER TABLE runs_away RENAME TO runs"))
        await wait_for(lambda: _succeeded(history, 6), timeout=20, what="every run after recovery")
        attempts = await wait_rows(history, run_attempts, 11)
    assert sorted(a["status"] for a in attempts) == ["failed"] * 5 + ["succeeded"] * 6
    assert (await positions(history))["logs-runs"] == 2 + 5 * 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_database_that_refuses_connections_loses_nothing(
    history_settings: Settings, bus: Bus, history: AsyncEngine, caplog: pytest.LogCaptureFixture
):
    """PostgreSQL goes away for the service (connections refused, sessions killed), then returns."""
    caplog.set_level(logging.INFO)
    base, name = history_settings.database_url.rsplit("/", 1)
    admin_url = f"{base}/postgres"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    events = [e for m in range(6) for e in run_events("job-pg", T0 + timedelta(minutes=m), attempts=2)]
    async with running_logs(history_settings):
        await publish(bus, history_settings, *events[:7])
        await wait_for(lambda: _succeeded(history, 1), timeout=15, what="first run")
        await history.dispose()
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            await publish(bus, history_settings, *events[7:])
            await wait_for(_failures(caplog, "logs-logs"), timeout=15, what="a failed write while closed")
        finally:
            await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await wait_for(
            lambda: _succeeded(history, 6), timeout=30, what="every run after the database returned"
        )
        await wait_rows(history, log_chunks, 12)
        await wait_rows(history, run_attempts, 12)


async def _succeeded(history: AsyncEngine, count: int) -> bool:
    found = await rows(history, runs)
    assert len(found) <= count
    return len(found) == count and all(r["status"] == "succeeded" for r in found)


async def test_stopping_with_an_unwritten_batch_then_restarting_loses_nothing(
    history_settings: Settings, bus: Bus, history: AsyncEngine, caplog: pytest.LogCaptureFixture
):
    """The batch the service held when it stopped is delivered again at once to the next one
    (the consumer is recreated from the stored position), not after the 60 s ack wait."""
    caplog.set_level(logging.INFO)
    events = [e for m in range(4) for e in run_events("job-stop", T0 + timedelta(minutes=m), attempts=1)]
    async with running_logs(history_settings):
        async with history.begin() as conn:
            await conn.execute(text("ALTER TABLE runs RENAME TO runs_away"))
        await publish(bus, history_settings, *events)
        await wait_for(_failures(caplog, "logs-runs"), timeout=15, what="a failed write of RUNS")
        loop = asyncio.get_running_loop()
        stopping_since = loop.time()
    # running_logs stopped the service; it must not have waited for the database (the retry
    # backoff runs to minutes). Generous, so a loaded machine does not make it flaky.
    assert loop.time() - stopping_since < 10.0
    async with history.begin() as conn:
        await conn.execute(text("ALTER TABLE runs_away RENAME TO runs"))
    async with running_logs(history_settings):
        await wait_for(lambda: _succeeded(history, 4), timeout=15, what="every run after the restart")
        await wait_rows(history, run_attempts, 4)
