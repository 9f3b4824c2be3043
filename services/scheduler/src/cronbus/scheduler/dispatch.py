"""Publishing due slots to DISPATCH: bounded in flight, fenced, idempotent.

Each slot is published with `Nats-Msg-Id = <job_id>:<slot_ms>` (`events.dispatch_msg_id`), so
a repeat of the same slot (a retry, a takeover race) is dropped by JetStream. The term
(`lease.Term`) is asked right before every publish: once the lease may have expired, or the
connection dropped during the term, nothing more goes out.

Publishes are asynchronous and batched (`publish_many`): a burst of due slots leaves in
batches of a few hundred, each one write, and their acknowledgements are handled as they come,
each bounded by a timeout after which the slot is published again. The hot path does as little
per slot as it can: the spec goes out as the JSON bytes the timetable keeps (never decoded and
encoded again), the headers are built as the bytes NATS sends, and the loop yields after every
batch so the connection writes (and the server stores) while the rest are still encoded.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from opentelemetry.context import Context

from cronbus.scheduler.domain import Due, Job, msg_id_of
from cronbus.scheduler.lease import Term
from cronbus.scheduler.publish import Acked, OnAck, Outgoing, header_block
from cronbus.shared import metrics
from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import RunDispatched, scheduled_run_id, utcnow
from cronbus.shared.names import Names
from cronbus.shared.tracing import exporting, inject_headers, new_trace_headers, tracer

log = logging.getLogger(__name__)

_tracer = tracer(__name__)

# Publishes per batch (one write, then a yield to the event loop): enough to amortise the
# switch, few enough that the connection's writer sends the first slots of a burst while the
# rest are encoded.
YIELD_EVERY = 256
# Publishes awaiting their acks at most: a burst of 10,000 slots due together goes out without
# waiting for any (their acks are settled after it, see `publish.SETTLE_WITHIN`); a bigger one
# waits for room. What the window holds per slot is a few hundred bytes.
MAX_IN_FLIGHT = 10_000
# Dispatches prepared ahead of their fire time at most (about a kilobyte each).
MAX_PREPARED = 10_000


def _wire_struct() -> type[msgspec.Struct]:
    """`RunDispatched` with its `spec` as already-encoded JSON (`msgspec.Raw`), derived from the
    event's own fields so the two cannot drift apart: same tag, same names, same defaults."""
    config = RunDispatched.__struct_config__
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(RunDispatched):
        kind = msgspec.Raw if info.name == "spec" else info.type
        if info.default is not msgspec.NODEFAULT:
            fields.append((info.name, kind, info.default))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, kind, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, kind))
    return msgspec.defstruct(
        "RunDispatchedWire",
        fields,
        kw_only=True,
        tag=config.tag,
        tag_field=config.tag_field,
        omit_defaults=config.omit_defaults,
    )


RunDispatchedWire = _wire_struct()
_wire_encoder = msgspec.json.Encoder()


class Publisher(Protocol):
    """What the dispatcher needs from JetStream (`publish.AckedPublisher`): publish a batch of
    (subject, header block, payload), raising when none of it can be sent (e.g. disconnected);
    each message gets a key, and `on_ack` is called once with it when its acknowledgement (or
    error) arrives, unless the key was forgotten first."""

    async def publish_many(self, messages: Sequence[Outgoing], on_ack: OnAck) -> list[str]: ...

    def forget(self, key: str) -> None: ...


def run_id_of(job_id: str, slot_ms: int) -> str:
    """The run id of a scheduled slot: `events.scheduled_run`, where every run identity is made."""
    return scheduled_run_id(job_id, slot_ms)


_UUID4_CLEAR = ~((0xF << 76) | (0x3 << 62))
_UUID4_SET = (4 << 76) | (0x2 << 62)


def event_id() -> str:
    """`events.new_event_id` (a uuid4 as 32 hex digits), cheaper: 122 random bits from the
    process's generator (seeded from the OS), the version and variant bits set as `uuid4`
    sets them."""
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


@functools.lru_cache(maxsize=1024)
def _slot_time(slot_ms: int) -> datetime:
    # The slots of a burst share a few instants: one datetime each.
    return datetime.fromtimestamp(slot_ms / 1000, UTC)


