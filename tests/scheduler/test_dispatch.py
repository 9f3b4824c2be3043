"""The dispatcher against a JetStream stand-in whose acks fail, get lost, or come late:
every slot is published until acknowledged, always under the same Nats-Msg-Id, and nothing is
published once the fence closes."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import msgspec
import pytest
from nats.errors import BadSubjectError, OutboundBufferLimitError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError

from cronbus.scheduler.app import open_bus
from cronbus.scheduler.dispatch import (
    YIELD_EVERY,
    Dispatcher,
    dispatch_headers,
    encode_dispatch,
    prepare_dispatch,
    run_id_of,
)
from cronbus.scheduler.domain import Due, Fence, Timetable, msg_id_of, to_ms, watermark_of
from cronbus.scheduler.lease import Term
from cronbus.scheduler.publish import Acked, AckedPublisher, OnAck, Outgoing, header_block
from cronbus.shared.bus import MSG_ID, Bus
from cronbus.shared.events import (
    JobCreated,
    JobUpdated,
    RunDispatched,
    decode_dispatch,
    dispatch_msg_id,
    run_id_for,
)
from cronbus.shared.names import Names
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from cronbus.shared.tracing import trace_id_of
from tests.scheduler.support import spec
from tests.support import wait_for

SLOT = datetime(2026, 1, 1, tzinfo=UTC)


class StandInJetStream:
    """Answers publishes from a script: 'fail' (error ack), 'lose' (no ack ever) or 'ok'."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.attempts: list[str] = []
        self.stored: list[bytes] = []
        self.batches = 0
        self.keys = itertools.count()
        self.forgotten: list[str] = []
        self.headers: list[bytes] = []

    async def publish_many(self, messages: Sequence[Outgoing], on_ack: OnAck) -> list[str]:
        self.batches += 1
        return [self._publish(headers, payload, on_ack) for _, headers, payload in messages]

    def forget(self, key: str) -> None:
        self.forgotten.append(key)

    def _publish(self, header_bytes: bytes, payload: bytes, on_ack: OnAck) -> str:
        self.headers.append(header_bytes)
        lines = header_bytes.decode().split("\r\n")
        assert lines[0] == "NATS/1.0" and lines[-2:] == ["", ""]
        headers = dict(line.split(": ", 1) for line in lines[1:-2])
        key = str(next(self.keys))
        self.attempts.append(headers[MSG_ID])
        outcome = self.script.pop(0) if self.script else "ok"
        call_soon = asyncio.get_running_loop().call_soon
        if outcome == "fail":
            call_soon(on_ack, key, ConnectionError("connection reset"))
        elif outcome == "ok":
            duplicate = any(h == headers[MSG_ID] for h in self.attempts[:-1]) and bool(self.stored)
            if not duplicate:
                self.stored.append(payload)
            call_soon(on_ack, key, Acked(stream="S", seq=len(self.stored), duplicate=duplicate))
        return key


def _setup(
    script: list[str], fence_open: bool = True, connection: Callable[[], int | None] = lambda: 0
) -> tuple[Dispatcher, StandInJetStream, Timetable]:
    js = StandInJetStream(script)
    fence = Fence(ttl=60.0, margin=1.0)
    if fence_open:
        fence.renewed(time.monotonic())
    table = Timetable()
    table.apply(JobCreated(job_id="a", revision=3, spec=spec("* * * * * *", pool="p")), SLOT.timestamp())
    term = Term(fence, connection, revision=1)
    dispatcher = Dispatcher(js, Names("t"), "me", term, publish_timeout=0.2)
    return dispatcher, js, table


async def test_failed_and_lost_publishes_are_retried_until_acknowledged() -> None:
    dispatcher, js, table = _setup(["fail", "lose", "ok"])
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    assert dispatcher.unfinished_slots_ms == [to_ms(SLOT)]
    await wait_for(lambda: dispatcher.dispatched_total == 1, timeout=5, what="acknowledged dispatch")
    assert js.attempts == ["a:" + str(to_ms(SLOT))] * 3
    # The lost one's ack was given up on (no longer awaited from the publisher).
    assert js.forgotten == ["1"]
    assert dispatcher.unfinished_slots_ms == []
    event = decode_dispatch(js.stored[0])
    assert (event.job_id, event.slot, event.pool, event.scheduler, event.job_revision) == (
        "a",
        SLOT,
        "p",
        "me",
        3,
    )
    await dispatcher.drain(1.0)


