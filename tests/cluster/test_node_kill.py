"""Exactly once, and history equal to the streams, while NATS nodes die.

The production topology on a real 3-node JetStream cluster: every stream and bucket at three
replicas, two `cronbus scheduler` replicas, one `cronbus runner`, one `cronbus logs` on
PostgreSQL, each given all three NATS URLs. Jobs fire every second, some with catch-up `all`,
some `latest`. The test kills (SIGKILL) the node leading DISPATCH and the node leading the
JetStream meta group, alternately, lets the cluster elect new leaders, and restarts the node
on its old ports and store. Then it counts: every slot of every job, from its first dispatch
to its last, in DISPATCH exactly once; every dispatched run finished in RUNS; the SQL runs
table equal to the streams (directly, and by `cronbus check`'s `compare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections import Counter
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import asyncpg
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import select
from tests.cluster import NatsCluster
from tests.scheduler.replicas import FAST_LEASE, Replicas
from tests.scheduler.support import Dispatch, create_job, read_dispatches, spec
from tests.support import service_command, wait_for

from cronbus.logs.consistency import compare
from cronbus.shared.bus import Bus
from cronbus.shared.events import (
    Catchup,
    RunEvents,
    RunFinished,
    decode_run_event,
)
from cronbus.shared.history.schema import runs
from cronbus.shared.history.store import create_engine
from cronbus.shared.names import Names
from cronbus.shared.settings import Settings, async_database_url, build_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ALL_JOBS = [f"all{i}" for i in range(3)]
LATEST_JOBS = [f"latest{i}" for i in range(3)]
KILLS = 6


@pytest.fixture
def cluster_database(request: pytest.FixtureRequest) -> str:
    """A fresh PostgreSQL database; outside CI a server that is not reachable skips the test."""
    admin = str(request.getfixturevalue("postgres_admin_url")).replace(
        "postgresql+asyncpg://", "postgresql://"
    )

    async def reachable() -> bool:
        try:
            conn = await asyncpg.connect(admin, timeout=3)
        except (OSError, asyncpg.PostgresError) as exc:
            reason.append(repr(exc))
            return False
        await conn.close()
        return True

    reason: list[str] = []
    if not asyncio.run(reachable()) and not os.environ.get("CI"):
        pytest.skip(f"PostgreSQL at {admin} is not reachable: {reason[0]}")
    return str(request.getfixturevalue("postgres_url"))


async def opened(settings: Settings) -> Bus:
    """The test's own bus, its streams created: asked again while the new cluster's JetStream
    API still answers 503 (the services do the same through `Bus.open_when_ready`)."""
    bus = await asyncio.wait_for(Bus.open_when_ready(settings, "test", asyncio.Event()), timeout=60)
    assert bus is not None
    return bus


class Services:
    """The non-scheduler services as `cronbus <service>` processes, killed at the end."""

    def __init__(self, nats_url: str, prefix: str, log_dir: Path, env: dict[str, str]) -> None:
        self.nats_url = nats_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, service: str) -> None:
        with (self.log_dir / f"{service}.log").open("wb") as log:
            self.procs.append(
                subprocess.Popen(
                    service_command(service, nats_url=self.nats_url, prefix=self.prefix, instance_id=service),
                    env={**os.environ, **self.env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


async def read_runs(js: JetStreamContext, names: Names) -> list[RunEvents]:
    """Every event in RUNS, in stream order."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=10.0
    )
    sub = await js.pull_subscribe(names.runs_all, stream=names.runs_stream, config=config)
    out: list[RunEvents] = []
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(remaining, 1000), timeout=5.0):
                remaining -= 1
                out.append(decode_run_event(msg.data))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


def final_status(events: list[RunEvents]) -> dict[str, str]:
    """Each finished run's final status, by run id."""
    return {e.run_id: e.status for e in events if isinstance(e, RunFinished) and e.final}