def encode_dispatch(due: Due, job: Job, *, scheduler: str, now: float) -> tuple[bytes, float]:
    """The `RunDispatched` payload of `due` (decoding it gives the same event as building a
    `RunDispatched` would) and its lateness in milliseconds. A dispatch is always the run's
    attempt 1: publishing it again is the same message, not another attempt."""
    lateness_ms = max(0.0, (now - due.fire_at) * 1000)
    dispatched_at = datetime.fromtimestamp(now, UTC)
    event = _wire_event(due, job, scheduler, utcnow(), dispatched_at, lateness_ms)
    return _wire_encoder.encode(event), lateness_ms


def _wire_event(
    due: Due, job: Job, scheduler: str, occurred_at: datetime, dispatched_at: datetime, lateness_ms: float
) -> msgspec.Struct:
    """The `RunDispatched` of `due` for `job` (encode_dispatch's and prepare_dispatch's)."""
    return RunDispatchedWire(
        event_id=event_id(),
        occurred_at=occurred_at,
        run_id=run_id_of(due.job_id, due.slot_ms),
        job_id=due.job_id,
        slot=_slot_time(due.slot_ms),
        attempt=1,
        pool=job.pool,
        spec=msgspec.Raw(job.spec_json),
        job_revision=job.revision,
        trigger=due.trigger,
        dispatched_at=dispatched_at,
        lateness_ms=lateness_ms,
        scheduler=scheduler,
    )


# Stand-ins for the instants and the lateness a prepared dispatch learns only when it is sent.
_PENDING_TIME = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
_PENDING_TIME_JSON = b'"1970-01-01T00:00:00.000001Z"'
_PENDING_LATENESS = 1.5
_PENDING_LATENESS_JSON = b"1.5"


@dataclass(slots=True)
class Prepared:
    """A slot's dispatch encoded ahead of its fire time, for the state `job` of its job: the
    payload around the instants and the lateness that are filled in when it is sent, and its
    header block. Sending it is a join, not an encoding (a burst's slots are prepared while the
    scheduler waits for them)."""

    job: Job
    trigger: str
    fire_at: float
    parts: tuple[bytes, bytes, bytes, bytes]
    headers: bytes

    def payload(self, now: float) -> tuple[bytes, float]:
        """The payload as `encode_dispatch` would encode it at `now` (the same event decoded),
        and the lateness in milliseconds."""
        lateness_ms = max(0.0, (now - self.fire_at) * 1000)
        instant = _json_instant(now)
        before, between, after_dispatched, rest = self.parts
        return b"".join(
            (before, instant, between, instant, after_dispatched, repr(lateness_ms).encode(), rest)
        ), lateness_ms


def _json_instant(now: float) -> bytes:
    """`now` as msgspec encodes an aware UTC datetime (always with microseconds)."""
    text = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
    return b'"' + text[:-6].encode() + b'Z"'


def prepare_dispatch(due: Due, job: Job, *, scheduler: str) -> Prepared:
    """The dispatch of `due` encoded ahead of time (see `Prepared`); its header block too."""
    event = _wire_event(due, job, scheduler, _PENDING_TIME, _PENDING_TIME, _PENDING_LATENESS)
    raw = _wire_encoder.encode(event)
    # Split at the three values, found by their keys: a quoted key cannot occur inside a JSON
    # string (its quotes would be escaped), and only the spec, between occurred_at and
    # dispatched_at, holds keys of its own.
    occurred = raw.index(b'"occurred_at":' + _PENDING_TIME_JSON) + len(b'"occurred_at":')
    dispatched = raw.rindex(b'"dispatched_at":' + _PENDING_TIME_JSON) + len(b'"dispatched_at":')
    lateness = raw.rindex(b'"lateness_ms":' + _PENDING_LATENESS_JSON) + len(b'"lateness_ms":')
    size = len(_PENDING_TIME_JSON)
    parts = (
        raw[:occurred],
        raw[occurred + size : dispatched],
        raw[dispatched + size : lateness],
        raw[lateness + len(_PENDING_LATENESS_JSON) :],
    )
    return Prepared(job, due.trigger, due.fire_at, parts, dispatch_headers(due, job))


@functools.cache
def _dispatched_counter(trigger: str) -> Any:
    """The `dispatched` child of the slots counter for `trigger` (a label lookup per dispatch
    costs as much as the increment; a burst of 10,000 notices)."""
    return metrics.SLOTS.labels("dispatched", trigger)