async def test_a_dispatch_published_again_is_still_the_runs_attempt_1() -> None:
    """The publish retries are the same message: a runner must not see attempt 3 of a run
    that never ran."""
    dispatcher, js, table = _setup(["fail", "fail", "ok"])
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    await wait_for(lambda: dispatcher.dispatched_total == 1, timeout=5, what="acknowledged dispatch")
    assert len(js.attempts) == 3
    assert decode_dispatch(js.stored[0]).attempt == 1
    await dispatcher.drain(1.0)


async def test_a_closed_fence_publishes_nothing() -> None:
    dispatcher, js, table = _setup([], fence_open=False)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    assert js.attempts == []
    assert dispatcher.ended
    # Given up, not published: the watermark stays below it.
    assert dispatcher.in_flight == 0
    assert dispatcher.abandoned == 1
    assert dispatcher.unfinished_slots_ms == [to_ms(SLOT)]


async def test_an_ended_term_stops_retrying() -> None:
    dispatcher, js, table = _setup(["fail"] * 100)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    await wait_for(lambda: len(js.attempts) >= 2, timeout=5, what="a retry")
    dispatcher.end_term()
    await dispatcher.drain(1.0)
    tried = len(js.attempts)
    assert dispatcher.in_flight == 0
    assert js.stored == []
    assert len(js.attempts) == tried


async def test_a_retry_ended_before_it_ever_ran_gives_its_slot_up() -> None:
    """The term ends right after a failed publish, before its retry's task first runs."""
    dispatcher, js, table = _setup(["fail"] * 100)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    assert len(js.attempts) == 1 and dispatcher.in_flight == 1
    # The failure is reported by a callback already queued; ending the term is queued behind
    # it, and so comes before the first step of the retry task the failure creates.
    asyncio.get_running_loop().call_soon(dispatcher.end_term)
    await dispatcher.drain(1.0)
    assert dispatcher.in_flight == 0
    assert dispatcher.abandoned == 1
    assert len(js.attempts) == 1


# --- the encoded event and the publisher --------------------------------------------------------


def test_the_encoded_dispatch_is_the_event_a_runner_decodes() -> None:
    _, _, table = _setup([])
    job = table.jobs["a"]
    due = Due("a", to_ms(SLOT), SLOT.timestamp() + 0.25, "catchup")
    payload, lateness_ms = encode_dispatch(due, job, scheduler="me", now=SLOT.timestamp() + 0.5)
    event = decode_dispatch(payload)
    expected = RunDispatched(
        event_id=event.event_id,
        occurred_at=event.occurred_at,
        run_id=run_id_for("a", SLOT),
        job_id="a",
        slot=SLOT,
        attempt=1,
        pool="p",
        spec=job.spec,
        job_revision=3,
        trigger="catchup",
        dispatched_at=datetime.fromtimestamp(SLOT.timestamp() + 0.5, UTC),
        lateness_ms=250.0,
        scheduler="me",
    )
    assert event == expected
    assert lateness_ms == 250.0
    assert len(event.event_id) == 32 and uuid.UUID(event.event_id).version == 4


def test_a_prepared_dispatch_is_the_event_encoded_when_it_is_sent() -> None:
    """Prepared ahead, the instants and the lateness are filled in when it goes out; a spec
    holding what looks like those fields changes nothing."""
    table = Timetable()
    lookalike = '"dispatched_at":"1970-01-01T00:00:00.000001Z","lateness_ms":1.5'
    table.apply(
        JobCreated(job_id="a", revision=3, spec=spec("* * * * * *", pool="p", name=lookalike)),
        SLOT.timestamp(),
    )
    job = table.jobs["a"]
    due = Due("a", to_ms(SLOT), SLOT.timestamp() + 0.25, "catchup", job)
    prepared = prepare_dispatch(due, job, scheduler="me")
    for sent_at in (0.0, 0.5, 1.0, 0.123456789, 86400.000001):
        now = SLOT.timestamp() + sent_at
        payload, lateness_ms = prepared.payload(now)
        encoded, expected_lateness = encode_dispatch(due, job, scheduler="me", now=now)
        event, expected = decode_dispatch(payload), decode_dispatch(encoded)
        assert lateness_ms == expected_lateness
        assert event.occurred_at == event.dispatched_at == datetime.fromtimestamp(now, UTC)
        assert msgspec.structs.replace(event, event_id="", occurred_at=SLOT) == msgspec.structs.replace(
            expected, event_id="", occurred_at=SLOT
        )


