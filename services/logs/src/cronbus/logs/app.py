"""The logs service: migrates the history database, then projects every stream into it.

Composition root: builds the engine, the bus, one projector per stream and the retention
loop, and owns their tasks. It waits out a database or NATS that is not there yet, so it can
start before them; once serving, trouble is retried inside the projectors.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.projector import Pacing, Projector, feeds
from cronbus.logs.retention import Retention, RetentionLimits
from cronbus.logs.store import HistoryWriter
from cronbus.shared.bus import Bus
from cronbus.shared.history.store import WRITER_CACHE_MIB, create_engine, migrate
from cronbus.shared.runtime import brief, stopped_within, until_done
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import setup_tracing

log = logging.getLogger(__name__)


class LogsService:
    """One projector per stream (see `feeds`) and the retention loop, sharing one writer."""

    name = "logs"

    def __init__(
        self, settings: Settings, *, pacing: Pacing | None = None, retention: RetentionLimits | None = None
    ) -> None:
        self.settings = settings
        self.pacing = pacing or Pacing()
        self.limits = retention or RetentionLimits.from_settings(settings)
        self.ready = asyncio.Event()
        self.projectors: list[Projector] = []

    async def run(self, stopping: asyncio.Event) -> None:
        setup_tracing("logs", self.settings.instance_id)
        engine = create_engine(self.settings.sql_url, cache_mib=WRITER_CACHE_MIB)
        bus: Bus | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if not await until_done(
                stopping, "logs: migrating the history database", lambda: _migrated(engine)
            ):
                return
            bus = await Bus.open_when_ready(self.settings, "logs", stopping)
            if bus is None:
                return
            # What is alive now (modules, SQLAlchemy's compiled statements, the connections)
            # lives as long as the service: kept out of the collector's full passes, which
            # otherwise traverse all of it again and again while batches allocate.
            gc.freeze()
            # A batch allocates tens of thousands of short-lived objects that refcounting
            # frees; collecting every 700 allocations mostly re-traverses the live batch.
            gc.set_threshold(50_000, 10, 10)
            tasks = self._start(bus, engine, stopping)
            await self._supervise(tasks, stopping, engine.url.render_as_string())
            await self._finish(tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            if bus is not None:
                await bus.close()
            await engine.dispose()

    def _start(self, bus: Bus, engine: AsyncEngine, stopping: asyncio.Event) -> list[asyncio.Task[None]]:
        writer = HistoryWriter(engine)

        def reconnects() -> int:
            return int(bus.nc.stats["reconnects"])

        self.projectors = [
            Projector(feed, bus.nc, bus.js, writer, reconnects=reconnects, pacing=self.pacing)
            for feed in feeds(self.settings.names)
        ]
        tasks = [
            asyncio.create_task(p.run(stopping), name=f"logs-projector-{p.feed.kind}")
            for p in self.projectors
        ]
        retention = Retention(writer, self.limits)
        tasks.append(
            asyncio.create_task(
                _retain(retention, self.settings.history_retention_interval, stopping), name="logs-retention"
            )
        )
        return tasks

    async def _supervise(self, tasks: list[asyncio.Task[None]], stopping: asyncio.Event, where: str) -> None:
        """Announce readiness once every projector is bound; return when asked to stop."""
        stop_wait = asyncio.create_task(stopping.wait())
        bound = asyncio.create_task(self._all_bound())
        pending: set[asyncio.Task[Any]] = {*tasks, stop_wait, bound}
        try:
            while stop_wait in pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if bound in done:
                    self.ready.set()
                    log.info("logs: projecting into %s", where)
                for task in done & set(tasks):
                    if not stopping.is_set():
                        # Projectors and retention only end when asked to: this is a defect.
                        task.result()
                        raise RuntimeError(f"{task.get_name()} ended before the service was stopped")
        finally:
            stop_wait.cancel()
            bound.cancel()

    async def _all_bound(self) -> None:
        await asyncio.gather(*(p.bound.wait() for p in self.projectors))

    async def _finish(self, tasks: list[asyncio.Task[None]]) -> None:
        """Let each projector finish its batch (they notice `stopping` between batches)."""
        _, late = await asyncio.wait(tasks, timeout=self.settings.grace_period)
        for task in late:
            log.warning(
                "%s did not stop within %.0fs; cancelling it", task.get_name(), self.settings.grace_period
            )


def create_service(settings: Settings) -> LogsService:
    return LogsService(settings)


async def _retain(retention: Retention, interval: float, stopping: asyncio.Event) -> None:
    """A retention pass every `interval` seconds until stopping; a failed pass is retried next time."""
    if interval <= 0:
        # Retention is off; the task still lives as long as the service, like the others.
        await stopping.wait()
        return
    while not await stopped_within(stopping, interval):
        try:
            await retention.run_pass()
        except Exception as exc:
            log.warning("retention pass failed (next in %.0fs): %s", interval, brief(exc))


async def _migrated(engine: AsyncEngine) -> bool:
    await migrate(engine)
    return True