def run_trace(due: Due, job: Job) -> dict[str, str]:
    """The trace a slot's run starts: one run, one trace (dispatch, its attempts on a runner,
    their projection). A root span is recorded only when spans are exported; otherwise the
    run still gets a trace id of its own, for its events and log lines, without a span object
    (a burst of thousands of slots would pay for them)."""
    if not exporting():
        return new_trace_headers()
    attributes: dict[str, str | int] = {
        "cronbus.job_id": job.job_id,
        "cronbus.slot_ms": due.slot_ms,
        "cronbus.trigger": due.trigger,
    }
    with _tracer.start_as_current_span("scheduler.dispatch", context=Context(), attributes=attributes):
        return inject_headers()


def dispatch_headers(due: Due, job: Job) -> bytes:
    """The header block of a slot's dispatch: its Nats-Msg-Id and the trace its run starts
    (`run_trace`). Built once per slot: publishing the slot again sends the same block. (A job
    id holding a line break cannot get into it: the slot's subject holds the job id too, and
    `publish_many` refuses such a subject.)"""
    msg_id = msg_id_of(due.job_id, due.slot_ms)
    if exporting():
        return header_block({**run_trace(due, job), MSG_ID: msg_id})
    # What `header_block` makes of `run_trace`'s headers, in one format.
    traceparent = new_trace_headers()["traceparent"]
    return f"NATS/1.0\r\ntraceparent: {traceparent}\r\n{MSG_ID}: {msg_id}\r\n\r\n".encode()