async def test_a_dispatch_prepared_for_an_earlier_state_of_the_job_is_encoded_anew() -> None:
    dispatcher, js, table = _setup([])
    old = table.jobs["a"]
    due = Due("a", to_ms(SLOT), SLOT.timestamp())
    await dispatcher.prepare([(due, old)], until=time.time() + 60, horizon=SLOT.timestamp())
    table.apply(JobUpdated(job_id="a", revision=4, spec=spec("* * * * * *", pool="p")), SLOT.timestamp())
    await dispatcher.submit_all([(due, table.jobs["a"])])
    await dispatcher.drain(1.0)
    assert decode_dispatch(js.stored[0]).job_revision == 4
    # Prepared for the state it is sent with: used as it is (its trace is the one prepared).
    later = Due("a", to_ms(SLOT) + 1000, SLOT.timestamp() + 1)
    dispatcher, js, table = _setup([])
    await dispatcher.prepare([(later, table.jobs["a"])], until=time.time() + 60, horizon=SLOT.timestamp() + 1)
    headers = dispatcher._prepared[("a", later.slot_ms)].headers
    await dispatcher.submit_all([(later, table.jobs["a"])])
    await dispatcher.drain(1.0)
    assert decode_dispatch(js.stored[0]).job_revision == 3
    assert js.headers == [headers]


def test_run_ids_and_msg_ids_match_the_shared_derivation() -> None:
    rng = random.Random(1)
    for _ in range(500):
        job_id = "".join(rng.choice("abcxyz-_0123456789é") for _ in range(rng.randint(1, 40)))
        slot_ms = rng.randint(0, 4_000_000_000_000)
        slot = datetime.fromtimestamp(slot_ms / 1000, UTC)
        assert run_id_of(job_id, slot_ms) == run_id_for(job_id, slot), (job_id, slot_ms)
        assert msg_id_of(job_id, slot_ms) == dispatch_msg_id(job_id, slot), (job_id, slot_ms)


async def test_every_publish_carries_the_shared_msg_id() -> None:
    dispatcher, js, table = _setup([])
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    await dispatcher.drain(1.0)
    assert js.attempts == [dispatch_msg_id("a", SLOT)]


async def test_the_acked_publisher_reports_stored_duplicate_and_missing_stream(settings: Settings) -> None:
    bus = await Bus.open(settings, "test")
    publisher = AckedPublisher(bus.nc)
    await publisher.start()
    try:
        subject = settings.names.dispatch_subject("default", "a")
        first = await asyncio.wait_for(
            await publisher.publish_async(subject, b"{}", headers={MSG_ID: "a:1"}), timeout=5
        )
        again = await asyncio.wait_for(
            await publisher.publish_async(subject, b"{}", headers={MSG_ID: "a:1"}), timeout=5
        )
        assert (first.seq, bool(first.duplicate)) == (1, False)
        assert again.duplicate
        with pytest.raises(NoStreamResponseError):
            await asyncio.wait_for(await publisher.publish_async("nowhere.at.all", b"{}"), timeout=5)
        assert publisher.waiting == 0
    finally:
        await publisher.stop()
        await bus.close()


