"""Publishing due slots to DISPATCH: bounded in flight, fenced, idempotent.

Each slot is published with `Nats-Msg-Id = <job_id>:<slot_ms>`, so a repeat of the same slot
(a retry, a takeover race) is dropped by JetStream. The fence is checked right before every
publish: a replica whose lease may have expired publishes nothing.

Publishes are asynchronous (`publish_async`): a burst of due slots leaves in a few large
writes and their acknowledgements are handled as they come, each bounded by a timeout after
which the slot is published again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import PubAck

from cronbus.scheduler.domain import Due, Fence, Job
from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import RunDispatched, dispatch_msg_id, encode, run_id_for
from cronbus.shared.names import Names
from cronbus.shared.tracing import inject_headers, tracer

log = logging.getLogger(__name__)

_tracer = tracer(__name__)


class Dispatcher:
    """Publishes slots with at most `max_in_flight` publishes awaiting their acks."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        scheduler: str,
        fence: Fence,
        *,
        max_in_flight: int = 1024,
        publish_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._names = names
        self._scheduler = scheduler
        self._fence = fence
        self._room = asyncio.Semaphore(max_in_flight)
        self._publish_timeout = publish_timeout
        self._clock = clock
        # Retries waiting for their backoff.
        self._retries: set[asyncio.Task[None]] = set()
        # (job_id, slot_ms) -> slot_ms of slots taken from the heap whose publish is not confirmed.
        self._unfinished: dict[tuple[str, int], int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.dispatched_total = 0
        self.duplicates = 0
        self.last_lateness_ms = 0.0
        # Set when a slot was given up because the fence closed: this term of primacy is over.
        self.fenced = False

    @property
    def unfinished_slots_ms(self) -> list[int]:
        return list(self._unfinished.values())

    @property
    def in_flight(self) -> int:
        return len(self._unfinished)

    async def submit(self, due: Due, job: Job) -> None:
        """Publish `due`; waits (bounded) only while `max_in_flight` publishes await their acks."""
        if self._room.locked():
            await asyncio.wait_for(self._room.acquire(), timeout=self._publish_timeout * 3)
        else:
            await self._room.acquire()
        self._unfinished[(due.job_id, due.slot_ms)] = due.slot_ms
        self._idle.clear()
        await self._send(due, job, attempt=1)

    def _finish(self, due: Due) -> None:
        if self._unfinished.pop((due.job_id, due.slot_ms), None) is not None:
            self._room.release()
        if not self._unfinished:
            self._idle.set()

    async def _send(self, due: Due, job: Job, attempt: int) -> None:
        if self.fenced or not self._fence.allows(time.monotonic()):
            self.fenced = True
            log.warning("slot %s of job %s not dispatched: lease fenced", due.slot.isoformat(), job.job_id)
            self._finish(due)
            return
        slot = due.slot
        now = self._clock()
        event = RunDispatched(
            run_id=run_id_for(job.job_id, slot),
            job_id=job.job_id,
            slot=slot,
            pool=job.pool,
            spec=job.spec,
            job_revision=job.revision,
            trigger=due.trigger,
            dispatched_at=datetime.fromtimestamp(now, UTC),
            lateness_ms=max(0.0, (now - due.fire_at) * 1000),
            scheduler=self._scheduler,
        )
        try:
            with _tracer.start_as_current_span("scheduler.dispatch"):
                ack = await self._js.publish_async(
                    self._names.dispatch_subject(job.pool, job.job_id),
                    encode(event),
                    headers=inject_headers({MSG_ID: dispatch_msg_id(job.job_id, slot)}),
                )
        except Exception as exc:
            self._failed(due, job, attempt, exc)
            return
        timer = asyncio.get_running_loop().call_later(self._publish_timeout, ack.cancel)
        ack.add_done_callback(lambda f: self._acked(f, timer, due, job, attempt, event.lateness_ms))

    def _acked(
        self,
        ack: asyncio.Future[PubAck],
        timer: asyncio.TimerHandle,
        due: Due,
        job: Job,
        attempt: int,
        lateness_ms: float,
    ) -> None:
        timer.cancel()
        if ack.cancelled():
            self._failed(due, job, attempt, TimeoutError(f"no ack within {self._publish_timeout}s"))
            return
        if (exc := ack.exception()) is not None:
            self._failed(due, job, attempt, exc)
            return
        if ack.result().duplicate:
            self.duplicates += 1
        else:
            self.dispatched_total += 1
            self.last_lateness_ms = lateness_ms
        self._finish(due)

    def _failed(self, due: Due, job: Job, attempt: int, exc: BaseException) -> None:
        """Publish the slot again after a short backoff (the same Nats-Msg-Id: never twice)."""
        log.warning(
            "dispatch of job %s slot %s failed (attempt %d): %r; retrying",
            job.job_id,
            due.slot.isoformat(),
            attempt,
            exc,
        )
        if self.fenced:
            self._finish(due)
            return
        task = asyncio.get_running_loop().create_task(self._retry(due, job, attempt + 1))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, due: Due, job: Job, attempt: int) -> None:
        try:
            await asyncio.sleep(min(1.0, 0.1 * attempt))
            await self._send(due, job, attempt)
        except asyncio.CancelledError:
            self._finish(due)
            raise

    def end_term(self) -> None:
        """This term of primacy is over: publish nothing more, even if a later term reopens the
        fence (its own takeover decides about these slots)."""
        self.fenced = True
        for task in self._retries:
            task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until every publish is acknowledged or given up."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            log.warning("%d dispatches still unconfirmed after %.1fs", len(self._unfinished), timeout)
        self.end_term()
        if self._retries:
            await asyncio.wait(set(self._retries), timeout=1.0)
