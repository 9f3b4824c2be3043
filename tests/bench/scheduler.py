"""Scheduler benchmarks: dispatch lateness, a 10k burst, failover, memory and cold start.

Every scenario runs real `cronbus scheduler` processes against one embedded nats-server, each
under its own prefix. Lateness is measured as the server's storage time of a DISPATCH message
minus the slot's intended fire time (slot + jitter): what a runner could observe at best.
Run with `.venv/bin/python -m tests.bench scheduler`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cronbus.scheduler.lease import LEASE_KEY
from cronbus.shared.bus import Bus
from cronbus.shared.events import JobCreated, JobSpec, ShellExecutor, decode_dispatch, encode
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.schedule import jitter_for
from cronbus.shared.settings import Settings, build_settings
from tests.bench.common import Figure, percentile
from tests.scheduler.replicas import Replicas

STEADY_SECONDS = 20
STEADY_JOBS = 1000
BURST_JOBS = 10_000
DRILLS = 10
MEMORY_JOBS = 100_000


def _settings(server: EmbeddedNats) -> Settings:
    return build_settings(
        environ={}, nats_url=server.url, prefix="b" + uuid.uuid4().hex[:8], instance_id="bench"
    )


def _replicas(server: EmbeddedNats, settings: Settings, tmp: Path, **env: str) -> Replicas:
    log_dir = tmp / settings.prefix
    log_dir.mkdir(parents=True, exist_ok=True)
    return Replicas(server.url, settings.prefix, log_dir, env=env)


async def _publish_jobs(bus: Bus, specs: list[tuple[str, JobSpec]], concurrency: int = 512) -> None:
    names = bus.settings.names
    for start in range(0, len(specs), concurrency):
        await asyncio.gather(
            *(
                bus.js.publish(
                    names.job_subject(job_id), encode(JobCreated(job_id=job_id, revision=1, spec=spec))
                )
                for job_id, spec in specs[start : start + concurrency]
            )
        )


def _spec(schedule: str, **fields: object) -> JobSpec:
    return JobSpec(name="bench", schedule=schedule, executor=ShellExecutor(command="true"), **fields)  # type: ignore[arg-type]


async def _dispatches(bus: Bus, since: datetime | None = None) -> list[tuple[datetime, str, datetime, str]]:
    """(slot, job_id, stored_at, scheduler) of DISPATCH messages (stored at or after `since`)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    names = bus.settings.names
    sub = await bus.js.pull_subscribe(names.dispatch_all, stream=names.dispatch_stream, config=config)
    out = []
    remaining = (await sub.consumer_info()).num_pending or 0
    while remaining > 0:
        for msg in await sub.fetch(min(remaining, 2000), timeout=10.0):
            remaining -= 1
            event = decode_dispatch(msg.data)
            out.append((event.slot, event.job_id, msg.metadata.timestamp, event.scheduler))
    await sub.unsubscribe()
    return out


async def _first_dispatch_time(bus: Bus, timeout: float) -> datetime | None:
    deadline = time.monotonic() + timeout
    names = bus.settings.names
    while time.monotonic() < deadline:
        info = await bus.js.stream_info(names.dispatch_stream)
        if info.state.messages:
            msg = await bus.js.get_msg(names.dispatch_stream, info.state.first_seq)
            return msg.time
        await asyncio.sleep(0.01)
    return None


async def _leader(bus: Bus) -> str | None:
    kv = await bus.js.key_value(bus.settings.names.leader_bucket)
    try:
        entry = await kv.get(LEASE_KEY)
    except Exception:
        return None
    return entry.value.decode() if entry.value else None


async def _wait(condition, timeout: float, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"benchmark condition not met within {timeout}s")


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


