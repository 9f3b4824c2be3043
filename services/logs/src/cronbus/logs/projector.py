"""One stream into the history: a durable pull consumer, batches, one transaction, then acks.

The position committed with the rows (`projector_positions`) is the truth; the consumer's
own acknowledgement state is only a cache of it. Whenever the projector (re)binds -- at
start, after a reconnect, after a fetch error, when the consumer has vanished, or when a
delivery went missing -- it recreates the consumer to deliver from `position + 1`.
Deliveries then arrive in stream order, which is what makes "skip what is at or below the
position" safe: a message handed out but lost on a dropped connection is delivered again,
before anything after it. A lost delivery shows as a gap in the consumer's delivery
sequence, and a consumer that starts or resumes past the position shows as a stream
sequence beyond `position + 1` whose predecessors are still stored; every batch is checked
for both.

The consumer acknowledges cumulatively (`AckPolicy.ALL`): once a batch is committed, one ack
of its last message covers the whole batch.

An event that can never be applied (see `poison`) is recorded in `rejected_events` and the
position moves past it; the batch around it is written event by event so the rest of it
still applies. Its ack is the batch's: it is never delivered again.

One logs instance per prefix: two would recreate each other's consumers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace

from cronbus.logs.poison import Decoded, Rejection, describe, is_poison, read_message
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared import metrics
from cronbus.shared.events import (
    AnyEvent,
    decode_audit,
    decode_dispatch,
    decode_job_event,
    decode_log_chunk,
    decode_run_event,
)
from cronbus.shared.names import Names
from cronbus.shared.runtime import brief, stopped_within
from cronbus.shared.tracing import exporting, extract_context, tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Feed:
    """A stream the history is projected from, and how to read its messages."""

    kind: str
    stream: str
    subjects: str
    decode: Callable[[bytes], AnyEvent]

    @property
    def consumer(self) -> str:
        return Names.logs_consumer(self.kind)


def feeds(names: Names) -> list[Feed]:
    """The streams the logs service projects, one durable consumer each."""
    return [
        Feed("jobs", names.jobs_stream, names.jobs_all, decode_job_event),
        Feed("dispatch", names.dispatch_stream, names.dispatch_all, decode_dispatch),
        Feed("runs", names.runs_stream, names.runs_all, decode_run_event),
        Feed("logs", names.logs_stream, names.logs_all, decode_log_chunk),
        Feed("audit", names.audit_stream, names.audit_all, decode_audit),
    ]


@dataclass(frozen=True, slots=True)
class Pacing:
    """Batch size, waits and the bounded backoff a projector uses."""

    # Each batch costs a transaction, a position read and write and a pull request whatever
    # its size; at 1024 those are a small share of the work even for runs of one line.
    batch: int = 1024
    # LOGS messages carry up to 64 KiB of output each (the runner's chunk size), so that feed
    # takes smaller batches: 256 of them hold at most 16 MiB.
    output_batch: int = 256
    fetch_timeout: float = 1.0
    # How long a batch that is not full waits for more: under a steady trickle (a busy
    # system's runs finishing one by one) batches grow from a handful of events to hundreds,
    # and the history is at most this much later.
    linger: float = 0.05
    # Redelivery is only a safety net (the projector re-binds from its position), so the
    # wait is long enough that a slow transaction is never delivered twice meanwhile.
    ack_wait: float = 60.0
    backoff_first: float = 0.1
    backoff_max: float = 5.0
    # The longest a (re)bind may take before it is given up and tried again.
    bind_timeout: float = 20.0
    # Idle fetches between checks that the consumer still exists.
    idle_checks_every: int = 5

    def backoff(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_first * 2 ** max(0, failures - 1))

    def batch_for(self, kind: str) -> int:
        """The most messages one batch of the feed `kind` holds."""
        return min(self.batch, self.output_batch) if kind == "logs" else self.batch


class Projector:
    """Projects one feed until `stopping` is set; never raises for NATS or database trouble."""

    def __init__(
        self, feed: Feed, nc: NATS, js: JetStreamContext, writer: HistoryWriter,
        reconnects: Callable[[], int], pacing: Pacing | None = None,
    ) -> None:  # fmt: skip
        self.feed = feed
        self.nc = nc
        self.js = js
        self.writer = writer
        self.pacing = pacing or Pacing()
        self._batch = self.pacing.batch_for(feed.kind)
        self._reconnects = reconnects
        self._bound_at_reconnects = -1
        # The consumer's delivery sequence of the last message received since binding.
        self._delivered = 0
        # The stream sequence the next message must have: the position + 1 at binding, then
        # one past the last message received.
        self._next_seq = 1
        self._pull: Pull | None = None
        # Set when the consumer must be recreated from the position before the next fetch.
        self._stale = True
        self._tracer = tracer(__name__)
        # Counters for operators and tests: events written, and consumer (re)creations.
        self.applied = 0
        self.binds = 0
        # Messages set aside as poison (recorded in rejected_events) since start.
        self.rejected = 0
        # Set once the first bind succeeded: the service is ready when all projectors are.
        self.bound = asyncio.Event()

    async def bind(self) -> None:
        """(Re)create the durable consumer from the stored position and subscribe to it."""
        await self._unsubscribe()
        reconnects = self._reconnects()
        position = await self.writer.position(self.feed.consumer)
        try:
            await self.js.delete_consumer(self.feed.stream, self.feed.consumer)
        except NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=self.feed.consumer,
            description=f"cronbus logs: projects {self.feed.stream} into the SQL history",
            ack_policy=AckPolicy.ALL,
            ack_wait=self.pacing.ack_wait,
            max_deliver=-1,
            max_ack_pending=self._batch * 4,
            filter_subject=self.feed.subjects,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if position else DeliverPolicy.ALL,
            opt_start_seq=position + 1 if position else None,
        )
        await self.js.add_consumer(self.feed.stream, config)
        self._pull = await Pull.start(self.nc, self.feed.stream, self.feed.consumer)
        self._stale = False
        self._bound_at_reconnects = reconnects
        self._delivered = 0
        self._next_seq = position + 1
        self.binds += 1
        self.bound.set()
        log.info("%s: projecting %s from sequence %d", self.feed.consumer, self.feed.stream, position + 1)

    async def run(self, stopping: asyncio.Event) -> None:
        failures = 0
        idle = 0
        while not stopping.is_set():
            try:
                if self._stale or self._pull is None or self._bound_at_reconnects != self._reconnects():
                    # Each step has its own timeout, but an unsubscribe or subscribe can wait on a
                    # connection that is going away; a bind that hangs is tried again instead.
                    async with asyncio.timeout(self.pacing.bind_timeout):
                        await self.bind()
                assert self._pull is not None
                msgs = await self._pull.fetch(
                    self._batch, timeout=self.pacing.fetch_timeout, linger=self.pacing.linger
                )
                if not msgs:
                    failures = 0
                    idle += 1
                    if idle % self.pacing.idle_checks_every == 0:
                        await self._check_consumer()
                    continue
                if not self._contiguous(msgs) or not await self._in_stream_order(msgs):
                    self._stale = True
                    continue
                idle = 0
                await self._project(msgs, stopping)
                failures = 0
            except Exception as exc:
                failures += 1
                delay = self.pacing.backoff(failures)
                log.warning("%s: %s; binding again in %.1fs", self.feed.consumer, brief(exc), delay)
                self._stale = True
                await stopped_within(stopping, delay)
        await self._unsubscribe()

    def _contiguous(self, msgs: Sequence[Delivery]) -> bool:
        """Whether `msgs` follow the last delivery without a gap, and no reconnect came between.

        Otherwise something was delivered and lost (a dropped connection, a dropped slow
        consumer); applying what came after it would move the position past it for good.
        """
        if self._bound_at_reconnects != self._reconnects():
            log.info(
                "%s: reconnected during a fetch; binding again from the stored position", self.feed.consumer
            )
            return False
        for msg in msgs:
            delivered = msg.delivered
            if delivered != self._delivered + 1:
                log.warning(
                    "%s: delivery %d came after %d, so one went missing; binding again from the position",
                    self.feed.consumer, delivered, self._delivered,
                )  # fmt: skip
                return False
            self._delivered = delivered
        return True

    async def _in_stream_order(self, msgs: Sequence[Delivery]) -> bool:
        """Whether `msgs` continue the stream where the last one left off (or repeat what came
        before, which the position skips).

        The consumer's delivery sequence says nothing was lost *since* it was created; this
        says it also started, and goes on, where the position says. A consumer that starts
        or resumes past the position (recreated by someone else, its state restored ahead of
        what reached this client after a leader change, a second logs instance sharing it)
        would otherwise move the position over events that were never applied.
        """
        for msg in msgs:
            seq = msg.seq
            if seq < self._next_seq:
                continue
            if seq > self._next_seq and not await self._gone(self._next_seq, seq):
                log.warning(
                    "%s: %s seq %d was delivered while seq %d is still in the stream and not applied; "
                    "binding again from the position",
                    self.feed.consumer, self.feed.stream, seq, self._next_seq,
                )  # fmt: skip
                return False
            self._next_seq = seq + 1
        return True

    async def _gone(self, first: int, seq: int) -> bool:
        """Whether no message of the feed is stored from `first` up to (excluding) `seq`: they
        expired, were discarded for size, or were deleted."""
        try:
            found = await self.js.get_msg(self.feed.stream, seq=first, subject=self.feed.subjects, next=True)
        except NotFoundError:
            return True
        return found.seq is None or found.seq >= seq

    async def _check_consumer(self) -> None:
        """While idle: bind again if the consumer is gone, or if it says it delivered more than
        arrived here. The second is a lost *tail*, which leaves no gap to see: deliveries the
        consumer's leader sent (or, after a leader change, counted as sent) that never reached
        this client. The consumer waits `ack_wait` before sending them again; the position does
        not wait."""
        try:
            info = await self.js.consumer_info(self.feed.stream, self.feed.consumer)
        except NotFoundError:
            log.warning("%s: the consumer is gone; creating it again from the stored position",
                        self.feed.consumer)  # fmt: skip
            self._stale = True
            return
        delivered = info.delivered.consumer_seq if info.delivered is not None else None
        arrived = self._delivered + (self._pull.buffered if self._pull is not None else 0)
        if delivered is not None and delivered > arrived:
            log.warning(
                "%s: the consumer delivered up to %d but %d arrived; binding again from the position",
                self.feed.consumer, delivered, arrived,
            )  # fmt: skip
            self._stale = True

    async def _project(self, msgs: Sequence[Delivery], stopping: asyncio.Event) -> None:
        """Apply one fetched batch until it is durable, then ack it (poison set aside included:
        it is recorded, and the position has moved past it)."""
        batch = [(msg, self._read(msg)) for msg in sorted(msgs, key=lambda m: m.seq)]
        first_seq, last_seq = batch[0][0].seq, batch[-1][0].seq
        failures = 0
        while True:
            try:
                with self._tracer.start_as_current_span(
                    f"logs.project {self.feed.kind}",
                    links=_links(msgs) if exporting() else None,
                    attributes={
                        "messaging.batch.message_count": len(msgs),
                        "cronbus.consumer": self.feed.consumer,
                    },
                ):
                    began = time.monotonic()
                    set_aside = await self._write(batch)
                    metrics.PROJECTION_BATCH.labels(self.feed.stream).observe(time.monotonic() - began)
                break
            except Exception as exc:
                failures += 1
                if stopping.is_set():
                    log.warning(
                        "%s: stopping with seq %d-%d not written (%s); they are delivered again next time",
                        self.feed.consumer, first_seq, last_seq, brief(exc),
                    )  # fmt: skip
                    self._stale = True
                    return
                delay = self.pacing.backoff(failures)
                log.warning(
                    "%s: cannot write seq %d-%d to the history (%s); retrying in %.1fs",
                    self.feed.consumer, first_seq, last_seq, brief(exc), delay,
                )  # fmt: skip
                await _keep_in_flight(msgs)
                await stopped_within(stopping, delay)
        metrics.PROJECTION_EVENTS.labels(self.feed.stream).inc(len(batch) - len(set_aside))
        metrics.PROJECTION_REJECTED.labels(self.feed.stream).inc(len(set_aside))
        # What the stream holds beyond this batch: the projection's lag, in events.
        pending = batch[-1][0].pending
        metrics.PROJECTION_LAG.labels(self.feed.stream).set(pending)
        metrics.CONSUMER_PENDING.labels(self.feed.stream, self.feed.consumer).set(pending)
        # AckPolicy.ALL: acking the last delivery acknowledges every one before it.
        last = max(msgs, key=lambda m: m.delivered)
        try:
            await last.msg.ack()
        except Exception as exc:
            # Already durable: a lost ack only means a redelivery, which is skipped.
            log.info("%s: ack up to seq %d failed: %s", self.feed.consumer, last_seq, exc)

    def _read(self, msg: Delivery) -> Decoded:
        decoded = read_message(self.feed.decode, self.feed.stream, msg.seq, msg.msg.subject, msg.msg.data)
        if decoded.rejection is not None:
            self._log_rejection(decoded.rejection)
        return decoded

    def _log_rejection(self, rejection: Rejection) -> None:
        if rejection.sanitized:
            log.warning(
                "%s: %s seq %d (subject %s): %s", self.feed.consumer, rejection.stream, rejection.seq,
                rejection.subject, rejection.reason,
            )  # fmt: skip
            return
        log.error(
            "%s: setting aside %s seq %d (subject %s), which can never be applied: %s",
            self.feed.consumer, rejection.stream, rejection.seq, rejection.subject, rejection.reason,
        )  # fmt: skip

    async def _write(self, batch: Sequence[tuple[Delivery, Decoded]]) -> set[int]:
        """Write the batch in one transaction; if the data of some event makes that fail, write
        it event by event so only the poison events are set aside. Transient errors raise.
        The stream sequences set aside are returned."""
        result = await write_batch(
            self.writer,
            self.feed.consumer,
            self.feed.stream,
            [(msg.seq, msg.msg.subject, msg.msg.data, decoded) for msg, decoded in batch],
        )
        self.applied += result.applied
        for rejection in result.poisoned:
            self._log_rejection(rejection)
        self.rejected += len(result.set_aside)
        return result.set_aside

    async def _unsubscribe(self) -> None:
        pull, self._pull = self._pull, None
        if pull is None:
            return
        try:
            await pull.stop()
        except Exception as exc:
            log.debug("%s: unsubscribe failed: %s", self.feed.consumer, exc)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message of a pull consumer, with its place read from the reply subject once."""

    msg: Msg
    # The stream sequence, the consumer's delivery sequence, and what the stream holds for
    # the consumer beyond this message.
    seq: int
    delivered: int
    pending: int

    @classmethod
    def of(cls, msg: Msg) -> Delivery:
        """Raises ValueError if `msg` is not a JetStream delivery."""
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<delivery seq>.<time>.<pending>;
        # newer servers put <domain>.<account hash> after ACK and a token at the end.
        tokens = (msg.reply or "").split(".")
        if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
            raise ValueError(f"not a JetStream reply subject: {msg.reply!r}")
        i = 2 if len(tokens) == 9 else 4
        return cls(msg, int(tokens[i + 3]), int(tokens[i + 4]), int(tokens[i + 6]))


