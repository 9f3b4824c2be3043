"""Runner benchmarks: no-op shell and HTTP runs per second, live output latency, output throughput.

Each figure runs a real `cronbus runner` process against an embedded nats-server; the
benchmark publishes `RunDispatched` messages straight to DISPATCH and reads the results back
from RUNS and LOGS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from nats.aio.msg import Msg

from cronbus.shared.bus import MSG_ID, Bus
from cronbus.shared.events import (
    Executor,
    HttpExecutor,
    JobSpec,
    RunDispatched,
    RunFinished,
    ShellExecutor,
    decode_log_chunk,
    decode_run_event,
    encode,
    run_id_for,
)
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings, build_settings
from tests.bench.common import Figure, percentile
from tests.support import service_command

BASE_SLOT = datetime(2026, 1, 1, tzinfo=UTC)


def _runner_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CRONBUS_LOG_LEVEL": "WARNING", **extra}


@contextlib.asynccontextmanager
async def runner_process(settings: Settings, log: Path, **env: str) -> AsyncIterator[psutil.Process]:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *service_command(
                "runner", nats_url=settings.nats_url, prefix=settings.prefix, instance_id="bench-runner"
            ),
            env=_runner_env(**env),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield psutil.Process(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def publish_dispatches(bus: Bus, settings: Settings, executor: Executor, count: int) -> list[str]:
    job_id = "bench-" + uuid.uuid4().hex[:8]
    spec = JobSpec(name=job_id, schedule="@every 1s", executor=executor)
    run_ids = []
    futures = []
    for i in range(count):
        slot = BASE_SLOT + timedelta(seconds=i)
        event = RunDispatched(
            run_id=run_id_for(job_id, slot), job_id=job_id, slot=slot, pool="default", spec=spec
        )
        run_ids.append(event.run_id)
        futures.append(
            await bus.js.publish_async(
                settings.names.dispatch_subject("default", job_id),
                encode(event),
                headers={MSG_ID: f"{job_id}:{i}"},
            )
        )
    await asyncio.gather(*futures)
    return run_ids


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def runs_per_second(
    settings: Settings, workdir: Path, executor: Executor, count: int, concurrency: int
) -> tuple[float, int, float]:
    """Runs/s from the runner's start (dispatches already waiting) to the last final outcome,
    failures, and the runner process's CPU time per run in ms (which other load on the machine
    changes much less than the rate)."""
    bus = await Bus.open(settings, "bench")
    done = asyncio.Event()
    finished: set[str] = set()
    failures = 0

    async def on_run(msg: Msg) -> None:
        nonlocal failures
        event = decode_run_event(msg.data)
        if isinstance(event, RunFinished) and event.final:
            finished.add(event.run_id)
            failures += event.status != "succeeded"
            if len(finished) >= count:
                done.set()

    sub = await bus.nc.subscribe(settings.names.runs_all, cb=on_run)
    try:
        await publish_dispatches(bus, settings, executor, count)
        async with runner_process(
            settings, workdir / "runner.log", CRONBUS_CONCURRENCY=str(concurrency)
        ) as runner:
            # Timed from the first RunStarted, so process start-up is not counted.
            first = await bus.nc.subscribe(settings.names.runs_all, max_msgs=1)
            await first.next_msg(timeout=30)
            began = time.perf_counter()
            cpu_began = cpu_seconds(runner)
            await asyncio.wait_for(done.wait(), timeout=120)
            elapsed = time.perf_counter() - began
            cpu = cpu_seconds(runner) - cpu_began
    finally:
        await sub.unsubscribe()
        await bus.close()
    return (count - 1) / elapsed, failures, cpu * 1000 / (count - 1)


def _load() -> str:
    """The 1-minute load average: other work on the machine changes every rate here."""
    return f"{os.getloadavg()[0]:.1f}"


async def serve_http() -> tuple[asyncio.Server, str]:
    """A minimal keep-alive HTTP/1.1 server that answers every request with 200 "ok"."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/noop"


