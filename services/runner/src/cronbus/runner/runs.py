"""One dispatch message, from delivery to ack: check history, admit, execute, report.

Order matters for the promises in DESIGN.md: `RunStarted` is stored before the work starts,
`RunFinished` is stored before the message is acked (or nak'ed for a retry), and a delivery
whose run already has a final outcome is acked without running anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError
from opentelemetry import context as otel_context
from prometheus_client import Counter

from cronbus.runner.attempts import HANDED_BACK, DeliveryPlan, after_attempt, needs_history, plan_delivery
from cronbus.runner.environment import RunIdentity, job_environment, parse_passthrough
from cronbus.runner.executors import HttpClient, RunControl, execution_for
from cronbus.runner.output import Chunk, Chunker, LiveOutput
from cronbus.runner.overlap import Holder, RunningRecords
from cronbus.runner.processes import Reaper
from cronbus.runner.streams import WRONG_LAST_SEQUENCE, StreamClient, StreamError
from cronbus.shared import metrics
from cronbus.shared.bus import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID
from cronbus.shared.events import (
    Event,
    LogChunk,
    MalformedEvent,
    OutputPart,
    RunDispatched,
    RunEvents,
    RunFinished,
    RunStarted,
    ShellExecutor,
    decode_dispatch,
    decode_run_event,
    decode_run_identity,
    encode,
    utcnow,
)
from cronbus.shared.secrets import secret_values
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import exporting, extract_context, inject_headers, tracer

log = logging.getLogger(__name__)

# How often a run waiting behind another (overlap policy `queue`) looks again.
QUEUE_POLL = 0.25
# Publishes are retried for max(ack_wait, this) seconds, long enough to ride out a NATS restart.
PUBLISH_PATIENCE_FLOOR = 10.0
# A run has a handful of events per attempt; this only bounds a corrupted history.
MAX_RUN_EVENTS = 10_000
# How long pipelined publishes wait for their PubAcks before the missing ones are published again.
PUBACK_TIMEOUT = 5.0


# The trace context of the run the current task handles: every event it publishes carries it.
_run_trace: ContextVar[dict[str, str] | None] = ContextVar("cronbus_run_trace", default=None)
_TRACE_HEADERS = ("traceparent", "tracestate")


# The version (4) and variant bits of a random UUID.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def event_id() -> str:
    """A random event id of the same form as `new_event_id()`'s (a version-4 UUID's hex), from
    the process's random generator: `uuid4()` asks the OS for every one, twice per run."""
    return f"{(random.getrandbits(128) & _UUID4_CLEAR) | _UUID4_SET:032x}"


def _trace_headers(msg_id: str | None) -> dict[str, str]:
    """Headers of an event: its `Nats-Msg-Id` and the run's trace context."""
    headers = dict(_run_trace.get() or ())
    if msg_id:
        headers[MSG_ID] = msg_id
    return headers


def started_msg_id(run_id: str, attempt: int) -> str:
    """The `Nats-Msg-Id` of an attempt's `run.started`."""
    return f"{run_id}:{attempt}:started"


def finished_msg_id(run_id: str, attempt: int) -> str:
    """The `Nats-Msg-Id` of an attempt's `run.finished`: one outcome per attempt is stored."""
    return f"{run_id}:{attempt}:finished"


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    event: Event
    msg_id: str


