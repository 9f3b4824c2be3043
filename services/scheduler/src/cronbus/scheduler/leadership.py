"""Leadership: what the replica holding the lease does.

It acquires and renews the lease, begins a term with a takeover (the watermark and recent
DISPATCH history, each job's catch-up policy), pops due slots off the timetable and hands them
to the term's dispatcher, and about once a second persists the watermark and its status.
Whether a dispatch may go out is the term's answer alone (`lease.Term`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from datetime import UTC, datetime

from nats.js.kv import KeyValue

from cronbus.scheduler.dispatch import MAX_PREPARED, YIELD_EVERY, Dispatcher
from cronbus.scheduler.domain import HISTORY_MARGIN, Fence, Timetable, to_datetime, watermark_of
from cronbus.scheduler.feed import JobFeed
from cronbus.scheduler.history import dedupe_covers, dispatched_since
from cronbus.scheduler.lease import Lease, Term
from cronbus.scheduler.publish import AckedPublisher
from cronbus.scheduler.watermark import (
    Start,
    failover_grace,
    read_watermark,
    record_term,
    write_watermark,
)
from cronbus.shared.bus import Bus
from cronbus.shared.events import JobEvents
from cronbus.shared.settings import Settings
from cronbus.shared.status import LeaderTerm, SchedulerStatus, encode_status

log = logging.getLogger(__name__)

STATUS_KEY = "status"
# How often the leader persists the watermark and its status.
STATE_INTERVAL = 1.0
# Due slots taken off the timetable at a time (a few of the dispatcher's batches).
POP_EVERY = 4 * YIELD_EVERY
# Dispatches are prepared this long before they are due, when the leader has that long to wait
# (at least PREPARE_MIN_WAIT: slots spread by jitter are dispatched as they come).
PREPARE_AHEAD = 1.0
PREPARE_MIN_WAIT = 0.05
# While slots come due back to back, the leader wakes at most once per quantum: the slots due
# in between go out together (one write to NATS, one batch for the runners), at most this late.
# A slot due after a quiet spell goes out as soon as it is due.
DISPATCH_QUANTUM = 0.005


def connection_epoch(bus: Bus) -> int | None:
    """Which connection to NATS this is (its reconnect count); None while disconnected."""
    return bus.nc.stats["reconnects"] if bus.nc.is_connected else None


class Leadership:
    """The lease, the terms it gives, and the loops a term runs (see the module docstring)."""

    def __init__(self, settings: Settings, timetable: Timetable, fence: Fence) -> None:
        self.settings = settings
        self.timetable = timetable
        self.fence = fence
        # Standbys try to take the lease this often; failover is about TTL + this.
        self.poll_interval = min(0.25, settings.lease_renew)
        # Set while a term runs (for waiting on it); whether a dispatch may go out is the
        # term's answer alone.
        self.leading = asyncio.Event()
        self._wake = asyncio.Event()
        self.dispatcher: Dispatcher | None = None
        self.processed_until = 0.0
        self.lease: Lease | None = None
        self.publisher: AckedPublisher | None = None
        # The term begun and not recorded yet (the state loop records it with the watermark).
        self._unrecorded_term: LeaderTerm | None = None

    @property
    def term(self) -> Term | None:
        """The current or last term of primacy."""
        return self.dispatcher.term if self.dispatcher is not None else None

    async def stop(self, state_kv: KeyValue | None) -> None:
        """Stop dispatching, let publishes in flight finish, persist the watermark, release."""
        self.leading.clear()
        self._wake.set()
        dispatcher = self.dispatcher
        if dispatcher is not None:
            await dispatcher.drain(self.settings.grace_period)
            if dispatcher.abandoned:
                # Slots given up unpublished: the watermark last written stays below them, and
                # the next leader decides about them.
                log.warning("%d slots not dispatched; watermark left where it was", dispatcher.abandoned)
            elif state_kv is not None and self.fence.allows(time.monotonic()):
                # The term ended with the drain and published nothing more; the lease is still
                # ours, so the watermark of what it confirmed is ours to write.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._write_state(state_kv, stopped=True), timeout=1.0)
        if self.lease is not None:
            await self.lease.release()
        if self.publisher is not None:
            await self.publisher.stop()

    def on_job_event(self, event: JobEvents) -> None:
        self.timetable.apply(event, time.time())
        if self.timetable.leading:
            self._wake.set()

    async def hold_primacy(
        self, bus: Bus, state_kv: KeyValue, feed: JobFeed, stopping: asyncio.Event
    ) -> None:
        """Acquire the lease when free, renew it while held, begin and end terms."""
        lease = self.lease
        assert lease is not None
        while not stopping.is_set():
            if not feed.caught_up.is_set():
                # Nothing to try before the job table is whole; then at once (a cold start
                # need not wait out a poll interval).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.caught_up.wait(), timeout=self.poll_interval)
                continue
            try:
                if not lease.held:
                    if await lease.acquire():
                        await self._take_over(bus, state_kv)
                        continue
                    interval = self.poll_interval
                else:
                    if not await lease.renew():
                        self._step_down()
                    elif not self.leading.is_set() and bus.nc.is_connected:
                        # The last term ended while the lease stayed ours (its connection was
                        # replaced, its window stayed full): a new term, from the watermark and
                        # DISPATCH.
                        await self._take_over(bus, state_kv)
                        continue
                    interval = self.settings.lease_renew
            except Exception as exc:
                log.warning("lease %s: %r", "renewal" if lease.held else "acquisition", exc)
                interval = min(self.poll_interval, self.settings.lease_renew)
            term = self.term
            if self.leading.is_set() and term is not None and not term.may_publish(time.monotonic()):
                self._step_down()
            if lease.held and not self.fence.allows(time.monotonic()):
                # Renewals failed until the fence closed. The key expires with its TTL and
                # whoever takes it next (perhaps us) starts from the watermark.
                lease.lose("no renewal confirmed before the fence closed")
                self._step_down()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=interval)

    async def _take_over(self, bus: Bus, state_kv: KeyValue) -> None:
        """Begin a term: read where the last one stopped and queue what it left owed. The term
        starts on the connection it reads DISPATCH over; if that connection is replaced or the
        fence closes before the takeover is done, the term is over before it began."""
        lease = self.lease
        assert lease is not None
        started = time.monotonic()
        term = Term(self.fence, lambda: connection_epoch(bus), revision=lease.revision)
        deadline = self.fence.deadline or started
        try:
            # Nothing renews the lease while the takeover reads: it must be done before the
            # fence closes.
            start, dispatched = await asyncio.wait_for(
                self._read_start(bus, state_kv, deadline), timeout=max(0.1, deadline - started)
            )
        except Exception as exc:
            log.warning("takeover failed (%r); giving the lease back", exc)
            await lease.release()
            return
        if not term.may_publish(time.monotonic()):
            log.warning("takeover outlived its term (%s); giving the lease back", term.why)
            await lease.release()
            return
        now = time.time()
        grace = failover_grace(start, now, self.timetable.grace)
        assert self.publisher is not None
        self.dispatcher = Dispatcher(self.publisher, self.settings.names, self.settings.instance_id, term)
        self.processed_until = start.at
        queued = self.timetable.lead(
            start.at, now, dispatched, settled_before=start.at - HISTORY_MARGIN, grace=grace
        )
        # What lives now (the job table, the heap, the modules) lives for the term: out of the
        # collector's sight, a burst's garbage collections need not walk it again and again
        # (at 10,000 jobs, a fifth of a burst's CPU time).
        gc.freeze()
        self._unrecorded_term = LeaderTerm(
            leader=self.settings.instance_id,
            lease_revision=lease.revision or 0,
            started_at=to_datetime(now),
            watermark=to_datetime(start.at),
        )
        self.leading.set()
        self._wake.set()
        log.info(
            "leading (lease revision %s): watermark %s, %d already dispatched since, %d slots to catch up, "
            "slots late by up to %.1fs dispatched as scheduled, takeover took %.0f ms",
            lease.revision,
            to_datetime(start.at).isoformat(),
            len(dispatched),
            queued,
            grace,
            (time.monotonic() - started) * 1000,
        )

    async def _read_start(self, bus: Bus, state_kv: KeyValue, deadline: float) -> tuple[Start, set[str]]:
        """The watermark (written now on a fresh installation: a successor of a leader that dies
        in its first second starts from here) and the slots dispatched since a little before it,
        reading before monotonic `deadline`.

        If that read fails while every slot since then is still inside DISPATCH's dedupe window
        (a failover, not days of downtime), the takeover goes on without it: what is already
        stored is dropped as a duplicate. The read then gets half the time, so the term can
        still begin before the fence closes."""
        start = await read_watermark(state_kv)
        if start is None:
            now = time.time()
            start = Start(at=now, written=now)
            await write_watermark(state_kv, now, leader=self.settings.instance_id, now=now)
        since = start.at - HISTORY_MARGIN
        covered = dedupe_covers(since, time.time(), self.settings.dedupe_window, margin=HISTORY_MARGIN)
        budget = max(0.1, deadline - time.monotonic())
        if covered:
            budget /= 2
        try:
            dispatched = await asyncio.wait_for(
                dispatched_since(bus.js, self.settings.names, to_datetime(since), timeout=budget), budget
            )
        except Exception as exc:
            if not covered:
                raise
            log.warning(
                "reading DISPATCH since %s failed (%r); going on without it: every slot since then is "
                "inside the %.0fs dedupe window",
                to_datetime(since).isoformat(),
                exc,
                self.settings.dedupe_window,
            )
            return start, set()
        return start, dispatched

    def _step_down(self) -> None:
        if self.leading.is_set() or self.timetable.leading:
            log.warning("stepping down: no longer the leader")
        self.leading.clear()
        self.timetable.follow()
        if self.dispatcher is not None:
            self.dispatcher.end_term()
        self._wake.set()

    async def dispatch_loop(self, stopping: asyncio.Event) -> None:
        # The end of the quantum that began when slots last went out (see DISPATCH_QUANTUM).
        quantum_ends = 0.0
        while not stopping.is_set():
            if not self.leading.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                self._wake.clear()
                continue
            dispatcher = self.dispatcher
            assert dispatcher is not None
            now = time.time()
            if now < quantum_ends:
                # Woken early (a job changed): what came due meanwhile still waits the quantum out.
                await asyncio.sleep(quantum_ends - now)
                now = time.time()
            # Popped a few batches at a time, so the first slots of a burst go out while the
            # rest are still on the heap.
            dispatched = False
            while due_now := self.timetable.pop_due(now, limit=POP_EVERY):
                dispatched = True
                quantum_ends = now + DISPATCH_QUANTUM
                batch = []
                for due in due_now:
                    # The state that decided the slot: a slot owed by a definition that was
                    # since updated goes out as that definition said.
                    job = due.job if due.job is not None else self.timetable.jobs.get(due.job_id)
                    if job is not None:
                        batch.append((due, job))
                try:
                    # A step-down in the middle of the batch ends the dispatcher's term: it
                    # publishes nothing more of it.
                    await dispatcher.submit_all(batch)
                except TimeoutError:
                    log.error("dispatch window stayed full; due slots left to the next term")
                    dispatcher.end_term("the dispatch window stayed full")
                if dispatcher.ended:
                    # What is still due stays on the heap, after the watermark: the next term
                    # decides about it.
                    break
            nxt = self.timetable.next_fire_at()
            if not dispatcher.ended:
                # An ended term may have dropped popped slots: its watermark stays before them,
                # so the next leader starts there.
                self.processed_until = now if nxt is None or nxt > now else min(now, nxt - 0.001)
            delay = 0.5 if nxt is None else max(0.0, min(0.5, nxt - time.time()))
            if dispatched:
                delay = max(delay, quantum_ends - time.time())
            if nxt is not None and delay >= PREPARE_MIN_WAIT and not dispatcher.ended:
                delay = await self._prepare(dispatcher, nxt, delay)
            if delay > 0:
                await self._sleep(delay)
            self._wake.clear()

    async def _sleep(self, delay: float) -> None:
        """Waits `delay` seconds, or less if woken (a job changed, the term ended)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def _prepare(self, dispatcher: Dispatcher, nxt: float, delay: float) -> float:
        """While waiting for the next fire time `nxt`: from PREPARE_AHEAD before it, encode
        the dispatches of the slots due by then (a burst then goes out as fast as it can be
        written). Returns how long to wait now."""
        ahead = nxt - time.time()
        if ahead > PREPARE_AHEAD:
            return min(delay, ahead - PREPARE_AHEAD)
        if nxt > dispatcher.prepared_until:
            horizon = time.time() + PREPARE_AHEAD
            upcoming = []
            for due in self.timetable.peek_due(horizon, limit=MAX_PREPARED):
                job = due.job if due.job is not None else self.timetable.jobs.get(due.job_id)
                if job is not None:
                    upcoming.append((due, job))
            await dispatcher.prepare(upcoming, until=nxt, horizon=horizon)
        return max(0.0, min(0.5, nxt - time.time()))

    async def state_loop(self, kv: KeyValue, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=STATE_INTERVAL)
            term = self.term
            if stopping.is_set() or not self.leading.is_set() or term is None:
                continue
            if not term.may_publish(time.monotonic()):
                continue
            try:
                await asyncio.wait_for(self._write_state(kv), timeout=STATE_INTERVAL)
            except Exception as exc:
                log.warning("writing watermark/status failed: %r", exc)

    async def _write_state(self, kv: KeyValue, *, stopped: bool = False) -> None:
        dispatcher = self.dispatcher
        assert dispatcher is not None
        unfinished = dispatcher.unfinished_slots_ms
        if (queued := self.timetable.oldest_queued_slot_ms) is not None:
            unfinished.append(queued)
        watermark = watermark_of(self.processed_until, unfinished, self.timetable.max_jitter)
        when = to_datetime(watermark)
        await write_watermark(
            kv, watermark, leader=self.settings.instance_id, now=time.time(), stopped=stopped
        )
        lease = self.lease
        status = SchedulerStatus(
            leader=self.settings.instance_id,
            lease_revision=(lease.revision if lease else None) or 0,
            jobs=len(self.timetable.jobs),
            watermark=when,
            dispatch_lag_ms=dispatcher.last_lateness_ms,
            dispatched_total=dispatcher.dispatched_total,
            updated_at=datetime.now(UTC),
            schedule_errors=self.timetable.schedule_errors,
        )
        await kv.put(STATUS_KEY, encode_status(status))
        if (term := self._unrecorded_term) is not None:
            await record_term(kv, term)
            self._unrecorded_term = None
