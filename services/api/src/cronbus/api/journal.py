"""The API's side of NATS: appending job events, dispatching manual runs, finding and
cancelling runs, reading the status buckets, and tailing a run's output.

The JOBS stream is the source of truth for writes: a write folds the job's events from the
stream (not from the SQL projection, which may lag) and appends with
`Nats-Expected-Last-Subject-Sequence`, so two concurrent writers cannot both win.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, NoKeysError, NotFoundError

from cronbus.api.domain import JobState, RevisionConflict, evolve
from cronbus.shared.bus import EXPECTED_LAST_SUBJECT_SEQ, MSG_ID, Bus
from cronbus.shared.events import (
    JobEvent,
    LogChunk,
    MalformedEvent,
    OutputPart,
    RunDispatched,
    RunEvents,
    RunFinished,
    RunIdentity,
    decode_job_event,
    decode_log_chunk,
    decode_run_event,
    decode_run_identity,
    encode,
)
from cronbus.shared.status import (
    RunnerPresence,
    SchedulerStatus,
    decode_runner_presence,
    decode_scheduler_status,
)
from cronbus.shared.tracing import inject_headers, trace_id_of, tracer

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

# JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence check.
_WRONG_LAST_SEQUENCE = 10071
# How far back in DISPATCH a run the history has not projected yet is looked for, at most.
_DISPATCH_LOOKBACK = 20_000
_DISPATCH_SCAN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class JobHead:
    """A job as its stream says, with the stream sequence of its last event."""

    state: JobState | None
    last_seq: int


@dataclass(frozen=True, slots=True)
class RunHead:
    """A run as the bus says: its ids, and its last event on RUNS (None before it started)
    with that event's stream sequence (0 when there is none)."""

    identity: RunIdentity
    last: RunEvents | None
    last_seq: int
    # The run's trace (from its events' trace context), when they carry one.
    trace_id: str | None = None

    @property
    def waiting(self) -> bool:
        """No runner holds it: not started yet, or between attempts."""
        return self.last is None or (isinstance(self.last, RunFinished) and not self.last.final)