class EventPublisher:
    """Publishes to JetStream and waits for the PubAck, retrying through a NATS restart."""

    def __init__(self, js: JetStreamContext, streams: StreamClient, *, patience: float) -> None:
        self.js = js
        self.streams = streams
        self.patience = patience

    async def publish(
        self,
        subject: str,
        event: Event,
        msg_id: str | None = None,
        *,
        persist: Callable[[], bool] | None = None,
    ) -> None:
        """Publish and wait for the PubAck, retrying for `patience` seconds.

        With `persist`, retries go on past the patience for as long as `persist()` is true.
        """
        headers = _trace_headers(msg_id)
        payload = encode(event)
        began = asyncio.get_running_loop().time()
        try:
            # The first try goes straight to the client: nearly every publish needs no other.
            await self.streams.publish(subject, payload, headers)
            return
        except Exception as exc:
            failure = exc
        await self._retrying(
            lambda: self.streams.publish(subject, payload, headers),
            f"publish {subject}",
            persist,
            began=began,
            failure=failure,
        )

    async def publish_first(self, subject: str, event: Event, msg_id: str) -> bool:
        """Store `event` only as `subject`'s first message, in one try: True when it was.

        False when the subject already has messages, when a message with `msg_id` was
        stored before (perhaps by this very call, its PubAck lost on the way) or when the try
        failed: the caller then reads the subject and decides as it would have without this.
        """
        headers = _trace_headers(msg_id)
        headers[EXPECTED_LAST_SUBJECT_SEQ] = "0"
        try:
            ack = await self.streams.publish(subject, encode(event), headers)
        except StreamError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                log.warning("storing the first event of %s failed: %s", subject, exc)
            return False
        except Exception as exc:
            log.warning("storing the first event of %s failed: %r", subject, exc)
            return False
        return not ack.duplicate

    async def publish_all(self, messages: Sequence[Outgoing]) -> None:
        """Publish in order, then wait for all the PubAcks at once instead of each in turn.

        When any fails, the messages from the first failed one on are published again one by
        one, with retries; their `Nats-Msg-Id` makes a second copy of a stored one harmless.
        """
        if len(messages) == 1:
            [one] = messages
            await self.publish(one.subject, one.event, one.msg_id)
            return
        acks: list[asyncio.Future[PubAck]] = []
        failed_at = len(messages)
        try:
            for message in messages:
                headers = _trace_headers(message.msg_id)
                acks.append(
                    await self.js.publish_async(message.subject, encode(message.event), headers=headers)
                )
        except Exception as exc:
            log.warning("pipelined publish failed (%s); publishing one by one", exc or type(exc).__name__)
            failed_at = len(acks)
        if acks:
            results = await _gather_within(acks, PUBACK_TIMEOUT)
            failed_at = next((i for i, r in enumerate(results) if isinstance(r, BaseException)), failed_at)
        for message in messages[failed_at:]:
            await self.publish(message.subject, message.event, message.msg_id)

    async def last_run_event(self, stream: str, subject: str) -> RunEvents | None:
        began = asyncio.get_running_loop().time()
        data: object
        try:
            data = await self.streams.last_message(stream, subject)
        except Exception as exc:
            data = await self._retrying(
                lambda: self.streams.last_message(stream, subject),
                f"read {subject}",
                began=began,
                failure=exc,
            )
        if data is None:
            return None
        assert isinstance(data, bytes)
        try:
            return decode_run_event(data)
        except MalformedEvent as exc:
            log.warning("last event on %s is unreadable (%s); treating the run as new", subject, exc)
            return None

    async def run_history(self, stream: str, subject: str) -> list[RunEvents]:
        """Every readable event on `subject`, oldest first."""

        async def read() -> list[RunEvents]:
            events: list[RunEvents] = []
            seq = 1
            for _ in range(MAX_RUN_EVENTS):
                try:
                    raw = await self.js.get_msg(stream, seq=seq, subject=subject, next=True)
                except NotFoundError:
                    break
                try:
                    events.append(decode_run_event(raw.data or b""))
                except MalformedEvent as exc:
                    log.warning("skipping an unreadable event on %s: %s", subject, exc)
                assert raw.seq is not None
                seq = raw.seq + 1
            return events

        result = await self._retrying(read, f"read {subject}")
        assert isinstance(result, list)
        return result

    async def _retrying(
        self,
        op: Callable[[], Awaitable[object]],
        what: str,
        persist: Callable[[], bool] | None = None,
        *,
        began: float | None = None,
        failure: Exception | None = None,
    ) -> object:
        """`op()` until it succeeds, for `patience` seconds from `began` (default: now).

        `failure` is how a first try, made by the caller, failed.
        """
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if began is None else began) + self.patience
        pause = 0.1
        overdue = False
        while True:
            if failure is None:
                try:
                    return await op()
                except Exception as exc:
                    failure = exc
                    continue
            error, failure = failure, None
            if loop.time() + pause > deadline:
                if persist is None or not persist():
                    raise error
                if not overdue:
                    overdue = True
                    log.error(
                        "%s failed for %.0fs (%s); retrying until it succeeds",
                        what,
                        self.patience,
                        error or type(error).__name__,
                    )
            log.warning("%s failed (%s); retrying", what, error or type(error).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)


