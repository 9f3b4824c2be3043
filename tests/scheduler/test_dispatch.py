"""The dispatcher against a JetStream stand-in whose acks fail, get lost, or come late:
every slot is published until acknowledged, always under the same Nats-Msg-Id, and nothing is
published once the fence closes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from nats.js.api import PubAck

from cronbus.scheduler.dispatch import Dispatcher
from cronbus.scheduler.domain import Due, Fence, Timetable, to_ms
from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import JobCreated, decode_dispatch
from cronbus.shared.names import Names
from tests.scheduler.support import spec
from tests.support import wait_for

SLOT = datetime(2026, 1, 1, tzinfo=UTC)


class StandInJetStream:
    """Answers publishes from a script: 'fail' (error ack), 'lose' (no ack ever) or 'ok'."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.attempts: list[str] = []
        self.stored: list[bytes] = []

    async def publish_async(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self.attempts.append(headers[MSG_ID])
        outcome = self.script.pop(0) if self.script else "ok"
        if outcome == "fail":
            future.set_exception(ConnectionError("connection reset"))
        elif outcome == "ok":
            duplicate = any(h == headers[MSG_ID] for h in self.attempts[:-1]) and bool(self.stored)
            if not duplicate:
                self.stored.append(payload)
            future.set_result(PubAck(stream="S", seq=len(self.stored), duplicate=duplicate))
        return future


def _setup(script: list[str], fence_open: bool = True) -> tuple[Dispatcher, StandInJetStream, Timetable]:
    js = StandInJetStream(script)
    fence = Fence(ttl=60.0, margin=1.0)
    if fence_open:
        fence.renewed(time.monotonic())
    table = Timetable()
    table.apply(JobCreated(job_id="a", revision=3, spec=spec("* * * * * *", pool="p")), SLOT.timestamp())
    dispatcher = Dispatcher(js, Names("t"), "me", fence, publish_timeout=0.2)  # type: ignore[arg-type]
    return dispatcher, js, table


async def test_failed_and_lost_publishes_are_retried_until_acknowledged() -> None:
    dispatcher, js, table = _setup(["fail", "lose", "ok"])
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    assert dispatcher.unfinished_slots_ms == [to_ms(SLOT)]
    await wait_for(lambda: dispatcher.dispatched_total == 1, timeout=5, what="acknowledged dispatch")
    assert js.attempts == ["a:" + str(to_ms(SLOT))] * 3
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


async def test_a_closed_fence_publishes_nothing() -> None:
    dispatcher, js, table = _setup([], fence_open=False)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    assert js.attempts == []
    assert dispatcher.fenced
    assert dispatcher.unfinished_slots_ms == []


async def test_an_ended_term_stops_retrying() -> None:
    dispatcher, js, table = _setup(["fail"] * 100)
    await dispatcher.submit(Due("a", to_ms(SLOT), SLOT.timestamp()), table.jobs["a"])
    await wait_for(lambda: len(js.attempts) >= 2, timeout=5, what="a retry")
    dispatcher.end_term()
    await dispatcher.drain(1.0)
    tried = len(js.attempts)
    assert dispatcher.unfinished_slots_ms == []
    assert js.stored == []
    assert len(js.attempts) == tried
