"""Exactly-once dispatch across failover, with real `cronbus scheduler` processes.

Three replicas, five every-second jobs (catch-up `all`, so no slot may ever be missing). The
test kills the leader with SIGKILL at random moments, freezes one with SIGSTOP past its lease
and thaws it, restarts every replica, and restarts the nats-server. DISPATCH keeps only one
second of dedupe window here, so exactly-once rests on the scheduler reading DISPATCH history,
not on JetStream dropping duplicates. Then it reads DISPATCH and checks, per job, every slot of
the observed window exactly once, and that each dispatch was stored while its publisher held
the lease (by the lease history the server recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cronbus.scheduler.lease import LEASE_KEY
from cronbus.shared.bus import Bus
from cronbus.shared.natsd import EmbeddedNats, free_port
from cronbus.shared.settings import build_settings
from tests.scheduler.replicas import LeaseHistory, Replicas
from tests.scheduler.support import create_job, read_dispatches, spec
from tests.support import wait_for

pytestmark = pytest.mark.slow

JOBS = [f"job{i}" for i in range(5)]
LATE_JOB = "late"
KILLS = 10
TTL = 2.0
# Set to replay the random kill moments of a failed run (its seed is printed).
SEED_ENV = "CRONBUS_TEST_SEED"


async def leader_of(bus: Bus) -> str | None:
    kv = await bus.js.key_value(bus.settings.names.leader_bucket)
    try:
        entry = await kv.get(LEASE_KEY)
    except Exception:
        return None
    return entry.value.decode() if entry.value else None


async def _job_dispatched(bus: Bus, job_id: str) -> bool:
    return any(d.event.job_id == job_id for d in await read_dispatches(bus.js, bus.settings.names))


async def dispatched_by(bus: Bus, instance_id: str, after: datetime) -> bool:
    return any(
        d.event.scheduler == instance_id and d.stored_at > after
        for d in await read_dispatches(bus.js, bus.settings.names)
    )


async def newest_slots(bus: Bus) -> dict[str, datetime]:
    """Each job's newest dispatched slot."""
    newest: dict[str, datetime] = {}
    for d in await read_dispatches(bus.js, bus.settings.names):
        if d.event.job_id not in newest or d.event.slot > newest[d.event.job_id]:
            newest[d.event.job_id] = d.event.slot
    return newest


async def slots_beyond(bus: Bus, marks: dict[str, datetime], n: int) -> bool:
    """Whether every job in `marks` has dispatched its slot `n` seconds past its mark (every
    job here fires each second)."""
    newest = await newest_slots(bus)
    return all(j in newest and newest[j] >= mark + timedelta(seconds=n) for j, mark in marks.items())