class Journal:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.names = bus.settings.names

    async def head(self, job_id: str) -> JobHead:
        """Fold the job's events from JOBS (a job has few events; each is one direct lookup)."""
        stream, subject = self.names.jobs_stream, self.names.job_subject(job_id)
        state: JobState | None = None
        seq = 0
        while True:
            try:
                msg = await self.bus.js.get_msg(stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return JobHead(state=state, last_seq=seq)
            assert msg.seq is not None
            seq = msg.seq
            try:
                state = evolve(state, decode_job_event(msg.data or b""))
            except MalformedEvent as exc:
                log.warning("skipping malformed event %s seq %d: %s", subject, seq, exc)

    async def append(self, event: JobEvent, *, expected_last_seq: int, current: int | None) -> int:
        """Publish `event` only if the job's last event is still `expected_last_seq`."""
        attributes: dict[str, str | int] = {
            "cronbus.job_id": event.job_id,
            "cronbus.revision": event.revision,
        }
        with _tracer.start_as_current_span(f"append {event.__struct_config__.tag}", attributes=attributes):
            headers = inject_headers({EXPECTED_LAST_SUBJECT_SEQ: str(expected_last_seq)})
            try:
                ack = await self.bus.js.publish(
                    self.names.job_subject(event.job_id), encode(event), headers=headers
                )
            except APIError as exc:
                if exc.err_code == _WRONG_LAST_SEQUENCE:
                    raise RevisionConflict(event.job_id, None, current) from None
                raise
        return ack.seq

    async def dispatch(self, run: RunDispatched, msg_id: str) -> bool:
        """Publish `run` to DISPATCH; False when JetStream dropped it as a duplicate of `msg_id`."""
        attributes = {"cronbus.job_id": run.job_id, "cronbus.run_id": run.run_id}
        with _tracer.start_as_current_span(f"dispatch {run.trigger} run", attributes=attributes):
            ack = await self.bus.js.publish(
                self.names.dispatch_subject(run.pool, run.job_id),
                encode(run),
                headers=inject_headers({MSG_ID: msg_id}),
            )
        return not ack.duplicate

    async def run_head(self, run_id: str, job_id: str = "*") -> RunHead | None:
        """The run's last event on RUNS (any job when `job_id` is not known), or None."""
        try:
            msg = await self.bus.js.get_last_msg(
                self.names.runs_stream, self.names.run_subject(job_id, run_id)
            )
        except NotFoundError:
            return None
        assert msg.seq is not None
        try:
            identity = decode_run_identity(msg.data or b"")
        except MalformedEvent as exc:
            log.warning("unreadable last event of run %s (seq %d): %s", run_id, msg.seq, exc)
            return None
        try:
            last: RunEvents | None = decode_run_event(msg.data or b"")
        except MalformedEvent:
            last = None
        return RunHead(identity=identity, last=last, last_seq=msg.seq, trace_id=trace_id_of(msg.headers))

    async def find_dispatch(self, run_id: str, *, after_seq: int) -> RunIdentity | None:
        """The run's dispatch among the DISPATCH messages after `after_seq` (what the history
        has not projected yet; the newest `_DISPATCH_LOOKBACK` of them at most)."""
        js = self.bus.js
        info = await js.stream_info(self.names.dispatch_stream)
        last_seq = info.state.last_seq
        start = max(after_seq + 1, last_seq - _DISPATCH_LOOKBACK + 1, info.state.first_seq)
        if start > last_seq:
            return None
        sub = await js.subscribe(
            self.names.dispatch_all,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DISPATCH_SCAN_TIMEOUT
        try:
            for _ in range(last_seq - start + 1):
                msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
                try:
                    identity = decode_run_identity(msg.data)
                except MalformedEvent:
                    identity = None
                if identity is not None and identity.run_id == run_id:
                    return identity
                if msg.metadata.sequence.stream >= last_seq or msg.metadata.num_pending == 0:
                    return None
        finally:
            await sub.unsubscribe()
        return None

    async def cancel(self, head: RunHead, actor: str) -> None:
        """Cancel the run wherever it is.

        A run no runner holds yet (still in DISPATCH, or waiting for its next attempt) gets a
        final `cancelled` outcome on RUNS, appended only if its last event is still the one
        read, so the runner that later receives it acks it without running it. A run a runner
        holds is asked to stop over core NATS; that request is sent in every case, which also
        reaches a runner that started the run just after the outcome was appended.
        """
        ident = head.identity
        subject = self.names.run_subject(ident.job_id, ident.run_id)
        attributes = {"cronbus.run_id": ident.run_id, "cronbus.job_id": ident.job_id}
        with _tracer.start_as_current_span("cancel run", attributes=attributes):
            if head.waiting:
                attempt = 1 if head.last is None else head.last.attempt + 1
                event = RunFinished(
                    run_id=ident.run_id,
                    job_id=ident.job_id,
                    slot=ident.slot,
                    attempt=attempt,
                    status="cancelled",
                    error=f"cancelled by {actor} before it started",
                )
                headers = {
                    EXPECTED_LAST_SUBJECT_SEQ: str(head.last_seq),
                    MSG_ID: f"{ident.run_id}:{attempt}:cancelled",
                }
                try:
                    await self.bus.js.publish(subject, encode(event), headers=inject_headers(headers))
                except APIError as exc:
                    if exc.err_code != _WRONG_LAST_SEQUENCE:
                        raise
                    log.info("run %s moved on while cancelling it; asking its runner", ident.run_id)
            body = msgspec.json.encode({"run_id": ident.run_id, "actor": actor})
            await self.bus.nc.publish(self.names.cancel_subject(ident.run_id), body, headers=inject_headers())
            await self.bus.nc.flush(timeout=5)

    async def scheduler_status(self) -> SchedulerStatus | None:
        try:
            kv = await self.bus.js.key_value(self.names.scheduler_bucket)
            entry = await kv.get("status")
        except (BucketNotFoundError, KeyNotFoundError):
            return None
        if not entry.value:
            return None
        try:
            return decode_scheduler_status(entry.value)
        except msgspec.DecodeError as exc:
            log.warning("unreadable scheduler status: %s", exc)
            return None

    async def runners(self) -> list[RunnerPresence]:
        try:
            kv = await self.bus.js.key_value(self.names.runners_bucket)
            keys = await kv.keys()
        except (BucketNotFoundError, NotFoundError, NoKeysError):
            return []
        out: list[RunnerPresence] = []
        for key in sorted(keys):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue  # it expired between the listing and the read
            if entry.value:
                try:
                    out.append(decode_runner_presence(entry.value))
                except msgspec.DecodeError as exc:
                    log.warning("unreadable runner presence %s: %s", key, exc)
        return out

    async def tail(self, run_id: str, *, idle_timeout: float) -> AsyncIterator[LogChunk | None]:
        """The run's output, replayed then live: the chunks on the LOGS stream, and the output a
        short attempt carried inline in its `run.finished` (as chunks of that attempt).

        Yields None when nothing arrived for `idle_timeout` seconds (a chance to send a
        keep-alive or give up). Stops after the run's final RunFinished once the output
        published before it has been delivered.
        """
        js = self.bus.js
        logs = await js.subscribe(
            self.names.log_subject(run_id),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        events = await js.subscribe(
            # Any job: a run id alone names the run, and the tail may start before the history has it.
            self.names.run_subject("*", run_id),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        finished = False
        try:
            while True:
                if not finished:
                    inline, finished = await self._drain_finished(events)
                    if inline:
                        # An attempt's inline output comes after every LOGS chunk stored
                        # before its end (earlier attempts'): hand over those received so far.
                        while (msg := await _next_now(logs)) is not None:
                            if (chunk := _log_chunk(run_id, msg)) is not None:
                                yield chunk
                        for chunk in inline:
                            yield chunk
                try:
                    msg = await logs.next_msg(timeout=idle_timeout)
                except NatsTimeout:
                    if finished:
                        return
                    yield None
                    continue
                if (chunk := _log_chunk(run_id, msg)) is not None:
                    yield chunk
                if finished and msg.metadata.num_pending == 0:
                    return
        finally:
            await logs.unsubscribe()
            await events.unsubscribe()

    @staticmethod
    async def _drain_finished(events: JetStreamContext.PushSubscription) -> tuple[list[LogChunk], bool]:
        """The inline output of the run events received so far, and whether a final
        RunFinished is among them."""
        inline: list[LogChunk] = []
        while (msg := await _next_now(events)) is not None:
            try:
                event = decode_run_event(msg.data)
            except MalformedEvent:
                continue
            if not isinstance(event, RunFinished):
                continue
            inline.extend(_inline_chunk(event, part) for part in event.output)
            if event.final:
                return inline, True
        return inline, False


async def _next_now(sub: JetStreamContext.PushSubscription) -> Msg | None:
    """The next message already received on `sub`, or None without waiting for one."""
    try:
        return await sub.next_msg(timeout=0.001)
    except NatsTimeout:
        return None


def _inline_chunk(event: RunFinished, part: OutputPart) -> LogChunk:
    """A part of the output `event` carries, as the chunk it would have been on LOGS."""
    return LogChunk(
        run_id=event.run_id, job_id=event.job_id, slot=event.slot, attempt=event.attempt,
        seq=part.seq, stream=part.stream, data=part.data, occurred_at=event.occurred_at,
    )  # fmt: skip


def _log_chunk(run_id: str, msg: Msg) -> LogChunk | None:
    try:
        return decode_log_chunk(msg.data)
    except MalformedEvent as exc:
        log.warning("skipping malformed log chunk of run %s: %s", run_id, exc)
        return None