async def test_a_batch_reaches_the_stream_with_its_headers(settings: Settings) -> None:
    """`publish_many` writes HPUB commands of its own: the stored messages carry their headers
    and payloads, JetStream dedupes by their Nats-Msg-Id, and a message that cannot be sent
    fails alone."""
    bus = await Bus.open(settings, "test")
    publisher = AckedPublisher(bus.nc)
    await publisher.start()
    try:
        names = settings.names
        messages: list[Outgoing] = [
            (
                names.dispatch_subject("default", f"j{i}"),
                header_block({MSG_ID: f"j{i}:1", "k": "v 1"}),
                b"x" * (i + 1),
            )
            for i in range(300)
        ]
        messages.append(("bad subject", header_block({MSG_ID: "x"}), b""))
        messages.append((names.dispatch_subject("default", "j0"), header_block({MSG_ID: "j0:1"}), b"again"))
        outcomes: dict[str, Acked | BaseException] = {}
        keys = await publisher.publish_many(messages, outcomes.__setitem__)
        assert len(set(keys)) == len(messages)
        await wait_for(lambda: len(outcomes) == len(messages), what="every acknowledgement")
        done = [outcomes[key] for key in keys]
        assert [a.seq for a in done[:300]] == list(range(1, 301))  # type: ignore[union-attr]
        assert isinstance(done[300], BadSubjectError)
        assert done[301].duplicate  # type: ignore[union-attr]
        for seq in (1, 300):
            stored = await bus.js.get_msg(names.dispatch_stream, seq)
            assert stored.headers == {MSG_ID: f"j{seq - 1}:1", "k": "v 1"}
            assert stored.data == b"x" * seq
        with pytest.raises(ValueError):
            header_block({MSG_ID: "a\r\nPUB x 1"})
        assert publisher.waiting == 0
    finally:
        await publisher.stop()
        await bus.close()


async def test_acknowledgements_are_settled_while_publishing_goes_on(settings: Settings) -> None:
    """Settling waits for publishing to pause, but not for ever: a publisher that never pauses
    still gets its acknowledgements (within SETTLE_WITHIN)."""
    bus = await Bus.open(settings, "test")
    publisher = AckedPublisher(bus.nc)
    await publisher.start()
    try:
        subject = settings.names.dispatch_subject("default", "a")
        outcomes: dict[str, Acked | BaseException] = {}
        deadline = time.monotonic() + 10
        n = 0
        while not outcomes:
            assert time.monotonic() < deadline, "no acknowledgement settled while publishing"
            await publisher.publish_many(
                [(subject, header_block({MSG_ID: f"a:{n}"}), b"{}")], outcomes.__setitem__
            )
            n += 1
            await asyncio.sleep(0)
        assert all(isinstance(o, Acked) and not o.duplicate for o in outcomes.values())
    finally:
        await publisher.stop()
        await bus.close()


def test_a_dispatch_carries_its_msg_id_and_starts_a_trace_of_its_own() -> None:
    _, _, table = _setup([])
    job = table.jobs["a"]
    blocks = [dispatch_headers(Due("a", to_ms(SLOT), SLOT.timestamp()), job) for _ in range(2)]
    parsed = []
    for block in blocks:
        lines = block.decode().split("\r\n")
        assert lines[0] == "NATS/1.0" and lines[-2:] == ["", ""]
        parsed.append(dict(line.split(": ", 1) for line in lines[1:-2]))
    assert [set(h) for h in parsed] == [{"traceparent", MSG_ID}] * 2
    assert {h[MSG_ID] for h in parsed} == {dispatch_msg_id("a", SLOT)}
    trace_ids = {trace_id_of(h) for h in parsed}
    assert len(trace_ids) == 2 and all(t and re.fullmatch("[0-9a-f]{32}", t) for t in trace_ids)


async def test_slots_given_up_when_a_drain_times_out_hold_the_watermark_back() -> None:
    """A clean stop while DISPATCH refuses publishes: the drain gives the slot up, and the
    watermark must not move past it (the next leader decides about it)."""
    dispatcher, js, table = _setup(["fail"] * 1000)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    await wait_for(lambda: len(js.attempts) >= 2, timeout=5, what="a retry")
    await dispatcher.drain(0.05)
    assert js.stored == []
    assert dispatcher.in_flight == 0
    assert dispatcher.abandoned == 1
    assert watermark_of(SLOT.timestamp() + 60, dispatcher.unfinished_slots_ms, 0.0) < SLOT.timestamp()


