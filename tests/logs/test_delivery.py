"""Delivery trouble: replays, malformed messages, a NATS restart. Nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.projector import Delivery, Pull, feeds
from cronbus.shared.bus import Bus
from cronbus.shared.events import Event
from cronbus.shared.history.schema import jobs, log_chunks, projector_positions, run_attempts, runs
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from tests.logs.harness import (
    T0,
    job_created,
    positions,
    publish,
    rows,
    run_events,
    running_logs,
    snapshot,
    wait_rows,
)
from tests.support import wait_for


def _history(jobs_count: int, runs_count: int) -> list[Event]:
    events: list[Event] = [job_created(f"job-{j}") for j in range(jobs_count)]
    for r in range(runs_count):
        events += run_events(f"job-{r % jobs_count}", T0 + timedelta(minutes=r), attempts=2)
    return events


async def _projected(history: AsyncEngine, runs_count: int) -> None:
    await wait_for(
        lambda: _all_succeeded(history, runs_count), timeout=20, what=f"{runs_count} runs succeeded"
    )
    await wait_rows(history, log_chunks, 2 * runs_count)


async def _all_succeeded(history: AsyncEngine, count: int) -> bool:
    found = await rows(history, runs)
    assert len(found) <= count
    return len(found) == count and all(r["status"] == "succeeded" for r in found)


async def test_replays_change_nothing(history_settings: Settings, bus: Bus, history: AsyncEngine):
    await publish(bus, history_settings, *_history(3, 20))
    async with running_logs(history_settings):
        await _projected(history, 20)
    before = await snapshot(history)
    assert len(before["run_attempts"]) == 40

    # 1. The consumers are gone (e.g. deleted by an operator): they are recreated from the
    #    stored positions, and what is re-delivered is skipped.
    for feed in feeds(history_settings.names):
        await bus.js.delete_consumer(feed.stream, feed.consumer)
    async with running_logs(history_settings) as service:
        await publish(bus, history_settings, job_created("job-late"))
        await wait_for(
            lambda: _with_job(history, "job-late"), timeout=15, what="a new event after the replay"
        )
        assert sum(p.applied for p in service.projectors) == 1
    after = await snapshot(history)
    assert [j["id"] for j in after["jobs"]] == ["job-0", "job-1", "job-2", "job-late"]
    after["jobs"] = [j for j in after["jobs"] if j["id"] != "job-late"]
    jobs_position = next(p for p in after["projector_positions"] if p["consumer"] == "logs-jobs")
    jobs_position["stream_seq"] -= 1
    assert after == before

    # 2. The positions are gone too: everything is applied again, to the same result, because
    #    every write is an idempotent upsert.
    async with history.begin() as conn:
        await conn.execute(delete(projector_positions))
    for feed in feeds(history_settings.names):
        await bus.js.delete_consumer(feed.stream, feed.consumer)
    async with running_logs(history_settings) as service:
        await wait_for(
            lambda: sum(p.applied for p in service.projectors) == 3 + 1 + 20 * 7,
            timeout=20,
            what="every event applied again",
        )
    again = await snapshot(history)
    assert again["runs"] == before["runs"]
    assert again["run_attempts"] == before["run_attempts"]
    assert again["log_chunks"] == before["log_chunks"]
    assert len(again["jobs"]) == 4


async def test_a_malformed_message_is_terminated_and_does_not_block(
    history_settings: Settings, bus: Bus, history: AsyncEngine, caplog
):
    n = history_settings.names
    good_before = run_events("job-m", T0, attempts=1)
    good_after = run_events("job-m", T0 + timedelta(minutes=1), attempts=1)
    await publish(bus, history_settings, *good_before)
    bad = await bus.js.publish(n.run_subject("job-m", "not-a-run"), b'{"type": "run.started", "oops": 1}')
    garbage = await bus.js.publish(n.log_subject("x"), b"\xff\x00 not json")
    await publish(bus, history_settings, *good_after)

    async with running_logs(history_settings):
        await wait_for(lambda: _all_succeeded(history, 2), timeout=15, what="both good runs")
        await wait_rows(history, log_chunks, 2)
        positions = await wait_for(lambda: _positions(history, "logs-runs", "logs-logs"), what="positions")
        info = await wait_for(
            lambda: _settled(bus, n.runs_stream, "logs-runs"), timeout=10, what="runs consumer settled"
        )
    assert positions["logs-runs"] == 5
    assert positions["logs-logs"] == garbage.seq + 1
    assert info.num_ack_pending == 0
    assert info.num_redelivered == 0
    logged = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert any(f"seq {bad.seq}" in m and n.runs_stream in m for m in logged), logged
    assert any(f"seq {garbage.seq}" in m and n.logs_stream in m for m in logged), logged


async def test_projection_survives_a_nats_restart(
    history_settings: Settings, bus: Bus, history: AsyncEngine, nats_server: EmbeddedNats
):
    async with running_logs(history_settings) as service:
        await publish(bus, history_settings, *_history(2, 5))
        await _projected(history, 5)
        await nats_server.stop()
        await nats_server.start()  # same port, same store
        await wait_for(lambda: bus.nc.is_connected, timeout=15, what="test bus reconnected")
        await publish(bus, history_settings, *[e for r in range(5, 10) for e in _run(r)])
        await _projected(history, 10)
        # Every projector noticed the reconnect and bound again from its stored position.
        await wait_for(lambda: all(p.binds >= 2 for p in service.projectors), what="bound again")
    assert len(await rows(history, run_attempts)) == 20
    assert len(await rows(history, jobs)) == 2


def _run(r: int) -> list[Event]:
    return list(run_events(f"job-{r % 2}", T0 + timedelta(minutes=r), attempts=2))


async def _with_job(history: AsyncEngine, job_id: str) -> bool:
    return any(j["id"] == job_id for j in await rows(history, jobs))


async def _positions(history: AsyncEngine, *consumers: str) -> dict[str, int] | None:
    found = await positions(history)
    return found if all(c in found for c in consumers) else None


async def _settled(bus: Bus, stream: str, consumer: str):  # type: ignore[no-untyped-def]
    info = await bus.js.consumer_info(stream, consumer)
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


@pytest.mark.parametrize("then_more", [True, False], ids=["gap", "tail"])
async def test_a_lost_delivery_is_delivered_again_at_once(
    history_settings: Settings,
    bus: Bus,
    history: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    then_more: bool,
):
    """Another client takes (and never acks) a message of the projector's consumer while the
    projector is between fetches, as if it were lost on a dropped connection or in a consumer
    leader change. With a later message (`gap`) the projector sees the gap in the delivery
    sequence; when it was the last one (`tail`) no gap shows, but the consumer says it
    delivered more than the projector received. Either way the projector recreates its
    consumer from its position, so the lost message is projected now, not after the 60 s ack
    wait, and never skipped."""
    n = history_settings.names
    gate = asyncio.Event()
    gate.set()
    fetch = Pull.fetch

    async def gated(self: Pull, batch: int, timeout: float, linger: float = 0.0) -> list[Delivery]:
        await gate.wait()
        return await fetch(self, batch, timeout, linger)

    monkeypatch.setattr(Pull, "fetch", gated)
    thief = await bus.js.pull_subscribe_bind(durable="logs-runs", stream=n.runs_stream)

    async def waiting(count: int) -> bool:
        info = await bus.js.consumer_info(n.runs_stream, "logs-runs")
        return info.num_waiting == count

    async with running_logs(history_settings) as service:
        [runs_projector] = [p for p in service.projectors if p.feed.kind == "runs"]
        first, lost, later = (
            [e for e in _run(r) if e.__struct_config__.tag == "run.finished"][-1] for r in range(3)
        )
        await publish(bus, history_settings, first)
        await wait_for(lambda: _run_status(history, first.run_id, "succeeded"), timeout=10,  # type: ignore[attr-defined]
                       what="first run projected")  # fmt: skip
        gate.clear()
        # The projector's last pull request expires; then the other client's is the only one.
        await wait_for(lambda: waiting(0), timeout=10, what="no pull request waiting")
        steal = asyncio.create_task(thief.fetch(1, timeout=10))
        await wait_for(lambda: waiting(1), timeout=10, what="the other client's pull request waiting")
        await publish(bus, history_settings, lost)
        [stolen] = await steal
        assert stolen.subject.rsplit(".", 1)[1] == lost.run_id  # type: ignore[attr-defined]
        if then_more:
            await publish(bus, history_settings, later)
        binds = runs_projector.binds
        gate.set()
        await wait_for(
            lambda: _run_status(history, lost.run_id, "succeeded"),  # type: ignore[attr-defined]
            timeout=10,
            what="the lost run projected",
        )
        assert runs_projector.binds > binds
        if then_more:
            await wait_for(lambda: _run_status(history, later.run_id, "succeeded"), timeout=10,  # type: ignore[attr-defined]
                           what="the later run projected")  # fmt: skip
    await thief.unsubscribe()


async def _run_status(history: AsyncEngine, run_id: str, status: str) -> bool:
    return any(r["id"] == run_id and r["status"] == status for r in await rows(history, runs))


def _delivered(reply: str) -> Msg:
    """A message as the server delivers it to a pull request (no client: nothing is sent)."""
    return Msg(_client=cast(Any, None), subject="s", reply=reply)


def test_a_deliverys_sequences_are_read_from_either_form_of_reply_subject():
    older = _delivered("$JS.ACK.RUNS.logs-runs.1.42.7.1700000000000000000.3")
    newer = _delivered("$JS.ACK.hub.ACCHASH.RUNS.logs-runs.2.42.7.1700000000000000000.3.xyz")
    for msg in (older, newer):
        delivery = Delivery.of(msg)
        assert (delivery.seq, delivery.delivered, delivery.pending) == (42, 7, 3)
        assert delivery.seq == msg.metadata.sequence.stream
        assert delivery.delivered == msg.metadata.sequence.consumer
        assert delivery.pending == msg.metadata.num_pending
    with pytest.raises(ValueError):
        Delivery.of(_delivered("_INBOX.abc"))