async def output_latency(settings: Settings, workdir: Path, lines: int) -> list[float]:
    """Seconds from a line's write (its own timestamp) to its LogChunk being stored in LOGS."""
    bus = await Bus.open(settings, "bench")
    latencies: list[float] = []
    complete = asyncio.Event()
    buffer = bytearray()

    async def on_chunk(msg: Msg) -> None:
        now = time.time()
        chunk = decode_log_chunk(msg.data)
        await msg.ack()
        if chunk.stream != "stdout":
            return
        buffer.extend(chunk.data)
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            if line == b"end":
                complete.set()
            else:
                latencies.append(now - float(line))

    script = (
        "import sys, time\n"
        f"for _ in range({lines}):\n"
        "    sys.stdout.write(f'{time.time()!r}\\n'); sys.stdout.flush(); time.sleep(0.013)\n"
        "print('end')\n"
    )
    try:
        async with runner_process(settings, workdir / "runner.log"):
            [run_id] = await publish_dispatches(
                bus, settings, ShellExecutor(command=[sys.executable, "-u", "-c", script]), 1
            )
            sub = await bus.js.subscribe(
                settings.names.log_subject(run_id), cb=on_chunk, ordered_consumer=True
            )
            await asyncio.wait_for(complete.wait(), timeout=120)
            await sub.unsubscribe()
    finally:
        await bus.close()
    return latencies


async def output_throughput(settings: Settings, workdir: Path, megabytes: int) -> tuple[float, RunFinished]:
    bus = await Bus.open(settings, "bench")
    outcome: asyncio.Future[RunFinished] = asyncio.get_running_loop().create_future()

    async def on_run(msg: Msg) -> None:
        event = decode_run_event(msg.data)
        if isinstance(event, RunFinished) and not outcome.done():
            outcome.set_result(event)

    sub = await bus.nc.subscribe(settings.names.runs_all, cb=on_run)
    size = megabytes * 1_000_000
    try:
        async with runner_process(settings, workdir / "runner.log", CRONBUS_OUTPUT_CAP=str(size + 1)):
            await publish_dispatches(bus, settings, ShellExecutor(command=f"head -c {size} /dev/zero"), 1)
            result = await asyncio.wait_for(outcome, timeout=180)
    finally:
        await sub.unsubscribe()
        await bus.close()
    return result.output_bytes / 1e6 / (result.duration_ms / 1000.0), result


async def main() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="cronbus-bench-runner-") as tmp:
        workdir = Path(tmp)
        async with EmbeddedNats(workdir / "nats", log_file=workdir / "nats.log") as server:

            def fresh() -> Settings:
                return build_settings(
                    environ={},
                    nats_url=server.url,
                    prefix="b" + uuid.uuid4().hex[:10],
                    logs_max_bytes=2 << 30,
                )

            shell_rate, shell_failed, shell_cpu = await runs_per_second(
                fresh(), workdir, ShellExecutor(command="true"), 1500, 8
            )
            figures.append(
                Figure(
                    "no-op shell runs/s (1 runner, concurrency 8)",
                    shell_rate,
                    "runs/s",
                    ">= 300",
                    shell_rate >= 300 and shell_failed == 0,
                    f"{shell_failed} failed; runner CPU {shell_cpu:.2f} ms/run; load {_load()}",
                )
            )

            http_server, url = await serve_http()
            try:
                for concurrency in (8, 64):
                    rate, failed, cpu = await runs_per_second(
                        fresh(), workdir, HttpExecutor(url=url), 4000, concurrency
                    )
                    figures.append(
                        Figure(
                            f"no-op HTTP runs/s (1 runner, concurrency {concurrency})",
                            rate,
                            "runs/s",
                            ">= 2000",
                            rate >= 2000 and failed == 0,
                            f"{failed} failed; runner CPU {cpu:.2f} ms/run; load {_load()}",
                        )
                    )
            finally:
                http_server.close()
                await http_server.wait_closed()

            latencies = await output_latency(fresh(), workdir, 300)
            p99 = percentile(latencies, 99) * 1000
            figures.append(
                Figure(
                    "live output latency p99 (line written -> stored in LOGS)",
                    p99,
                    "ms",
                    "<= 150",
                    p99 <= 150,
                    f"p50 {percentile(latencies, 50) * 1000:.1f} ms, {len(latencies)} lines",
                )
            )

            rate, finished = await output_throughput(fresh(), workdir, 200)
            figures.append(
                Figure(
                    "output throughput of one run",
                    rate,
                    "MB/s",
                    ">= 50",
                    rate >= 50 and finished.status == "succeeded",
                    f"{finished.output_bytes / 1e6:.0f} MB in {finished.duration_ms / 1000:.1f}s",
                )
            )
    return figures