class PullRefused(Exception):
    """The server answered a pull request with an error status (not "no messages yet")."""


class Pull:
    """Batches from a durable pull consumer, collected by a subscription callback.

    nats-py's `PullSubscription.fetch` hands a batch over one message at a time, each through
    its own `asyncio.wait_for` (a task and a timer); at thousands of events a second that
    bookkeeping costs as much as writing them. Here a pull request asks for a batch and the
    reply inbox's callback appends what arrives to a list: a fetch returns when the batch is
    full, when the server says there is nothing more for now (status 404 or 408), or when
    its time is up. Whatever arrives after a fetch returned is kept, in delivery order, for
    the next one.
    """

    # Statuses that end a pull request without an error: no messages (no_wait), the request
    # expired, and 409 (consumer deleted, leadership change, too many waiting requests):
    # the projector's own checks notice a deleted consumer.
    _ENDED = frozenset({"404", "408", "409"})
    # Heartbeats are not requested; one is ignored if it comes.
    _HEARTBEAT = "100"
    # How much earlier than the fetch's own deadline a lingering request expires, so the
    # server's 408 normally ends it instead of the client's timer.
    _EXPIRES_EARLY = 0.05

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._received: list[Delivery] = []
        # The fetch in progress is answered once `_received` holds `_wanted` or `_ended` is set.
        self._wanted = 0
        self._ended = False
        self._refused: str | None = None
        self._answered = asyncio.Event()

    @classmethod
    async def start(cls, nc: NATS, stream: str, consumer: str) -> Pull:
        pull = cls(nc, stream, consumer)
        pull._sub = await nc.subscribe(pull._inbox, cb=pull._receive)
        return pull

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    @property
    def buffered(self) -> int:
        """Deliveries received and not fetched yet."""
        return len(self._received)

    async def fetch(self, batch: int, timeout: float, linger: float = 0.0) -> list[Delivery]:
        """Up to `batch` messages in delivery order; none if nothing came within `timeout`.
        When fewer than `batch` are there at once, up to `linger` seconds more are given to
        the rest (bigger batches when events trickle in: each costs a transaction)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if len(self._received) < batch:
            # What the consumer has now, at once, ended by a 404/408 when it runs out.
            await self._request({"batch": batch - len(self._received), "no_wait": True}, batch, deadline)
        if self._received and len(self._received) < batch and linger > 0:
            # The server ends the request after `linger` (408); the client's own timer is
            # the backstop, and what arrives after it is kept for the next fetch.
            request: dict[str, object] = {"batch": batch - len(self._received), "expires": int(linger * 1e9)}
            await self._request(request, batch, loop.time() + linger + self._EXPIRES_EARLY)
        if not self._received:
            # Nothing now: wait for the next message. A request for one is over once it is
            # answered, so none is left waiting on the server to take what follows (the next
            # fetch asks for that at once).
            expires = deadline - loop.time() - self._EXPIRES_EARLY
            if expires > 0:
                await self._request({"batch": 1, "expires": int(expires * 1e9)}, 1, deadline)
        if self._refused is not None and not self._received:
            refused, self._refused = self._refused, None
            raise PullRefused(refused)
        taken, self._received = self._received[:batch], self._received[batch:]
        return taken

    async def _request(self, request: dict[str, object], wanted: int, deadline: float) -> None:
        self._wanted = wanted
        self._ended = False
        self._answered.clear()
        await self._nc.publish(self._next, msgspec.json.encode(request), reply=self._inbox)
        remaining = deadline - asyncio.get_running_loop().time()
        if self._ended or len(self._received) >= wanted or remaining <= 0:
            return
        try:
            await asyncio.wait_for(self._answered.wait(), remaining)
        except TimeoutError:
            pass  # what came so far is the answer

    async def _receive(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            try:
                self._received.append(Delivery.of(msg))
            except ValueError:
                # Not a JetStream delivery; the gap it leaves in the delivery sequence (if it
                # was one) makes the projector bind again.
                log.warning("pull %s: a message without a JetStream reply subject: %r", self._next, msg.reply)
                return
            if len(self._received) >= self._wanted:
                self._answered.set()
            return
        if status == self._HEARTBEAT:
            return
        if status not in self._ENDED:
            self._refused = f"{status} {msg.headers.get('Description', '') if msg.headers else ''}".strip()
        self._ended = True
        self._answered.set()


@dataclass(frozen=True, slots=True)
class Written:
    """What `write_batch` did: events applied, stream sequences set aside, and the rejections
    that only writing revealed (the database refused their values)."""

    applied: int
    set_aside: set[int]
    poisoned: list[Rejection]


async def write_batch(
    writer: HistoryWriter, consumer: str, stream: str, batch: Sequence[tuple[int, str, bytes, Decoded]]
) -> Written:
    """Apply `batch` (stream sequence, subject, raw data, decoded; in stream order) of `stream`
    for `consumer`, setting poison events aside. Raises on transient trouble, having written
    nothing or a prefix of the batch (which a retry skips by the position)."""
    events = [Sequenced(seq, d.event) for seq, _, _, d in batch if d.event is not None]
    rejections = [d.rejection for *_, d in batch if d.rejection is not None]
    set_aside = {r.seq for r in rejections if not r.sanitized}
    try:
        applied = await writer.apply(consumer, events, batch[-1][0], rejections)
        return Written(applied, set_aside, [])
    except Exception as exc:
        if not is_poison(exc):
            raise
        log.warning(
            "%s: seq %d-%d cannot be written together (%s); writing them one by one",
            consumer, batch[0][0], batch[-1][0], describe(exc),
        )  # fmt: skip
    applied = 0
    poisoned: list[Rejection] = []
    for seq, subject, data, decoded in batch:
        if decoded.event is None:
            assert decoded.rejection is not None
            await writer.reject(consumer, decoded.rejection)
            continue
        extra = [decoded.rejection] if decoded.rejection is not None else []
        try:
            applied += await writer.apply(consumer, [Sequenced(seq, decoded.event)], seq, extra)
        except Exception as exc:
            if not is_poison(exc):
                raise
            rejection = Rejection(stream, seq, subject, f"cannot be written: {describe(exc)}", data)
            await writer.reject(consumer, rejection)
            poisoned.append(rejection)
            set_aside.add(seq)
    return Written(applied, set_aside, poisoned)


async def _keep_in_flight(msgs: Sequence[Delivery]) -> None:
    """Tell the server the batch is still being worked on, so it is not redelivered meanwhile."""
    for msg in msgs:
        try:
            await msg.msg.in_progress()
        except Exception:
            # NATS is away too; the batch is re-bound from the position if it comes to that.
            return


def _links(msgs: Sequence[Delivery]) -> list[trace.Link]:
    """A link to the trace of every message that carries one (a batch has many parents)."""
    links = []
    for delivery in msgs:
        if not delivery.msg.headers:
            continue
        ctx = trace.get_current_span(extract_context(delivery.msg.headers)).get_span_context()
        if ctx.is_valid:
            links.append(trace.Link(ctx))
    return links
