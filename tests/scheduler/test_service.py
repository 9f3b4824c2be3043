"""One scheduler replica in-process against a real nats-server: what a user observes in
DISPATCH and in the scheduler bucket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from cronbus.scheduler.app import SchedulerService
from cronbus.scheduler.domain import Timetable
from cronbus.scheduler.feed import JobFeed
from cronbus.scheduler.leadership import DISPATCH_QUANTUM, STATUS_KEY
from cronbus.scheduler.lease import LEASE_KEY
from cronbus.scheduler.watermark import WATERMARK_KEY, Watermark
from cronbus.shared.bus import Bus
from cronbus.shared.events import (
    Catchup,
    JobDeleted,
    JobPaused,
    JobResumed,
    JobUpdated,
    dispatch_msg_id,
    run_id_for,
)
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from cronbus.shared.status import decode_scheduler_status
from tests.scheduler.support import create_job, publish_job, read_dispatches, spec
from tests.support import wait_for


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    bus = await Bus.open(settings, "test")
    yield bus
    await bus.close()


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[SchedulerService]:
    service = SchedulerService(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        await asyncio.wait_for(service.ready.wait(), timeout=10)
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=15)


async def slots_of(bus: Bus, job_id: str) -> list[datetime]:
    return [
        d.event.slot for d in await read_dispatches(bus.js, bus.settings.names) if d.event.job_id == job_id
    ]


async def test_every_second_job_dispatches_each_slot_once(settings: Settings, bus: Bus) -> None:
    names = settings.names
    async with running(settings) as service:
        await wait_for(lambda: service.leading.is_set(), what="leadership")
        created = await create_job(bus.js, names, "tick", spec("* * * * * *"))
        dispatches = await wait_for(
            lambda: _at_least(bus, "tick", 3), timeout=8, what="three dispatches of an every-second job"
        )
    first = dispatches[0]
    # The first slot is the first whole second after the job was created, dispatched on time
    # (generously: lateness targets are the benchmark's, this only catches a slot left behind).
    assert first.event.slot == created.occurred_at.replace(microsecond=0) + timedelta(seconds=1)
    assert first.event.dispatched_at - first.event.slot < timedelta(seconds=3)
    slots = [d.event.slot for d in dispatches]
    assert len(slots) == len(set(slots))
    assert slots == sorted(slots)
    for d in dispatches:
        assert d.event.scheduler == settings.instance_id
        assert d.msg_id == dispatch_msg_id("tick", d.event.slot)
        assert d.event.run_id == run_id_for("tick", d.event.slot)
        assert d.event.spec.schedule == "* * * * * *"
        assert d.event.job_revision == 1
        assert d.event.pool == "default"


async def test_slots_due_back_to_back_go_out_together_and_never_early(
    settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty jobs due a millisecond apart: the leader wakes at most once per quantum for them
    (one write, one batch for the runners) instead of twenty times, and no slot goes early;
    jobs created meanwhile (each wakes the leader) do not make it dispatch sooner."""
    names = settings.names
    async with running(settings) as service:
        await wait_for(lambda: service.leading.is_set(), what="leadership")
        wakeups: list[float] = []
        pop_due = Timetable.pop_due

        def counted(timetable: Timetable, now: float, limit: int):  # type: ignore[no-untyped-def]
            due = pop_due(timetable, now, limit=limit)
            if due:
                wakeups.append(time.monotonic())
            return due

        monkeypatch.setattr(Timetable, "pop_due", counted)
        base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        ids = [f"b{i:02d}" for i in range(20)]
        for i, job_id in enumerate(ids):
            anchor = base + timedelta(milliseconds=i)
            await create_job(bus.js, names, job_id, spec("@every 10s", anchor=anchor))

        async def changes_meanwhile() -> None:
            start = base - timedelta(milliseconds=5)
            await wait_for(lambda: datetime.now(UTC) >= start, interval=0.001, what="the window")
            later = spec("@every 1h", anchor=base + timedelta(hours=1))
            for i in range(40):
                await create_job(bus.js, names, f"c{i:02d}", later)

        changes = asyncio.create_task(changes_meanwhile())
        found = await wait_for(lambda: _each_once(bus, ids), timeout=15, what="a dispatch of each job")
        await changes
    assert all(d.event.dispatched_at >= d.event.slot for d in found)
    gaps = [b - a for a, b in itertools.pairwise(wakeups)]
    assert len(wakeups) <= 20e-3 / DISPATCH_QUANTUM + 2, wakeups
    assert all(gap >= DISPATCH_QUANTUM * 0.9 for gap in gaps), gaps


async def _each_once(bus: Bus, job_ids: list[str]) -> list:  # type: ignore[type-arg]
    found = [d for d in await read_dispatches(bus.js, bus.settings.names) if d.event.job_id in job_ids]
    return found if {d.event.job_id for d in found} == set(job_ids) else []


async def _at_least(bus: Bus, job_id: str, n: int) -> list:  # type: ignore[type-arg]
    found = [d for d in await read_dispatches(bus.js, bus.settings.names) if d.event.job_id == job_id]
    return found if len(found) >= n else []