class Dispatcher:
    """Publishes the slots of one term with at most `max_in_flight` publishes awaiting their
    acks."""

    def __init__(
        self,
        js: Publisher,
        names: Names,
        scheduler: str,
        term: Term,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        publish_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._names = names
        self._scheduler = scheduler
        self.term = term
        self._max_in_flight = max_in_flight
        # Set when the window has room again (`_wait_for_room` clears it while full).
        self._room = asyncio.Event()
        self._publish_timeout = publish_timeout
        self._clock = clock
        # Retries waiting for their backoff.
        self._retries: set[asyncio.Task[None]] = set()
        # (job_id, slot_ms) -> slot_ms of slots taken from the heap whose publish is not confirmed.
        self._unfinished: dict[tuple[str, int], int] = {}
        # Slots given up unconfirmed (the term ended): the watermark must stay below them, so
        # the next leader decides about them.
        self._abandoned: dict[tuple[str, int], int] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # Publish key -> the slot's publish and when to give up on its ack, in the order sent
        # (so in deadline order). One watchdog sweeps them, instead of a timer per publish (a
        # burst would push 10,000 timers through the loop's heap).
        self._awaiting: dict[str, tuple[Due, Job, int, float, bytes, float]] = {}
        # (job_id, slot_ms) -> the slot's dispatch prepared ahead of its fire time.
        self._prepared: dict[tuple[str, int], Prepared] = {}
        # The slots due by then were looked at for preparing (wall time).
        self.prepared_until = 0.0
        # Dispatches acknowledged and not yet counted in the metrics, by trigger.
        self._uncounted: dict[str, int] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self.dispatched_total = 0
        self.duplicates = 0
        self.last_lateness_ms = 0.0

    @property
    def ended(self) -> bool:
        """This term is over: nothing more is published, slots still owed are given up."""
        return self.term.ended

    @property
    def unfinished_slots_ms(self) -> list[int]:
        """Slots whose publish is not confirmed: still in flight or given up."""
        return [*self._unfinished.values(), *self._abandoned.values()]

    @property
    def abandoned(self) -> int:
        """How many slots this term gave up without a confirmed publish."""
        return len(self._abandoned)

    @property
    def in_flight(self) -> int:
        return len(self._unfinished)

    async def submit_all(self, batch: Sequence[tuple[Due, Job]]) -> None:
        """Publish every slot of `batch` (see `submit`), each the start of its run's trace, in
        batches of YIELD_EVERY with a yield to the loop after each."""
        await self._submit(batch, dispatch_headers, prepared=True)

    async def submit(self, due: Due, job: Job, *, trace: dict[str, str] | None = None) -> None:
        """Publish `due`; waits (bounded) only while `max_in_flight` publishes await their acks.
        `trace`: trace-context headers to send along (default: the current span's)."""
        headers = header_block(
            {**(inject_headers() if trace is None else trace), MSG_ID: msg_id_of(due.job_id, due.slot_ms)}
        )
        await self._submit([(due, job)], lambda _due, _job: headers)

    async def prepare(self, upcoming: Sequence[tuple[Due, Job]], *, until: float, horizon: float) -> int:
        """Encode the dispatches of `upcoming` slots (those due by wall time `horizon`) ahead of
        their fire time (see `Prepared`), stopping at wall time `until` (the first of them is
        due) or at MAX_PREPARED; yields to the loop every YIELD_EVERY. Returns how many it
        prepared."""
        self.prepared_until = max(self.prepared_until, horizon)
        if exporting():
            # Each dispatch's span is recorded when it is sent, not a second before.
            return 0
        prepared = self._prepared
        stale = time.time() - 60
        for key in [key for key, p in prepared.items() if p.fire_at < stale]:
            # Never sent (the job changed, a takeover re-planned it): the slot is encoded anew.
            del prepared[key]
        done = 0
        for due, job in upcoming:
            if len(prepared) >= MAX_PREPARED or time.time() >= until:
                break
            key = (due.job_id, due.slot_ms)
            if key in prepared:
                continue
            prepared[key] = prepare_dispatch(due, job, scheduler=self._scheduler)
            done += 1
            if done % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        if done:
            log.debug("%d dispatches prepared ahead (%d of %d looked at)", done, len(prepared), len(upcoming))
        return done

    async def _submit(
        self,
        batch: Sequence[tuple[Due, Job]],
        headers_of: Callable[[Due, Job], bytes],
        *,
        prepared: bool = False,
    ) -> None:
        """Take each slot into the window and publish it, a batch at a time. A slot is in the
        window (`_unfinished`) from here until its publish is confirmed or given up; once the
        term ends (or the window stays full, or this is cancelled), the slots not taken are
        given up too: the watermark stays below them and the next term decides about them."""
        chunk: list[tuple[Due, Job, int, bytes, Prepared | None]] = []
        ready = self._prepared if prepared else {}
        taken = 0
        try:
            for due, job in batch:
                if self.term.ended:
                    break
                if len(self._unfinished) >= self._max_in_flight:
                    await self._send_many(chunk)
                    chunk = []
                    await self._wait_for_room()
                self._unfinished[(due.job_id, due.slot_ms)] = due.slot_ms
                self._idle.clear()
                taken += 1
                prep = ready.pop((due.job_id, due.slot_ms), None) if ready else None
                if prep is not None and prep.job is job and prep.trigger == due.trigger:
                    chunk.append((due, job, 1, prep.headers, prep))
                else:
                    # Not prepared, or for another state of the job: encoded now.
                    chunk.append((due, job, 1, headers_of(due, job), None))
                if len(chunk) >= YIELD_EVERY:
                    await self._send_many(chunk)
                    chunk = []
                    await asyncio.sleep(0)
            await self._send_many(chunk)
            chunk = []
        finally:
            for due, *_ in chunk:
                self._finish(due, abandoned=True)
            for due, _ in batch[taken:]:
                self._abandoned[(due.job_id, due.slot_ms)] = due.slot_ms
            if not self._unfinished:
                self._idle.set()
            if left := len(chunk) + len(batch) - taken:
                log.warning("%d due slots left to the next term: %s", left, self.term.why or "not sent")

    async def _wait_for_room(self) -> None:
        self._room.clear()
        while len(self._unfinished) >= self._max_in_flight:
            await asyncio.wait_for(self._room.wait(), timeout=self._publish_timeout * 3)
            self._room.clear()

    def _room_freed(self) -> None:
        if len(self._unfinished) < self._max_in_flight:
            self._room.set()
        if not self._unfinished:
            self._idle.set()

    def _finish(self, due: Due, *, abandoned: bool = False) -> None:
        """The slot leaves the window: published, or (`abandoned`) given up unconfirmed."""
        key = (due.job_id, due.slot_ms)
        if self._unfinished.pop(key, None) is not None:
            if abandoned:
                self._abandoned[key] = due.slot_ms
            self._room_freed()

    async def _send_many(self, slots: Sequence[tuple[Due, Job, int, bytes, Prepared | None]]) -> None:
        """Publish `slots` (each taken into the window, with its header block) in one batch,
        if the term allows it both before they are encoded and right before they go out."""
        if not slots or not self._may_publish(slots):
            return
        messages: list[Outgoing] = []
        sent: list[tuple[Due, Job, int, float, bytes]] = []
        for due, job, attempt, headers, prep in slots:
            # `attempt` counts publishes of this message (for the log and the backoff); the
            # run's own attempt is 1 in every one of them.
            if prep is not None:
                payload, lateness_ms = prep.payload(self._clock())
            else:
                payload, lateness_ms = encode_dispatch(due, job, scheduler=self._scheduler, now=self._clock())
            messages.append((self._names.dispatch_subject(job.pool, job.job_id), headers, payload))
            sent.append((due, job, attempt, lateness_ms, headers))
        if not self._may_publish(slots):
            # The term ended while the batch was encoded.
            return
        try:
            keys = await self._js.publish_many(messages, self._acked)
        except Exception as exc:
            for due, job, attempt, _, headers in sent:
                self._failed(due, job, attempt, exc, headers)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        awaiting = self._awaiting
        for key, (due, job, attempt, lateness_ms, headers) in zip(keys, sent, strict=True):
            awaiting[key] = (due, job, attempt, lateness_ms, headers, deadline)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._publish_timeout / 4, self._give_up_late_acks)

    def _may_publish(self, slots: Sequence[tuple[Due, Job, int, bytes, Prepared | None]]) -> bool:
        """Whether the term allows publishing now; if not, `slots` are given up."""
        if self.term.may_publish(time.monotonic()):
            return True
        log.warning("%d slots left to the next term: %s", len(slots), self.term.why)
        for due, *_ in slots:
            self._finish(due, abandoned=True)
        return False

    def _give_up_late_acks(self) -> None:
        """Give up on the acks awaited past their deadline (their slots are published again)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = []
        for key, entry in self._awaiting.items():
            if entry[-1] > now:
                break
            late.append(key)
        for key in late:
            due, job, attempt, _, headers, _ = self._awaiting.pop(key)
            self._js.forget(key)
            self._failed(due, job, attempt, TimeoutError(f"no ack within {self._publish_timeout}s"), headers)
        self._watchdog = (
            loop.call_later(self._publish_timeout / 4, self._give_up_late_acks) if self._awaiting else None
        )

    def _acked(self, key: str, outcome: Acked | BaseException) -> None:
        entry = self._awaiting.pop(key, None)
        if entry is None:
            # Given up on already (and published again).
            return
        due, job, attempt, lateness_ms, headers, _ = entry
        if isinstance(outcome, BaseException):
            self._failed(due, job, attempt, outcome, headers)
            return
        if outcome.duplicate:
            self.duplicates += 1
        else:
            self.dispatched_total += 1
            self.last_lateness_ms = lateness_ms
            metrics.DISPATCH_LATENESS.observe(lateness_ms / 1000)
            if not self._uncounted:
                asyncio.get_running_loop().call_soon(self._count_dispatched)
            self._uncounted[due.trigger] = self._uncounted.get(due.trigger, 0) + 1
        self._finish(due)

    def _count_dispatched(self) -> None:
        """Add the dispatches acknowledged since the last call to the slots counter (once per
        settlement of acks, not per dispatch)."""
        uncounted, self._uncounted = self._uncounted, {}
        for trigger, n in uncounted.items():
            _dispatched_counter(trigger).inc(n)

    def _failed(self, due: Due, job: Job, attempt: int, exc: BaseException, headers: bytes) -> None:
        """Publish the slot again after a short backoff (the same Nats-Msg-Id: never twice)."""
        log.warning(
            "dispatch of job %s slot %s failed (attempt %d): %r; retrying",
            job.job_id,
            due.slot.isoformat(),
            attempt,
            exc,
        )
        if self.term.ended:
            self._finish(due, abandoned=True)
            return
        task = asyncio.get_running_loop().create_task(self._retry(due, job, attempt + 1, headers))
        self._retries.add(task)
        task.add_done_callback(lambda done: self._retry_done(done, due))

    async def _retry(self, due: Due, job: Job, attempt: int, headers: bytes) -> None:
        await asyncio.sleep(min(1.0, 0.1 * attempt))
        await self._send_many([(due, job, attempt, headers, None)])

    def _retry_done(self, task: asyncio.Task[None], due: Due) -> None:
        """A retry cancelled by the end of the term gives its slot up. Done here, not in the
        retry itself: a task cancelled before it first ran never runs its own code."""
        self._retries.discard(task)
        if task.cancelled():
            self._finish(due, abandoned=True)

    def end_term(self, why: str = "stepped down") -> None:
        """This term of primacy is over: publish nothing more, even if the lease outlives it
        (the next term's takeover decides about these slots)."""
        self.term.end(why)
        for task in self._retries:
            task.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until every publish is acknowledged or given up."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            log.warning("%d dispatches still unconfirmed after %.1fs", len(self._unfinished), timeout)
        self.end_term("stopping")
        if self._retries:
            await asyncio.wait(set(self._retries), timeout=1.0)