async def steady_lateness(server: EmbeddedNats, tmp: Path) -> list[Figure]:
    settings = _settings(server)
    bus = await Bus.open(settings, "bench")
    replicas = _replicas(server, settings, tmp)
    try:
        # Jitter spreads 1000 every-second jobs evenly over each second: 1000 fires/s.
        await _publish_jobs(bus, [(f"s{i}", _spec("* * * * * *", jitter=0.999)) for i in range(STEADY_JOBS)])
        replicas.spawn()
        await _wait(lambda: _first_dispatch_time(bus, 0.1), timeout=30)
        start = datetime.now(UTC) + timedelta(seconds=2)
        await asyncio.sleep(2 + STEADY_SECONDS + 2)
        end = start + timedelta(seconds=STEADY_SECONDS)
    finally:
        for i in replicas.alive():
            replicas.signal(i, signal.SIGTERM)
        for i in list(replicas.procs):
            await replicas.wait_exit(i)
        replicas.kill_all()
    rows = await _dispatches(bus, since=start - timedelta(seconds=3))
    await bus.close()
    late = [
        (stored - (slot + jitter_for(job_id, slot, 0.999))).total_seconds()
        for slot, job_id, stored, _ in rows
        if start <= slot < end
    ]
    rate = len(late) / STEADY_SECONDS
    note = f"{len(late)} dispatches in {STEADY_SECONDS}s ({rate:.0f}/s; shortened from 60s)"
    p50, p99 = percentile(_ms(late), 50), percentile(_ms(late), 99)
    return [
        Figure("lateness p50 @1000 fires/s", p50, "ms", "<= 5", p50 <= 5, note),
        Figure("lateness p99 @1000 fires/s", p99, "ms", "<= 50", p99 <= 50, note),
    ]


async def burst(server: EmbeddedNats, tmp: Path) -> list[Figure]:
    settings = _settings(server)
    bus = await Bus.open(settings, "bench")
    replicas = _replicas(server, settings, tmp)
    at = (datetime.now(UTC) + timedelta(seconds=25)).replace(microsecond=0)
    cpu: list[float] = []
    try:
        await _publish_jobs(bus, [(f"b{i}", _spec(f"@at {at.isoformat()}")) for i in range(BURST_JOBS)])
        scheduler = psutil.Process(replicas.procs[replicas.spawn()].pid)

        async def cpu_from_before_the_slot() -> None:
            # The scheduler's CPU time spent on the burst (and little else: it is idle before).
            await asyncio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds() - 1))
            cpu.append(_cpu_seconds(scheduler))

        before = asyncio.create_task(cpu_from_before_the_slot())

        async def all_there() -> bool:
            info = await bus.js.stream_info(settings.names.dispatch_stream)
            return info.state.messages >= BURST_JOBS

        await _wait(all_there, timeout=60, interval=0.2)
        if before.done():
            cpu.append(_cpu_seconds(scheduler))
        before.cancel()
    finally:
        for i in replicas.alive():
            replicas.signal(i, signal.SIGTERM)
        for i in list(replicas.procs):
            await replicas.wait_exit(i)
        replicas.kill_all()
    rows = await _dispatches(bus)
    await bus.close()
    late = [(stored - slot).total_seconds() for slot, _, stored, _ in rows]
    p99 = percentile(_ms(late), 99)
    return [
        Figure(
            "10k due in one second: p99 lateness",
            p99,
            "ms",
            "<= 500",
            p99 <= 500,
            f"{len(rows)} dispatched, last {max(late) * 1000:.0f} ms late" + _cpu_note(cpu, len(rows)),
        )
    ]


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _cpu_note(cpu: list[float], dispatched: int) -> str:
    """The scheduler's CPU time from a second before the slot until every dispatch was stored:
    unlike the lateness, it hardly depends on what else the machine's cores are doing."""
    if len(cpu) != 2 or not dispatched:
        return ""
    spent = cpu[1] - cpu[0]
    return f"; scheduler CPU {spent * 1000:.0f} ms ({spent * 1e6 / dispatched:.0f} us/slot)"


async def failover(server: EmbeddedNats, tmp: Path) -> list[Figure]:
    settings = _settings(server)
    bus = await Bus.open(settings, "bench")
    replicas = _replicas(server, settings, tmp, CRONBUS_LEASE_TTL="2", CRONBUS_LEASE_RENEW="0.4")
    times: list[float] = []
    rng = random.Random(7)
    try:
        await _publish_jobs(bus, [(f"f{i}", _spec("* * * * * *")) for i in range(3)])
        replicas.spawn()
        replicas.spawn()
        await _wait(lambda: _first_dispatch_time(bus, 0.1), timeout=30)
        for _ in range(DRILLS):
            leader = await _wait(lambda: _leader(bus), timeout=15)
            await _wait(lambda leader=leader: _standby_ready(replicas, leader), timeout=15)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            killed = datetime.now(UTC)
            replicas.signal(leader, signal.SIGKILL)
            await replicas.wait_exit(leader)

            async def by_other(old: str = leader, since: datetime = killed) -> datetime | None:
                rows = await _dispatches(bus, since=since)
                return min((stored for _, _, stored, who in rows if who != old), default=None)

            first = await _wait(by_other, timeout=20, interval=0.02)
            times.append((first - killed).total_seconds())
            replicas.spawn()
    finally:
        replicas.kill_all()
        await bus.close()
    p99 = percentile(times, 99)
    return [
        Figure(
            "failover: SIGKILL leader -> first dispatch by the next",
            p99,
            "s",
            "p99 <= 3",
            p99 <= 3,
            f"{len(times)} drills, lease TTL 2s; p50 {percentile(times, 50):.2f}s, max {max(times):.2f}s",
        )
    ]