class PoolMetrics:
    """A pool's run metrics, their labelled children looked up once, not once per run."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self._runs: dict[str, Counter] = {}
        self.duration = metrics.RUN_DURATION.labels(pool)
        self.output_bytes = metrics.OUTPUT_BYTES.labels(pool)

    def record(self, status: str, seconds: float, output_bytes: int) -> None:
        runs = self._runs.get(status)
        if runs is None:
            runs = self._runs[status] = metrics.RUNS.labels(status, self.pool)
        runs.inc()
        self.duration.observe(seconds)
        self.output_bytes.inc(output_bytes)


class RunHandler:
    """Handles dispatch messages; `active` maps run ids in flight to their controls (cancel)."""

    def __init__(
        self,
        *,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        streams: StreamClient,
        http: HttpClient,
        records: RunningRecords,
        stopping: asyncio.Event,
        reaper: Reaper | None = None,
    ) -> None:
        self.settings = settings
        self.names = settings.names
        self.nc = nc
        self.js = js
        self.http = http
        self.records = records
        self.stopping = stopping
        self.reaper = reaper
        self.events = EventPublisher(js, streams, patience=max(settings.ack_wait, PUBLISH_PATIENCE_FLOOR))
        self.active: dict[str, RunControl] = {}
        # Read once: the runner's environment does not change while it runs.
        self._runner_env = dict(os.environ)
        self._passthrough = parse_passthrough(settings.job_env_passthrough)
        self._handing_back = False
        # Deliveries in flight by id(msg), for the one heartbeat loop (`keep_alive`).
        self._deliveries: dict[int, Msg] = {}
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._tracer = tracer("cronbus.runner")
        self._metrics: dict[str, PoolMetrics] = {}

    def _pool_metrics(self, pool: str) -> PoolMetrics:
        found = self._metrics.get(pool)
        if found is None:
            found = self._metrics[pool] = PoolMetrics(pool)
        return found

    def cancel(self, run_id: str) -> bool:
        control = self.active.get(run_id)
        if control is None:
            return False
        control.interrupt("cancelled")
        return True

    def hand_back_all(self) -> None:
        """Interrupt every run in flight, and any that gets this far later, to hand it back."""
        self._handing_back = True
        for control in self.active.values():
            control.interrupt("handed_back")

    async def handle(self, msg: Msg, dispatch: RunDispatched | None = None) -> None:
        """Never raises: every failure is logged and the message nak'ed or terminated.

        `dispatch` is the message already decoded, when it was.
        """
        self._deliveries[id(msg)] = msg
        try:
            with self._run_span(msg):
                if dispatch is None:
                    try:
                        dispatch = decode_dispatch(msg.data)
                    except MalformedEvent as exc:
                        await self._reject(msg, exc)
                        return
                await self._handle(msg, dispatch)
        except Exception:
            log.exception("handling dispatch %s failed; it will be delivered again", _describe(msg))
            try:
                await msg.nak(delay=1.0)
            except Exception as exc:
                log.warning("nak failed (%s); the message comes back after ack_wait", exc)
        finally:
            self._deliveries.pop(id(msg), None)

    @contextlib.contextmanager
    def _run_span(self, msg: Msg) -> Iterator[None]:
        """The run's span, a child of the dispatch's; its trace context goes on every event the
        run publishes. When no span is exported, creating one per run is waste: the run joins
        the dispatch's trace without one, and its events carry the dispatch's trace context."""
        carried = extract_context(msg.headers)
        if exporting():
            with self._tracer.start_as_current_span("run", context=carried):
                _run_trace.set(inject_headers())
                yield
            return
        # Still current, so a log line of the run names its trace.
        token = otel_context.attach(carried)
        try:
            headers = msg.headers or {}
            _run_trace.set({key: headers[key] for key in _TRACE_HEADERS if key in headers})
            yield
        finally:
            otel_context.detach(token)

    async def keep_alive(self, until: asyncio.Event) -> None:
        """Every `heartbeat` seconds until `until` is set, tell JetStream that each delivery in
        flight is still being worked on, so none goes to another runner after `ack_wait`."""
        while True:
            try:
                await asyncio.wait_for(until.wait(), timeout=self.settings.heartbeat)
                return
            except TimeoutError:
                pass
            for key, msg in list(self._deliveries.items()):
                if key not in self._deliveries:
                    continue  # its run ended while earlier heartbeats went out
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.warning("heartbeat for %s failed: %s", _describe(msg), exc)

    async def _reject(self, msg: Msg, exc: MalformedEvent) -> None:
        """A dispatch this runner cannot run: report it when the run is identifiable, then term."""
        try:
            ident = decode_run_identity(msg.data)
        except MalformedEvent:
            log.error("terminating a malformed dispatch message on %s: %s", msg.subject, exc)
            await msg.term()
            return
        error = f"this runner cannot run the dispatch: {exc}"
        log.error("run %s of job %s: %s", ident.run_id, ident.job_id, error)
        subject = self.names.run_subject(ident.job_id, ident.run_id)
        last = await self.events.last_run_event(self.names.runs_stream, subject)
        await self.events.publish(
            subject,
            RunFinished(
                run_id=ident.run_id,
                job_id=ident.job_id,
                slot=ident.slot,
                attempt=last.attempt + 1 if isinstance(last, RunStarted | RunFinished) else 1,
                status="failed",
                runner=self.settings.instance_id,
                error=error,
            ),
        )
        await msg.term()

    def _finished(
        self, d: RunDispatched, attempt: int, *, runner: str | None = None, **fields: object
    ) -> RunFinished:
        return RunFinished(
            **_attempt_ids(d, attempt),
            runner=runner or self.settings.instance_id,
            **fields,  # type: ignore[arg-type]
        )

    async def _handle(self, msg: Msg, d: RunDispatched) -> None:
        subject = self.names.run_subject(d.job_id, d.run_id)
        started: RunStarted | None = None
        if d.spec.overlap == "allow" and msg.metadata.num_delivered == 1:
            # A run's first delivery nearly always finds no events: store its run.started on
            # the condition that the run has none yet, instead of reading first and storing
            # after (one request instead of two).
            started = self._started(d, 1)
            if await self.events.publish_first(subject, started, started_msg_id(d.run_id, 1)):
                await self._run(msg, d, DeliveryPlan(), started=True)
                return
        last = await self.events.last_run_event(self.names.runs_stream, subject)
        if started is not None and isinstance(last, RunStarted) and last.event_id == started.event_id:
            # This runner's own run.started after all (its PubAck was lost).
            await self._run(msg, d, DeliveryPlan(), started=True)
            return
        # A first delivery needs one read; only a run with earlier attempts needs its history.
        history = [] if last is None else [last]
        if needs_history(last):
            history = await self.events.run_history(self.names.runs_stream, subject)
        plan = plan_delivery(history, d.spec.retries)
        if plan.finished:
            log.info("run %s already finished; acking delivery %d", d.run_id, msg.metadata.num_delivered)
            await msg.ack()
            return
        if plan.lost_attempt is not None:
            who = last.runner if isinstance(last, RunStarted) else "?"
            await self.events.publish(
                subject,
                # Attributed to the runner that ran (and lost) the attempt, not to this one.
                self._finished(
                    d,
                    plan.lost_attempt,
                    runner=who,
                    status="lost",
                    final=plan.lost_is_final,
                    error=f"attempt {plan.lost_attempt} started on runner {who}, which stopped "
                    "reporting before it finished",
                ),
                msg_id=finished_msg_id(d.run_id, plan.lost_attempt),
            )
            if plan.lost_is_final:
                await msg.ack()
                return
        await self._run(msg, d, plan, started=False)

    async def _run(self, msg: Msg, d: RunDispatched, plan: DeliveryPlan, *, started: bool) -> None:
        """Admit and execute the attempt `plan` says; `started`: its run.started is stored."""
        attempt = plan.attempt
        chunker = Chunker(cap=self.settings.output_cap, secrets=secret_values(d.spec.executor))
        output = LiveOutput(self._chunk_publisher(d, attempt), chunker)
        control = RunControl(
            output=output,
            timeout=d.spec.timeout,
            # Only a process has an environment; building one for every HTTP run would be waste.
            env=self._job_env(d, attempt) if isinstance(d.spec.executor, ShellExecutor) else {},
            reaper=self.reaper,
        )
        self.active[d.run_id] = control
        if self._handing_back:
            control.interrupt("handed_back")
        try:
            if d.spec.overlap != "allow" and not await self._admit(msg, d, attempt, control):
                return
            try:
                await self._execute(msg, d, attempt, plan.counted, control, started=started)
            finally:
                if d.spec.overlap != "allow":
                    await self._release(d)
        finally:
            self.active.pop(d.run_id, None)

    def _job_env(self, d: RunDispatched, attempt: int) -> dict[str, str]:
        executor = d.spec.executor
        return job_environment(
            self._runner_env,
            passthrough=self._passthrough,
            run=RunIdentity(run_id=d.run_id, job_id=d.job_id, slot=d.slot, attempt=attempt),
            timezone=d.spec.timezone,
            job_env=executor.env if isinstance(executor, ShellExecutor) else {},
        )

    async def _admit(self, msg: Msg, d: RunDispatched, attempt: int, control: RunControl) -> bool:
        """Apply the overlap policy; True when this delivery may run now."""
        holder = Holder(runner=self.settings.instance_id, attempt=attempt, since=utcnow())
        subject = self.names.run_subject(d.job_id, d.run_id)
        while True:
            admission = await self.records.admit(d.job_id, d.run_id, holder, d.spec.overlap)
            if admission.verdict == "run":
                for other in admission.cancel:
                    log.info("run %s replaces run %s of job %s", d.run_id, other, d.job_id)
                    await self.nc.publish(self.names.cancel_subject(other), b"replaced")
                return True
            if admission.verdict == "skip":
                await self.events.publish(
                    subject,
                    self._finished(d, attempt, status="skipped", error=admission.reason),
                    msg_id=finished_msg_id(d.run_id, attempt),
                )
                await msg.ack()
                return False
            # Waiting behind a running one (policy queue): look again shortly.
            try:
                await asyncio.wait_for(control.interrupted.wait(), timeout=QUEUE_POLL)
            except TimeoutError:
                pass
            if control.interrupted.is_set() or self.stopping.is_set():
                await self._release(d)
                if control.reason == "cancelled":
                    await self.events.publish(
                        subject,
                        self._finished(d, attempt, status="cancelled", error="cancelled while queued"),
                        msg_id=finished_msg_id(d.run_id, attempt),
                    )
                    await msg.ack()
                else:
                    await msg.nak()
                return False

    async def _release(self, d: RunDispatched) -> None:
        try:
            await self.records.release(d.job_id, d.run_id)
        except Exception as exc:
            # Not fatal: a record whose runner is gone stops counting once its presence expires.
            log.warning("could not release the running record of job %s: %s", d.job_id, exc)

    def _chunk_publisher(self, d: RunDispatched, attempt: int) -> Callable[[list[Chunk]], Awaitable[None]]:
        subject = self.names.log_subject(d.run_id)

        async def publish(chunks: list[Chunk]) -> None:
            await self.events.publish_all(
                [
                    Outgoing(
                        subject,
                        LogChunk(
                            run_id=d.run_id,
                            job_id=d.job_id,
                            slot=d.slot,
                            attempt=attempt,
                            seq=chunk.seq,
                            stream=chunk.stream,
                            data=chunk.data,
                        ),
                        f"{d.run_id}:{attempt}:{chunk.seq}",
                    )
                    for chunk in chunks
                ]
            )

        return publish

    def _started(self, d: RunDispatched, attempt: int) -> RunStarted:
        runner = self.settings.instance_id
        return RunStarted(**_attempt_ids(d, attempt), runner=runner, host=self.host, pid=self.pid)

    async def _execute(
        self, msg: Msg, d: RunDispatched, attempt: int, counted: int, control: RunControl, *, started: bool
    ) -> None:
        """Run attempt `attempt`; `counted` attempts before it count against `max_attempts`;
        `started`: the attempt's run.started is already stored."""
        subject = self.names.run_subject(d.job_id, d.run_id)
        if not started:
            await self.events.publish(
                subject, self._started(d, attempt), msg_id=started_msg_id(d.run_id, attempt)
            )
        began = time.monotonic()
        execution = execution_for(d.spec.executor, self.http)
        async with control.output as output:
            outcome = await execution.execute(control)
        duration_ms = (time.monotonic() - began) * 1000.0
        chunker = output.chunker
        inline = output.inline or ()
        common: dict[str, Any] = {
            "exit_code": outcome.exit_code,
            "duration_ms": duration_ms,
            "cpu_ms": outcome.cpu_ms,
            "peak_rss_bytes": outcome.peak_rss_bytes,
            "output_bytes": chunker.total_bytes,
            "truncated": chunker.truncated,
            "output": [OutputPart(seq=c.seq, stream=c.stream, data=c.data) for c in inline],
        }
        if control.reason == "handed_back" and outcome.status == "cancelled":
            # Ended by the hand-back, not by the job: the next delivery (another runner) runs
            # it again, and this attempt does not count against `max_attempts`.
            await self.events.publish(
                subject,
                self._finished(
                    d, attempt, status="lost", final=False, error=HANDED_BACK, handed_back=True, **common
                ),
                msg_id=finished_msg_id(d.run_id, attempt),
            )
            await msg.nak()
            return
        # The work happened (whatever an interrupt arriving at the last moment says): report
        # what it did. Until this is stored the message must not go back, or the next delivery
        # would record the attempt lost and do the work again, so keep trying (the heartbeat
        # keeps the message) unless the runner is handing its runs back.
        result = after_attempt(outcome.status, counted + 1, d.spec.retries)
        retry_at = None if result.retry_delay is None else utcnow() + timedelta(seconds=result.retry_delay)
        await self.events.publish(
            subject,
            self._finished(
                d,
                attempt,
                status=outcome.status,
                final=result.final,
                retry_at=retry_at,
                error=outcome.error,
                **common,
            ),
            msg_id=finished_msg_id(d.run_id, attempt),
            persist=lambda: not self._handing_back,
        )
        self._pool_metrics(d.pool).record(outcome.status, duration_ms / 1000, chunker.total_bytes)
        # One line per run is too many for a busy runner at INFO; the history has every outcome.
        log.debug(
            "run %s of job %s attempt %d: %s%s",
            d.run_id,
            d.job_id,
            attempt,
            outcome.status,
            "" if result.final else f", retry in {result.retry_delay:g}s",
        )
        if result.retry_delay is None:
            await msg.ack()
        else:
            await msg.nak(delay=result.retry_delay)


def _attempt_ids(d: RunDispatched, attempt: int) -> dict[str, Any]:
    """The fields every event of one attempt of the run `d` starts with (a new event id)."""
    return {
        "event_id": event_id(),
        "run_id": d.run_id,
        "job_id": d.job_id,
        "slot": d.slot,
        "attempt": attempt,
    }


async def _gather_within(futures: list[asyncio.Future[PubAck]], timeout: float) -> list[object]:
    """Each future's result or exception; a future not done within `timeout` counts as failed."""
    _, pending = await asyncio.wait(futures, timeout=timeout)
    for future in pending:
        future.cancel()
    results: list[object] = []
    for future in futures:
        if future.cancelled():
            results.append(TimeoutError(f"no PubAck within {timeout:g}s"))
        else:
            results.append(future.exception() or future.result())
    return results


def _describe(msg: Msg) -> str:
    try:
        return f"{msg.subject} (stream seq {msg.metadata.sequence.stream})"
    except Exception:
        return msg.subject