async def test_exactly_once_across_kills_stops_restarts(tmp_path: Path, prefix: str) -> None:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    # Printed at the start, so a failed run shows it (captured output is shown on failure).
    print(f"{SEED_ENV}={seed}")
    rng = random.Random(seed)
    store = tmp_path / "nats"
    server = EmbeddedNats(store, port=free_port(), log_file=tmp_path / "nats-server.log")
    await server.start()
    settings = build_settings(
        environ={}, nats_url=server.url, prefix=prefix, instance_id="test", dedupe_window=1.0
    )
    replicas = Replicas(server.url, prefix, tmp_path, env={"CRONBUS_DEDUPE_WINDOW": "1"})
    history = LeaseHistory()
    stop_watch = asyncio.Event()
    watch_task: asyncio.Task[None] | None = None
    bus: Bus | None = None
    unverifiable: list[tuple[datetime, datetime]] = []
    failovers: list[float] = []
    try:
        bus = await Bus.open(settings, "test")
        the_bus = bus

        async def leader_kv() -> object:
            return await the_bus.js.key_value(settings.names.leader_bucket)

        watch_task = asyncio.create_task(history.follow(leader_kv, stop_watch))
        await wait_for(history.watching.is_set, what="lease watcher")
        for job_id in JOBS:
            await create_job(bus.js, settings.names, job_id, spec("* * * * * *"))
        for _ in range(3):
            replicas.spawn()
        first = await wait_for(lambda: leader_of(the_bus), timeout=20, what="a first leader")
        await wait_for(
            lambda: dispatched_by(the_bus, first, datetime.min.replace(tzinfo=UTC)),
            timeout=10,
            what="first dispatches",
        )

        # 1. SIGKILL the leader at random moments.
        for _ in range(KILLS):
            leader = await wait_for(lambda: leader_of(the_bus), timeout=10, what="a leader")
            await asyncio.sleep(rng.uniform(0.0, 1.2))  # a random moment in its term, not a sync
            killed_at = datetime.now(UTC)
            replicas.signal(leader, signal.SIGKILL)
            await replicas.wait_exit(leader)
            replicas.spawn()

            async def new_leader_dispatched(old: str = leader, since: datetime = killed_at) -> str | None:
                current = await leader_of(the_bus)
                if current and current != old and await dispatched_by(the_bus, current, since):
                    return current
                return None

            await wait_for(new_leader_dispatched, timeout=15, interval=0.02, what="failover after SIGKILL")
            failovers.append((datetime.now(UTC) - killed_at).total_seconds())

        # 2. SIGSTOP the leader past its lease, let another take over, then SIGCONT it.
        frozen = await wait_for(lambda: leader_of(the_bus), timeout=10, what="a leader")
        frozen_at = datetime.now(UTC)
        replicas.signal(frozen, signal.SIGSTOP)

        async def replaced(old: str = frozen, since: datetime = frozen_at) -> str | None:
            current = await leader_of(the_bus)
            if current and current != old and await dispatched_by(the_bus, current, since):
                return current
            return None

        await wait_for(replaced, timeout=15, what="takeover from a frozen leader")
        replicas.signal(frozen, signal.SIGCONT)
        # Let the thawed replica run while two more slots of every job go out: if it published
        # on its stale lease, the lease check below would see it.
        thawed_from = await newest_slots(the_bus)
        await wait_for(
            lambda: slots_beyond(the_bus, thawed_from, 2),
            timeout=20,
            what="the thawed replica to run a while",
        )

        # 3. Restart every replica (graceful stop, then new processes).
        for instance_id in replicas.alive():
            replicas.signal(instance_id, signal.SIGTERM)
        for instance_id in list(replicas.procs):
            assert await replicas.wait_exit(instance_id) in (0, -9), instance_id
        for _ in range(3):
            replicas.spawn()
        restarted_at = datetime.now(UTC)

        async def anyone_dispatched_since(since: datetime) -> bool:
            return any(d.stored_at > since for d in await read_dispatches(the_bus.js, settings.names))

        await wait_for(
            lambda: anyone_dispatched_since(restarted_at), timeout=20, what="dispatch after restart"
        )

        # 4. Restart the nats-server on the same port and store.
        outage_from = datetime.now(UTC)
        await server.stop()
        await server.start()
        history.rewatch.set()
        await wait_for(lambda: not history.rewatch.is_set(), timeout=20, what="lease watcher back")
        outage_to = datetime.now(UTC) + timedelta(seconds=0.5)
        unverifiable.append((outage_from, outage_to))
        # The job feed recovered too: a job created after the restart is dispatched.
        await create_job(bus.js, settings.names, LATE_JOB, spec("* * * * * *"))
        await wait_for(
            lambda: _job_dispatched(the_bus, LATE_JOB), timeout=20, what="a job created after the restart"
        )
        await wait_for(
            lambda: anyone_dispatched_since(outage_to + timedelta(seconds=1)),
            timeout=25,
            what="dispatch after the server restart",
        )
        settled_from = await newest_slots(the_bus)
        await wait_for(
            lambda: slots_beyond(the_bus, settled_from, 2), timeout=20, what="two more slots of every job"
        )

        for instance_id in replicas.alive():
            replicas.signal(instance_id, signal.SIGTERM)
        for instance_id in list(replicas.procs):
            await replicas.wait_exit(instance_id)
        dispatches = await read_dispatches(bus.js, settings.names)
    finally:
        replicas.kill_all()
        stop_watch.set()
        if watch_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch_task, timeout=5)
        if bus is not None:
            await bus.close()
        await server.stop()

    # Every slot of every job, from its first dispatched slot to its last, exactly once.
    for job_id in [*JOBS, LATE_JOB]:
        slots = Counter(d.event.slot for d in dispatches if d.event.job_id == job_id)
        twice = {s: n for s, n in slots.items() if n > 1}
        assert not twice, f"{job_id}: slots dispatched more than once: {twice}"
        ordered = sorted(slots)
        expected = [ordered[0] + timedelta(seconds=i) for i in range(len(ordered))]
        missing = sorted(set(expected) - set(ordered))
        assert not missing, f"{job_id}: {len(missing)} slots never dispatched, e.g. {missing[:5]}"
        if job_id != LATE_JOB:
            assert len(ordered) > 25, f"{job_id}: only {len(ordered)} slots observed"

    # Every dispatch was stored while its publisher held the lease.
    deposed = []
    for d in dispatches:
        if any(a <= d.stored_at <= b for a, b in unverifiable):
            continue
        holder = history.holder_at(d.stored_at, TTL)
        if holder != d.event.scheduler:
            deposed.append((d.event.scheduler, holder, d.stored_at.isoformat(), d.msg_id))
    assert not deposed, f"dispatches by a replica that did not hold the lease: {deposed[:5]}"
    assert len(failovers) == KILLS
    print(f"failover after SIGKILL (s): {sorted(round(f, 2) for f in failovers)}")