async def test_pause_resume_update_delete_take_effect(settings: Settings, bus: Bus) -> None:
    names = settings.names
    async with running(settings) as service:
        await wait_for(lambda: service.leading.is_set(), what="leadership")
        await create_job(bus.js, names, "j", spec("* * * * * *", catchup=Catchup(policy="skip")))
        await wait_for(lambda: _at_least(bus, "j", 1), what="first dispatch")

        await publish_job(bus.js, names, JobPaused(job_id="j", revision=2))
        paused_at = datetime.now(UTC)
        await wait_for(lambda: service.timetable.jobs["j"].paused, what="pause applied")
        # Let slots pass while paused: none may be dispatched (policy skip).
        await wait_for(lambda: datetime.now(UTC) > paused_at + timedelta(seconds=2.5), what="time")
        assert not [s for s in await slots_of(bus, "j") if s > paused_at + timedelta(seconds=1)]

        await publish_job(bus.js, names, JobResumed(job_id="j", revision=3))
        resumed_at = datetime.now(UTC)
        await wait_for(
            lambda: _slots_after(bus, "j", resumed_at - timedelta(seconds=1)),
            timeout=3,
            what="dispatch after resume",
        )
        during = [
            s
            for s in await slots_of(bus, "j")
            if paused_at + timedelta(seconds=1) < s < resumed_at - timedelta(seconds=1)
        ]
        assert during == []

        await publish_job(
            bus.js, names, JobUpdated(job_id="j", revision=4, spec=spec("*/2 * * * * *", pool="gpu"))
        )
        await wait_for(lambda: _pool_seen(bus, "j", "gpu"), timeout=4, what="dispatch with the updated spec")
        await publish_job(bus.js, names, JobDeleted(job_id="j", revision=5))
        await wait_for(lambda: "j" not in service.timetable.jobs, what="delete applied")
        deleted_at = datetime.now(UTC)
        await wait_for(lambda: datetime.now(UTC) > deleted_at + timedelta(seconds=2.5), what="time")
        assert not [s for s in await slots_of(bus, "j") if s > deleted_at + timedelta(seconds=1)]


async def _slots_after(bus: Bus, job_id: str, t: datetime) -> bool:
    return any(s > t for s in await slots_of(bus, job_id))


async def _pool_seen(bus: Bus, job_id: str, pool: str) -> bool:
    return any(
        d.event.pool == pool and d.event.slot.second % 2 == 0 and d.event.job_revision == 4
        for d in await read_dispatches(bus.js, bus.settings.names)
        if d.event.job_id == job_id
    )


async def test_status_watermark_and_release(settings: Settings, bus: Bus) -> None:
    names = settings.names
    await publish_job_raw(bus, names.job_subject("broken"), b"{not json")
    await create_job(bus.js, names, "bad", spec("0 0 30 2 *"))
    await create_job(bus.js, names, "ok", spec("* * * * * *"))
    state = await bus.js.key_value(names.scheduler_bucket)
    leader = await bus.js.key_value(names.leader_bucket)
    async with running(settings) as service:
        await wait_for(lambda: service.leading.is_set(), what="leadership")
        entry = await leader.get(LEASE_KEY)
        assert entry.value == settings.instance_id.encode()

        async def status_with_watermark() -> object:
            try:
                status = decode_scheduler_status((await state.get(STATUS_KEY)).value or b"")
            except Exception:
                return None
            return status if status.watermark and status.dispatched_total >= 2 else None

        status = await wait_for(status_with_watermark, timeout=6, what="status with a watermark")
        assert status.leader == settings.instance_id
        assert status.jobs == 2
        assert "bad" in status.schedule_errors and "never fire" in status.schedule_errors["bad"]
        assert status.lease_revision > 0
        assert abs((datetime.now(UTC) - status.watermark).total_seconds()) < 3
    watermark = msgspec.json.decode((await state.get(WATERMARK_KEY)).value or b"", type=Watermark)
    assert watermark.leader == settings.instance_id
    # A clean stop gives the lease back at once instead of letting it expire.
    with pytest.raises(KeyNotFoundError):
        await leader.get(LEASE_KEY)


async def publish_job_raw(bus: Bus, subject: str, data: bytes) -> None:
    await bus.js.publish(subject, data)


