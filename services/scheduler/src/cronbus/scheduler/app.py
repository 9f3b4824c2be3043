"""The scheduler service: the composition root.

Every replica replays and follows JOBS (hot standby); the one holding the lease leads
(`leadership.Leadership`). This module opens the connection and the buckets, and wires the
feed, the timetable and the leadership together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from nats.js.kv import KeyValue

from cronbus.scheduler.dispatch import Dispatcher
from cronbus.scheduler.domain import DEFAULT_GRACE, Fence, Timetable
from cronbus.scheduler.feed import JobFeed
from cronbus.scheduler.leadership import Leadership
from cronbus.scheduler.lease import Lease, Term
from cronbus.scheduler.publish import AckedPublisher
from cronbus.shared.bus import Bus
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import setup_tracing

log = logging.getLogger(__name__)

# No outbound buffer while disconnected: nats-py would otherwise keep publishes made during a
# disconnect and send them after the reconnect, past the fence (perhaps after another leader
# took over, and beyond the dedupe window). Publishing while disconnected raises instead.
CONNECT_OPTIONS: dict[str, Any] = {"pending_size": 0}


async def open_bus(settings: Settings, stopping: asyncio.Event) -> Bus | None:
    """The scheduler's connection (see CONNECT_OPTIONS), retried until NATS answers; None when
    asked to stop first."""
    return await Bus.open_when_ready(settings, "scheduler", stopping, **CONNECT_OPTIONS)


class SchedulerService:
    name = "scheduler"

    def __init__(self, settings: Settings, *, grace: float = DEFAULT_GRACE) -> None:
        self.settings = settings
        self.ready = asyncio.Event()
        self.timetable = Timetable(grace=grace)
        self.fence = Fence(ttl=settings.lease_ttl, margin=settings.lease_margin)
        self.leadership = Leadership(settings, self.timetable, self.fence)

    @property
    def leading(self) -> asyncio.Event:
        """Set while this replica runs a term."""
        return self.leadership.leading

    @property
    def term(self) -> Term | None:
        """The current or last term of primacy."""
        return self.leadership.term

    @property
    def dispatcher(self) -> Dispatcher | None:
        """The current or last term's dispatcher."""
        return self.leadership.dispatcher

    async def run(self, stopping: asyncio.Event) -> None:
        setup_tracing("scheduler", self.settings.instance_id)
        bus = await open_bus(self.settings, stopping)
        if bus is None:
            return
        names = self.settings.names
        leadership = self.leadership
        tasks: list[asyncio.Task[None]] = []
        state_kv: KeyValue | None = None
        try:
            leader_kv = await bus.js.key_value(names.leader_bucket)
            state_kv = await bus.js.key_value(names.scheduler_bucket)
            leadership.lease = Lease(
                leader_kv, self.settings.instance_id, self.fence, timeout=self.settings.lease_renew
            )
            feed = JobFeed(bus.js, names, leadership.on_job_event)
            leadership.publisher = AckedPublisher(bus.nc)
            await leadership.publisher.start()

            def spawn(coro: Coroutine[Any, Any, None], name: str) -> None:
                tasks.append(asyncio.create_task(coro, name=f"scheduler-{name}"))

            spawn(feed.run(stopping), "feed")
            spawn(leadership.hold_primacy(bus, state_kv, feed, stopping), "primacy")
            spawn(leadership.dispatch_loop(stopping), "dispatch")
            spawn(leadership.state_loop(state_kv, stopping), "state")
            await self._until(feed.caught_up, stopping, tasks)
            self.ready.set()
            log.info("scheduler %s ready with %d jobs", self.settings.instance_id, len(self.timetable.jobs))
            await self._until(stopping, stopping, tasks)
        finally:
            await leadership.stop(state_kv)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            await bus.close()

    @staticmethod
    async def _until(event: asyncio.Event, stopping: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for `event` (or stopping); a background task that dies is an error."""
        while not (event.is_set() or stopping.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=0.5)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise RuntimeError(f"{task.get_name()} failed") from task.exception()


def create_service(settings: Settings) -> SchedulerService:
    """The `cronbus scheduler` service (no I/O until `run`)."""
    return SchedulerService(settings)
