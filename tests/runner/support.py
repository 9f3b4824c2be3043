"""What the runner tests share: dispatching runs, reading RUNS/LOGS back, running runners."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from cronbus.runner.app import RunnerService
from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import (
    Executor,
    JobSpec,
    LogChunk,
    RunDispatched,
    RunEvents,
    RunFinished,
    decode_log_chunk,
    decode_run_event,
    encode,
    run_id_for,
)
from cronbus.shared.settings import Settings
from tests.support import service_command, wait_for

_slot_counter = 0


def new_slot() -> datetime:
    """A distinct slot per call (so distinct run ids), whole seconds like a cron slot."""
    global _slot_counter
    _slot_counter += 1
    base = datetime(2026, 1, 1, tzinfo=UTC)
    return base + timedelta(seconds=_slot_counter)


async def dispatch(
    js: JetStreamContext,
    settings: Settings,
    executor: Executor,
    *,
    job_id: str | None = None,
    slot: datetime | None = None,
    pool: str = "default",
    **spec_fields: Any,
) -> RunDispatched:
    job_id = job_id or "job-" + uuid.uuid4().hex[:8]
    slot = slot or new_slot()
    spec = JobSpec(name=job_id, schedule="@every 1h", executor=executor, pool=pool, **spec_fields)
    event = RunDispatched(run_id=run_id_for(job_id, slot), job_id=job_id, slot=slot, pool=pool, spec=spec)
    await js.publish(
        settings.names.dispatch_subject(pool, job_id),
        encode(event),
        headers={MSG_ID: f"{job_id}:{int(slot.timestamp() * 1000)}"},
    )
    return event


async def read_subject(js: JetStreamContext, stream: str, subject: str) -> list[bytes]:
    """Every stored message on `subject` (wildcards allowed) in stream order."""
    out: list[bytes] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(raw.data or b"")
        assert raw.seq is not None
        seq = raw.seq + 1


async def run_events(js: JetStreamContext, settings: Settings, run_id: str) -> list[RunEvents]:
    n = settings.names
    return [decode_run_event(d) for d in await read_subject(js, n.runs_stream, n.run_subject("*", run_id))]


async def log_chunks(js: JetStreamContext, settings: Settings, run_id: str) -> list[LogChunk]:
    n = settings.names
    return [decode_log_chunk(d) for d in await read_subject(js, n.logs_stream, n.log_subject(run_id))]


async def final_outcome(
    js: JetStreamContext, settings: Settings, run_id: str, timeout: float = 15.0
) -> RunFinished:
    async def final() -> RunFinished | None:
        for event in await run_events(js, settings, run_id):
            if isinstance(event, RunFinished) and event.final:
                return event
        return None

    result = await wait_for(final, timeout=timeout, what=f"final outcome of run {run_id}")
    assert isinstance(result, RunFinished)
    return result


@dataclass(frozen=True)
class Part:
    """A piece of an attempt's output, wherever it was stored."""

    attempt: int
    seq: int
    stream: str
    data: bytes
    inline: bool


async def output_parts(
    js: JetStreamContext, settings: Settings, run_id: str, attempt: int | None = None
) -> list[Part]:
    """A run's output in order: LOGS chunks, or the parts inline in each attempt's RunFinished.

    Fails when an attempt has output in both places (it must be all in one)."""
    parts = [
        Part(c.attempt, c.seq, c.stream, c.data, inline=False) for c in await log_chunks(js, settings, run_id)
    ]
    on_logs = {p.attempt for p in parts}
    for event in await run_events(js, settings, run_id):
        if isinstance(event, RunFinished) and event.output:
            assert event.attempt not in on_logs, f"attempt {event.attempt}'s output is split"
            parts.extend(Part(event.attempt, p.seq, p.stream, p.data, inline=True) for p in event.output)
    chosen = [p for p in parts if attempt is None or p.attempt == attempt]
    return sorted(chosen, key=lambda p: (p.attempt, p.seq))


async def output_of(
    js: JetStreamContext, settings: Settings, run_id: str, attempt: int | None = None
) -> bytes:
    return b"".join(p.data for p in await output_parts(js, settings, run_id, attempt))


class InProcessRunner:
    """A runner service running in this process; `stop()` begins a graceful stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = RunnerService(settings)
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RunnerService:
        self.task = asyncio.create_task(self.service.run(self.stopping))
        ready = asyncio.create_task(self.service.ready.wait())
        done, _ = await asyncio.wait({ready, self.task}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        if ready not in done:
            ready.cancel()
        assert ready in done, "runner did not become ready"
        return self.service

    def stop(self) -> None:
        self.stopping.set()

    async def stopped(self) -> None:
        """Stop (if not yet asked to) and wait until the service has ended."""
        self.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, timeout=self.settings.grace_period + 20.0)


@contextlib.asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[RunnerService]:
    """A runner service in this process until the block ends (then a graceful stop)."""
    runner = InProcessRunner(replace(settings, **overrides))
    try:
        yield await runner.start()
    finally:
        await runner.stopped()


def hold_until(path: Path) -> str:
    """A shell snippet that waits until the test creates `path` (bounded: gives up after 60 s)."""
    return f"i=0; while [ ! -e {path} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"


def spawn_runner(settings: Settings, instance_id: str, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """`cronbus runner` as a separate process (its output goes to `log_path`)."""
    environ = {
        **os.environ,
        "CRONBUS_ACK_WAIT": str(settings.ack_wait),
        "CRONBUS_HEARTBEAT": str(settings.heartbeat),
        "CRONBUS_GRACE_PERIOD": str(settings.grace_period),
        **env,
    }
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            service_command(
                "runner", nats_url=settings.nats_url, prefix=settings.prefix, instance_id=instance_id
            ),
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