async def test_restart_catches_up_missed_slots_by_policy(settings: Settings, bus: Bus) -> None:
    """Downtime longer than the grace: `all` gets every missed slot, `latest` one, `skip` none."""
    names = settings.names
    for job_id, policy in (("all", "all"), ("latest", "latest"), ("skip", "skip")):
        await create_job(bus.js, names, job_id, spec("* * * * * *", catchup=Catchup(policy=policy)))
    async with running(settings) as service:
        await wait_for(lambda: _at_least(bus, "all", 1), what="first dispatch")
        stopped_service = service
    assert not stopped_service.leading.is_set()
    down_from = time.time()
    # The scheduler is down for more than the grace (5 s).
    await wait_for(lambda: time.time() > down_from + 7.5, timeout=10, what="downtime")
    async with running(settings) as service:
        await wait_for(lambda: _at_least(bus, "skip", 1), timeout=5, what="restart")
        restarted = time.time()
        await wait_for(lambda: time.time() > restarted + 1.5, what="time")
    dispatches = await read_dispatches(bus.js, names)
    for job_id in ("all", "latest", "skip"):
        slots = [d.event.slot for d in dispatches if d.event.job_id == job_id]
        assert len(slots) == len(set(slots)), job_id
    catchup = {
        j: [d for d in dispatches if d.event.job_id == j and d.event.trigger == "catchup"]
        for j in ("all", "latest", "skip")
    }
    assert len(catchup["all"]) >= 2
    assert len(catchup["latest"]) == 1
    assert catchup["skip"] == []
    # `all` has no gap at all: every second from its first slot to its last.
    slots = sorted(d.event.slot for d in dispatches if d.event.job_id == "all")
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]


async def test_a_malformed_jobs_message_is_logged_with_its_sequence_and_skipped(
    settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    names = settings.names
    await create_job(bus.js, names, "before", spec("0 3 * * *"))
    await publish_job_raw(bus, names.job_subject("broken"), b'{"type": "job.created", "job_id": 7')
    await create_job(bus.js, names, "after", spec("0 3 * * *"))
    seen: list[str] = []
    feed = JobFeed(bus.js, names, lambda event: seen.append(event.job_id))
    stopping = asyncio.Event()
    with caplog.at_level(logging.ERROR, logger="cronbus.scheduler.feed"):
        task = asyncio.create_task(feed.run(stopping))
        try:
            await asyncio.wait_for(feed.caught_up.wait(), timeout=10)
            await wait_for(lambda: seen == ["before", "after"], what="both valid events applied")
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=10)
    assert feed.last_seq == 3
    assert any("malformed" in r.getMessage() and "seq 2" in r.getMessage() for r in caplog.records)


async def test_a_clean_stop_keeps_the_watermark_below_slots_it_could_not_dispatch(
    settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """DISPATCH refuses publishes (no stream listens) while the KV buckets work; the replica is
    stopped: the slots it gave up must stay after the watermark, for the next leader."""
    settings = dataclasses.replace(settings, grace_period=0.5)
    names = settings.names
    await create_job(bus.js, names, "tick", spec("* * * * * *"))
    state = await bus.js.key_value(names.scheduler_bucket)
    config = (await bus.js.stream_info(names.dispatch_stream)).config
    failed_slots: set[str] = set()

    def failures() -> int:
        failed_slots.update(
            r.getMessage().split(" slot ")[1].split()[0]
            for r in caplog.records
            if r.name == "cronbus.scheduler.dispatch" and "dispatch of job tick slot" in r.getMessage()
        )
        return len(failed_slots)

    with caplog.at_level(logging.WARNING, logger="cronbus.scheduler.dispatch"):
        async with running(settings) as service:
            await wait_for(lambda: service.leading.is_set(), what="leadership")
            await wait_for(lambda: _at_least(bus, "tick", 1), what="a first dispatch")
            await bus.js.update_stream(dataclasses.replace(config, subjects=[f"{names.prefix}.nowhere.>"]))
            await wait_for(lambda: failures() >= 1, timeout=10, what="a slot failing to publish")
    await bus.js.update_stream(config)
    stored = await slots_of(bus, "tick")
    first_unstored = max(stored) + timedelta(seconds=1)
    watermark = msgspec.json.decode((await state.get(WATERMARK_KEY)).value or b"", type=Watermark)
    assert watermark.at < first_unstored, (watermark.at, first_unstored, sorted(failed_slots))


async def test_a_reconnect_ends_the_term_and_the_next_starts_from_dispatch(
    settings: Settings, bus: Bus, nats_server: EmbeddedNats
) -> None:
    """Publishes of a term may be lost with its connection: after a reconnect the replica
    takes over again (watermark, DISPATCH history) before it dispatches, and no slot goes
    out twice or is missed."""
    # A lease that outlives the outage: the term must end with the connection, not the fence.
    settings = dataclasses.replace(settings, lease_ttl=30.0)
    names = settings.names
    await create_job(bus.js, names, "tick", spec("* * * * * *"))
    async with running(settings) as service:
        await wait_for(lambda: _at_least(bus, "tick", 2), what="dispatches before the outage")
        first_term = service.dispatcher
        await nats_server.stop()
        await wait_for(lambda: not service.leading.is_set(), what="the term ended")
        await nats_server.start()
        await wait_for(
            lambda: service.leading.is_set() and service.dispatcher is not first_term,
            timeout=20,
            what="a new term",
        )
        resumed_at = datetime.now(UTC)
        await wait_for(
            lambda: _slots_after(bus, "tick", resumed_at), timeout=10, what="dispatch in the new term"
        )
    slots = sorted(await slots_of(bus, "tick"))
    assert len(slots) == len(set(slots))
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]