async def test_a_dropped_connection_ends_the_term() -> None:
    epoch: list[int | None] = [0]
    dispatcher, js, table = _setup([], connection=lambda: epoch[0])
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    epoch[0] = None
    later = datetime.fromtimestamp(SLOT.timestamp() + 1, UTC)
    await dispatcher.submit(Due("a", to_ms(later), later.timestamp()), table.jobs["a"])
    # Connected again, over a new connection: the term stays over.
    epoch[0] = 1
    await dispatcher.drain(1.0)
    assert js.attempts == [dispatch_msg_id("a", SLOT)]
    assert dispatcher.ended
    assert dispatcher.unfinished_slots_ms == [to_ms(later)]


async def test_the_scheduler_connection_does_not_buffer_publishes_while_disconnected(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    """A publish while disconnected fails at once (the dispatcher retries it under the fence)
    instead of waiting in nats-py's buffer to be sent after the reconnect, past the fence."""
    bus = await open_bus(settings, asyncio.Event())
    assert bus is not None
    publisher = AckedPublisher(bus.nc)
    await publisher.start()
    subject = settings.names.dispatch_subject("default", "a")
    try:
        await nats_server.stop()
        await wait_for(lambda: not bus.nc.is_connected, what="the disconnect noticed")
        with pytest.raises(OutboundBufferLimitError):
            await publisher.publish_async(subject, b"{}", headers={MSG_ID: "a:1"})
        assert publisher.waiting == 0
        assert bus.nc.pending_data_size == 0
        await nats_server.start()
        await wait_for(lambda: bus.nc.is_connected, timeout=20, what="the reconnect")

        async def stored() -> PubAck | None:
            try:
                ack = await publisher.publish_async(subject, b"{}", headers={MSG_ID: "a:2"})
                return await asyncio.wait_for(ack, timeout=2)
            except Exception:
                return None

        ack = await wait_for(stored, timeout=20, what="a publish after the reconnect")
        # Nothing published during the disconnect reached the stream.
        assert (ack.seq, bool(ack.duplicate)) == (1, False)
    finally:
        await publisher.stop()
        await bus.close()


async def test_a_term_ending_in_the_middle_of_a_burst_holds_the_watermark_below_the_rest() -> None:
    """The connection is replaced right after the first batch of a burst went out: nothing
    more is published, and the watermark stays below every slot not published."""
    epoch = [0]
    dispatcher, js, table = _setup([], connection=lambda: epoch[0])
    publish = js.publish_many

    async def publish_then_reconnect(messages: Sequence[Outgoing], on_ack: OnAck) -> list[str]:
        epoch[0] += 1
        return await publish(messages, on_ack)

    js.publish_many = publish_then_reconnect  # type: ignore[method-assign]
    slots = [datetime.fromtimestamp(SLOT.timestamp() + i, UTC) for i in range(YIELD_EVERY + 3)]
    await dispatcher.submit_all([(Due("a", to_ms(s), s.timestamp()), table.jobs["a"]) for s in slots])
    await dispatcher.drain(1.0)
    assert js.batches == 1
    assert js.attempts == [dispatch_msg_id("a", s) for s in slots[:YIELD_EVERY]]
    assert sorted(dispatcher.unfinished_slots_ms) == [to_ms(s) for s in slots[YIELD_EVERY:]]
    assert (
        watermark_of(SLOT.timestamp() + 60, dispatcher.unfinished_slots_ms, 0.0)
        < slots[YIELD_EVERY].timestamp()
    )


async def test_the_fence_closing_while_a_batch_is_encoded_publishes_none_of_it() -> None:
    """The term is asked again right before a batch goes out: a fence that closed while it was
    encoded stops all of it."""
    dispatcher, js, table = _setup([])
    checks = [0]
    may_publish = dispatcher.term.may_publish

    def may_publish_until_closed(now: float) -> bool:
        # Open before the batch is encoded, closed when it is to go out.
        checks[0] += 1
        if checks[0] > 1:
            dispatcher.term.end("fence closed")
        return may_publish(now)

    dispatcher.term.may_publish = may_publish_until_closed  # type: ignore[method-assign]
    slots = [datetime.fromtimestamp(SLOT.timestamp() + i, UTC) for i in range(2)]
    await dispatcher.submit_all([(Due("a", to_ms(s), s.timestamp()), table.jobs["a"]) for s in slots])
    await dispatcher.drain(1.0)
    assert js.attempts == []
    assert sorted(dispatcher.unfinished_slots_ms) == [to_ms(s) for s in slots]