async def _standby_ready(replicas: Replicas, leader: str) -> bool:
    # A standby that is still starting would measure its start-up, not the failover.
    others = [i for i in replicas.alive() if i != leader]
    for instance_id in others:
        log = replicas.log_dir / f"{instance_id}.log"
        if log.exists() and b"ready with" in log.read_bytes():
            return True
    return False


async def memory_and_cold_start(server: EmbeddedNats, tmp: Path) -> list[Figure]:
    empty = _settings(server)
    full = _settings(server)
    empty_bus = await Bus.open(empty, "bench")
    full_bus = await Bus.open(full, "bench")
    idle = _replicas(server, empty, tmp)
    loaded = _replicas(server, full, tmp)
    try:
        baseline_id = idle.spawn()
        await _wait(lambda: _leader(empty_bus), timeout=30)
        await asyncio.sleep(3)
        baseline = psutil.Process(idle.procs[baseline_id].pid).memory_info().rss

        jobs = [(f"m{i:06d}", _spec("0 3 * * *")) for i in range(MEMORY_JOBS)]
        jobs.append(("tick", _spec("* * * * * *")))
        started = time.monotonic()
        await _publish_jobs(full_bus, jobs)
        published_in = time.monotonic() - started

        spawned = datetime.now(UTC)
        loaded_id = loaded.spawn()
        first = await _first_dispatch_time(full_bus, timeout=120)
        cold = (first - spawned).total_seconds() if first else float("nan")
        await asyncio.sleep(3)
        rss = psutil.Process(loaded.procs[loaded_id].pid).memory_info().rss
    finally:
        for r in (idle, loaded):
            for i in r.alive():
                r.signal(i, signal.SIGTERM)
            for i in list(r.procs):
                await r.wait_exit(i, timeout=30)
            r.kill_all()
        await empty_bus.close()
        await full_bus.close()
    growth = (rss - baseline) / 2**20 * (100_000 / MEMORY_JOBS)
    return [
        Figure(
            "scheduler RSS growth per 100k jobs",
            growth,
            "MiB",
            "<= 50",
            growth <= 50,
            f"leader RSS {rss / 2**20:.0f} MiB with {MEMORY_JOBS} jobs, {baseline / 2**20:.0f} MiB with none",
        ),
        Figure(
            "cold start with 100k jobs -> first dispatch",
            cold,
            "s",
            "<= 5",
            cold <= 5,
            f"process start to first stored dispatch of an every-second job (<= 1s of it waits for the "
            f"next second); publishing the jobs took {published_in:.1f}s",
        ),
    ]


SCENARIOS = {f.__name__: f for f in (steady_lateness, burst, failover, memory_and_cold_start)}


async def main(argv: list[str] | None = None) -> list[Figure]:
    """`--only burst,memory_and_cold_start` runs some scenarios; `--repeat N` runs them N times
    in a row (each run's figures are reported, marked with the run)."""
    parser = argparse.ArgumentParser(prog="bench scheduler")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--repeat", type=int, default=1)
    opts = parser.parse_args(argv or [])
    chosen = [SCENARIOS[name.strip()] for name in opts.only.split(",") if name.strip()]
    figures: list[Figure] = []
    for run in range(1, opts.repeat + 1):
        with tempfile.TemporaryDirectory(prefix="cronbus-bench-") as tmpdir:
            tmp = Path(tmpdir)
            async with EmbeddedNats(tmp / "nats", log_file=tmp / "nats-server.log") as server:
                for scenario in chosen:
                    print(f"running {scenario.__name__} ...", file=sys.stderr, flush=True)
                    for figure in await scenario(server, tmp):
                        if opts.repeat > 1:
                            figure.name = f"{figure.name} (run {run})"
                        figures.append(figure)
    return figures
