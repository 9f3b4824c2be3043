"""A consumer that resumes past the projector's position never makes it skip events.

After a consumer leader change, a consumer recreated from another position, or a second
logs instance sharing the consumer, the messages a projector receives can start after its
position with a delivery sequence that looks unbroken. The runs whose events fell in that
hole then stay `dispatched` in SQL while RUNS holds their outcome, and the projector sits at
the stream's end. The projector checks stream sequences against its position and binds
again from the position instead.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.projector import Projector, feeds
from cronbus.logs.store import HistoryWriter
from cronbus.shared.bus import Bus
from cronbus.shared.events import LogChunk, RunDispatched, run_id_for
from cronbus.shared.history.schema import projector_positions, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import FAST, T0, publish, rows, run_events
from tests.support import wait_for


async def test_a_consumer_that_starts_past_the_position_is_bound_again(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    n = history_settings.names
    [feed] = [f for f in feeds(n) if f.kind == "runs"]
    slots = [T0 + timedelta(minutes=m) for m in range(3)]
    lifecycles = [
        [e for e in run_events("job-r", slot, attempts=1) if not isinstance(e, LogChunk | RunDispatched)]
        for slot in slots
    ]
    # Run 0 is projected first: the position is its run.finished.
    await publish(bus, history_settings, *lifecycles[0])
    writer = HistoryWriter(history)
    projector = Projector(
        feed, bus.nc, bus.js, writer, reconnects=lambda: int(bus.nc.stats["reconnects"]), pacing=FAST
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(projector.run(stopping))
    try:
        await wait_for(lambda: _status(history, slots[0], "succeeded"), timeout=10, what="run 0 projected")
        position = await writer.position(feed.consumer)
        assert position == 2
        stopping.set()
        await asyncio.wait_for(task, timeout=10)

        # Runs 1 and 2 land on the stream; the projector binds again from its position (3)...
        seqs = await publish(bus, history_settings, *lifecycles[1], *lifecycles[2])
        await projector.bind()
        # ...and before it fetches, the consumer is replaced by one that starts at run 2, as a
        # consumer whose state is ahead of what this client received would.
        await bus.js.delete_consumer(feed.stream, feed.consumer)
        await bus.js.add_consumer(
            feed.stream,
            ConsumerConfig(
                durable_name=feed.consumer,
                ack_policy=AckPolicy.EXPLICIT,
                filter_subject=feed.subjects,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seqs[2],
            ),
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(projector.run(stopping))
        await wait_for(lambda: _at(history, feed.consumer, seqs[-1]), timeout=10, what="position at the end")
        await wait_for(
            lambda: _status(history, slots[1], "succeeded"), timeout=10, what="run 1 projected, not skipped"
        )
        assert await _status(history, slots[2], "succeeded")
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=10)


async def _status(history: AsyncEngine, slot, status: str) -> bool:  # type: ignore[no-untyped-def]
    run_id = run_id_for("job-r", slot)
    return any(r["id"] == run_id and r["status"] == status for r in await rows(history, runs))


async def _at(history: AsyncEngine, consumer: str, seq: int) -> bool:
    return any(
        p["consumer"] == consumer and p["stream_seq"] >= seq for p in await rows(history, projector_positions)
    )
