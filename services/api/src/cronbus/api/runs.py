"""Runs: what the run endpoints do (history reads, output, cancellation, live tail)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import msgspec

from cronbus.api.domain import FieldError, InvalidInput, Principal, RunNotFound, check_id
from cronbus.api.history import History
from cronbus.api.journal import Journal, RunHead
from cronbus.api.schemas import CancelRequested, HistoryOut, RunnerOut, RunOut, SchedulerOut, StatusOut
from cronbus.shared.events import LogChunk, RunIdentity
from cronbus.shared.names import Names

log = logging.getLogger(__name__)


class Runs:
    def __init__(self, journal: Journal, history: History) -> None:
        self.journal = journal
        self.history = history

    async def get(self, run_id: str) -> RunOut:
        run_id = check_id("run", run_id)
        run = await self.history.run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        try:
            head = await asyncio.wait_for(self.journal.run_head(run_id, run.job_id), timeout=2.0)
        except Exception as exc:
            # The history answers without it; the trace id is a pointer, not the run.
            log.warning("run %s: cannot read its trace id from RUNS: %r", run_id, exc)
            return run
        if head is None or head.trace_id is None:
            return run
        return msgspec.structs.replace(run, trace_id=head.trace_id)

    async def log(self, run_id: str, *, attempt: int | None) -> bytes:
        """An attempt's output (the latest attempt unless one is named)."""
        run_id = check_id("run", run_id)
        if attempt is not None and attempt < 1:
            raise InvalidInput([FieldError(field="attempt", reason="attempts count from 1")])
        run = await self.history.run(run_id)
        if attempt is None:
            attempt = run.attempt if run is not None else await self.history.latest_log_attempt(run_id)
            if attempt is None:
                raise RunNotFound(run_id)
        elif run is None and await self.history.latest_log_attempt(run_id) is None:
            raise RunNotFound(run_id)
        return await self.history.log(run_id, attempt)

    async def locate(self, run_id: str) -> RunHead:
        """Where the run is, or RunNotFound.

        The run is looked for on the bus as well as in the history, which lags behind it: its
        events on RUNS, the history, then the DISPATCH messages the history has not projected
        (a run dispatched a moment ago). Not found only when it is in none of them.
        """
        run_id = check_id("run", run_id)
        head = await self.journal.run_head(run_id)
        projected = 0
        if head is None:
            # The position first, then the run: a dispatch projected in between is in the
            # history by then (the position commits with its rows), and one projected later
            # is after the position, so the DISPATCH search below finds it either way.
            projected = await self.history.projected_seq(Names.logs_consumer("dispatch"))
            run = await self.history.run(run_id)
            if run is not None:
                identity = RunIdentity(run_id=run.id, job_id=run.job_id, slot=run.slot)
                head = RunHead(identity=identity, last=None, last_seq=0)
        if head is None:
            dispatched = await self.journal.find_dispatch(run_id, after_seq=projected)
            if dispatched is not None:
                head = RunHead(identity=dispatched, last=None, last_seq=0)
        if head is None:
            raise RunNotFound(run_id)
        return head

    async def cancel(self, run_id: str, by: Principal) -> CancelRequested:
        """Cancel the run wherever it is (`locate`); the outcome shows up as status `cancelled`."""
        head = await self.locate(run_id)
        await self.journal.cancel(head, by.name)
        return CancelRequested(id=head.identity.run_id)

    async def tail(self, run_id: str, *, idle_timeout: float) -> AsyncIterator[LogChunk | None]:
        """The run's output from the LOGS stream: replay, then live until the run finishes.
        RunNotFound for a run that exists nowhere (its tail would wait forever)."""
        head = await self.locate(run_id)
        return self.journal.tail(head.identity.run_id, idle_timeout=idle_timeout)

    async def status(self) -> StatusOut:
        scheduler = await self.journal.scheduler_status()
        runners = await self.journal.runners()
        try:
            history: HistoryOut | None = await asyncio.wait_for(self.history.rejected(), timeout=2.0)
        except Exception as exc:
            # The rest of the status comes from NATS and is worth answering without it.
            log.warning("status: cannot read rejected events from the history: %r", exc)
            history = None
        return StatusOut(
            history=history,
            scheduler=None
            if scheduler is None
            else SchedulerOut(
                leader=scheduler.leader,
                lease_revision=scheduler.lease_revision,
                jobs=scheduler.jobs,
                watermark=scheduler.watermark,
                dispatch_lag_ms=scheduler.dispatch_lag_ms,
                dispatched_total=scheduler.dispatched_total,
                updated_at=scheduler.updated_at,
                schedule_errors=scheduler.schedule_errors,
            ),
            runners=[
                RunnerOut(
                    id=r.id,
                    host=r.host,
                    pid=r.pid,
                    pools=r.pools,
                    running=r.running,
                    capacity=r.capacity,
                    version=r.version,
                    started_at=r.started_at,
                    updated_at=r.updated_at,
                    slots=r.slots,
                    http_slots=r.http_slots,
                )
                for r in runners
            ],
        )