async def test_every_slot_once_and_history_equal_to_streams_across_node_kills(
    tmp_path: Path, prefix: str, cluster_database: str
) -> None:
    env = {
        **FAST_LEASE,
        "CRONBUS_REPLICAS": "3",
        "CRONBUS_DATABASE_URL": cluster_database,
        "CRONBUS_HEARTBEAT": "1",
        "CRONBUS_ACK_WAIT": "5",
        "CRONBUS_HISTORY_RETENTION_INTERVAL": "0",
    }
    kills: list[tuple[str, int]] = []
    async with NatsCluster(tmp_path / "cluster") as cluster:
        settings = build_settings(
            environ={},
            nats_url=cluster.urls,
            prefix=prefix,
            instance_id="test",
            replicas=3,
            # As the services have it, so no one changes the buckets' TTLs back and forth.
            heartbeat=1.0,
            lease_ttl=2.0,
        )
        names = settings.names
        bus = await opened(settings)
        replicas = Replicas(cluster.urls, prefix, tmp_path, env=env)
        services = Services(cluster.urls, prefix, tmp_path, env)
        try:
            for job_id in ALL_JOBS:
                await create_job(bus.js, names, job_id, spec("* * * * * *"))
            for job_id in LATEST_JOBS:
                await create_job(
                    bus.js,
                    names,
                    job_id,
                    spec("* * * * * *", catchup=Catchup(policy="latest", window=3600.0)),
                )
            services.spawn("logs")
            services.spawn("runner")
            replicas.spawn()
            replicas.spawn()

            async def dispatched() -> list[Dispatch]:
                """DISPATCH as it is now; read again while the cluster is electing leaders."""
                found: list[list[Dispatch]] = []

                async def read() -> bool:
                    try:
                        found.append(await read_dispatches(bus.js, names))
                    except Exception:
                        return False
                    return True

                await wait_for(read, timeout=30, interval=0.2, what="reading DISPATCH")
                return found[-1]

            async def every_job_beyond(marks: dict[str, datetime], seconds: int) -> bool:
                newest: dict[str, datetime] = {}
                for d in await dispatched():
                    newest[d.event.job_id] = max(d.event.slot, newest.get(d.event.job_id, d.event.slot))
                return all(
                    job in newest and newest[job] >= mark + timedelta(seconds=seconds)
                    for job, mark in marks.items()
                )

            await wait_for(dispatched, timeout=30, what="first dispatches")
            first = await dispatched()
            start = {job: min(d.event.slot for d in first) for job in ALL_JOBS + LATEST_JOBS}
            await wait_for(lambda: every_job_beyond(start, 2), timeout=30, what="every job dispatching")

            for k in range(KILLS):
                if k % 2 == 0:
                    what, node = "DISPATCH leader", await cluster.wait_stream_leader(names.dispatch_stream)
                else:
                    what = "meta leader"
                    node = await cluster.wait_meta_leader()
                kills.append((what, node))
                marks = {
                    d.event.job_id: d.event.slot
                    for d in sorted(await dispatched(), key=lambda d: d.event.slot)
                }
                cluster.kill(node)

                async def others_elected(killed: int = node) -> bool:
                    stream = await cluster.stream_leader(names.dispatch_stream)
                    meta = await cluster.meta_leader()
                    return stream not in (None, killed) and meta not in (None, killed)

                await wait_for(
                    others_elected, timeout=30, interval=0.1, what=f"a new leader after killing {what}"
                )
                await cluster.restart(node)
                await cluster.wait_healthy(timeout=60)
                await wait_for(
                    lambda m=marks: every_job_beyond(m, 3),
                    timeout=40,
                    what=f"dispatching after kill {k}",
                )

            for instance_id in replicas.alive():
                replicas.signal(instance_id, signal.SIGTERM)
            for instance_id in list(replicas.procs):
                await replicas.wait_exit(instance_id, timeout=20)
            # A publish the cluster was still committing when its scheduler exited lands
            # later: read until DISPATCH and the finished runs in RUNS name the same runs.
            settled: list[tuple[list[Dispatch], dict[str, str]]] = []

            async def all_finished() -> bool:
                try:
                    dispatches = await read_dispatches(bus.js, names)
                    statuses = final_status(await read_runs(bus.js, names))
                except Exception:
                    return False
                settled.append((dispatches, statuses))
                return {d.event.run_id for d in dispatches} == set(statuses)

            try:
                await wait_for(
                    all_finished, timeout=60, interval=0.5, what="every dispatched run finished, and no other"
                )
            finally:
                if settled:  # the slots first: a gap or a duplicate says more than a timeout
                    assert_every_slot_once(settled[-1][0])
            dispatches, statuses = settled[-1]

            engine = create_engine(async_database_url(cluster_database, tmp_path))
            try:

                async def sql_equal() -> dict[str, str] | None:
                    async with engine.connect() as conn:
                        rows = dict((await conn.execute(select(runs.c.id, runs.c.status))).all())
                    return rows if rows == statuses else None

                try:
                    await wait_for(sql_equal, timeout=60, interval=0.5, what="SQL runs equal to RUNS")
                except AssertionError:
                    async with engine.connect() as conn:
                        rows = dict((await conn.execute(select(runs.c.id, runs.c.status))).all())
                    differ = {r: (rows.get(r), statuses.get(r)) for r in set(rows) | set(statuses)}
                    differ = {r: v for r, v in differ.items() if v[0] != v[1]}
                    raise AssertionError(
                        f"{len(differ)} runs differ (sql, stream): {list(differ.items())[:5]}"
                    ) from None
            finally:
                await engine.dispose()
            # And by the project's own check: jobs, dispatches and runs, row by row, once every
            # projector has reached the end of its stream (the runs' statuses above come from
            # RUNS; DISPATCH is projected on its own and may still be catching up).
            reports = []

            unavailable: list[Exception] = []

            async def consistent() -> bool:
                try:
                    reports.append(await compare(cluster.urls, cluster_database, prefix))
                except nats.errors.Error as exc:  # a JetStream request no node answered in time
                    unavailable.append(exc)
                    return False
                return reports[-1].ok

            try:
                await wait_for(consistent, timeout=60, interval=1.0, what="cronbus check: no difference")
            except AssertionError:
                raise AssertionError(
                    reports[-1].table() if reports else f"cronbus check never ran: {unavailable[-1]!r}"
                ) from None
        finally:
            replicas.kill_all()
            services.kill_all()
            await bus.close()

    assert cluster.kills == KILLS, kills
    stored = sorted(d.stored_at for d in dispatches)
    pause = max((b - a).total_seconds() for a, b in pairwise(stored))
    print(f"kills: {kills}; dispatches: {len(dispatches)}; runs: {len(statuses)}; longest pause {pause:.1f}s")


def assert_every_slot_once(dispatches: list[Dispatch]) -> None:
    """Every slot of every job, from its first dispatched slot to its last, exactly once. No
    node was away for longer than the grace, so `latest` jobs have no gap either."""
    assert len({d.msg_id for d in dispatches}) == len(dispatches)
    for job_id in ALL_JOBS + LATEST_JOBS:
        slots = Counter(d.event.slot for d in dispatches if d.event.job_id == job_id)
        twice = {s: n for s, n in slots.items() if n > 1}
        assert not twice, f"{job_id}: slots dispatched more than once: {twice}"
        ordered = sorted(slots)
        expected = {ordered[0] + timedelta(seconds=i) for i in range(len(ordered))}
        gaps = sorted(expected - set(ordered))
        assert not gaps, f"{job_id}: {len(gaps)} slots never dispatched, e.g. {gaps[:5]}"
        assert len(ordered) > 3 * KILLS, f"{job_id}: only {len(ordered)} slots observed"
