"""The seed workload: N jobs `@every 1m` calling back over HTTP, on `cronbus up`.

It reproduces the workload of a peer's published benchmark: jobs are created through the
API in batches of 1,000 and each calls a local keep-alive receiver that counts hits per job.
After the last job exists, it observes for M minutes and reports creation time, jobs never
called, duplicates (two calls for one slot), missed job-minutes and each call's drift from the
job's own grid (its anchor plus whole minutes).

`./dev bench seed [--jobs N] [--minutes M] [--spread]` (defaults 50,000 and 3; also SEED_JOBS
and SEED_MINUTES in the environment).

Each job's phase is the API's default for `@every`: its creation time plus an offset inside
the minute taken from its id, so the jobs spread over the minute however fast they were
created (833 calls/s at 50,000). `--spread` gives each job an explicit `anchor` instead,
exactly evenly spaced over the minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cronbus.shared.up import default_processes
from tests.bench.common import Figure, percentile
from tests.support import running_up_async

BATCH = 1000
INTERVAL = 60.0
# A call more than this after its slot counts as missed, not as late.
LATE_LIMIT = 30.0


_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
_LENGTH = b"\r\ncontent-length:"


@dataclass
class Receiver:
    """Keep-alive HTTP/1.1 receiver: records the arrival time of every POST /hit/<i> by job
    index `i`. It stands in for the users' servers, which run elsewhere, so it takes as little
    of the machine as it can: a bare asyncio protocol, no stream reader and writer."""

    hits: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))

    def connection(self) -> asyncio.Protocol:
        return _Hits(self.hits)


class _Hits(asyncio.Protocol):
    """One keep-alive connection: answers each whole request in order with 200 "ok"."""

    def __init__(self, hits: dict[int, list[float]]) -> None:
        self.hits = hits
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        at = time.time()
        buffer = self.buffer + data
        answered = 0
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            length = 0
            if (at_length := head.lower().find(_LENGTH)) >= 0:
                line_end = head.find(b"\r\n", at_length + 2)
                value = head[at_length + len(_LENGTH) : line_end if line_end >= 0 else None]
                length = int(value.strip() or 0)
            if len(buffer) < end + 4 + length:
                break  # the body is still on its way
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
            if target.startswith(b"/hit/") and target[5:].isdigit():
                self.hits[int(target[5:])].append(at)
            buffer = buffer[end + 4 + length :]
            answered += 1
        self.buffer = buffer
        if answered and self.transport is not None:
            self.transport.write(_OK * answered)


@contextlib.asynccontextmanager
async def receiving_up(workdir: Path) -> AsyncIterator[tuple[Receiver, str, httpx.AsyncClient, Path]]:
    """A keep-alive `Receiver` and `cronbus up` on a fresh data directory in `workdir`, with as
    many runner processes as `up` picks by itself and logs at WARNING. Yields the receiver, its
    URL, an API client with the admin key, and the data directory."""
    receiver = Receiver()
    server = await asyncio.get_running_loop().create_server(receiver.connection, "127.0.0.1", 0, backlog=4096)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    data_dir = workdir / "data"
    env = {"CRONBUS_LOG_LEVEL": "WARNING", "CRONBUS_PROCESSES": str(default_processes())}
    try:
        async with running_up_async(data_dir, **env) as state:
            headers = {"Authorization": f"Bearer {state['admin_key']}"}
            async with httpx.AsyncClient(base_url=state["api_url"], headers=headers, timeout=120) as client:
                yield receiver, url, client, data_dir
    finally:
        server.close()


def job_body(i: int, url: str, anchor: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "name": f"seed-{i}",
        "schedule": "@every 1m",
        "executor": {"type": "http", "method": "POST", "url": f"{url}/hit/{i}", "body": "{}"},
        "timeout": "30s",
    }
    if anchor is not None:
        body["anchor"] = anchor
    return body


def spread_anchor(i: int, jobs: int, base: float) -> str:
    """Job `i`'s anchor when `jobs` jobs spread evenly over the minute from `base`."""
    at = datetime.fromtimestamp(base + i * INTERVAL / jobs, tz=UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def create_jobs(
    client: httpx.AsyncClient, n: int, body: Callable[[int], dict[str, object]]
) -> list[float]:
    """Create jobs `body(0)`..`body(n-1)` in batches; each job's first slot (epoch seconds)."""
    first: list[float] = [0.0] * n
    for start in range(0, n, BATCH):
        batch = [body(i) for i in range(start, min(n, start + BATCH))]
        answer = await client.post("/v1/jobs", json=batch)
        if answer.status_code != 201:
            raise RuntimeError(f"batch at {start}: {answer.status_code} {answer.text[:500]}")
        for offset, job in enumerate(answer.json()["items"]):
            first[start + offset] = datetime.fromisoformat(job["next_fires"][0]).timestamp()
    return first


@dataclass
class Outcome:
    never_called: int = 0
    duplicates: int = 0
    missed: int = 0
    expected: int = 0
    drifts: list[float] = field(default_factory=list)


def judge(first_slots: list[float], hits: dict[int, list[float]], start: float, end: float) -> Outcome:
    """Every job's slots in (start, end] against the calls it got."""
    out = Outcome()
    for i, first in enumerate(first_slots):
        calls = sorted(t for t in hits.get(i, []) if t > start)
        if not calls:
            out.never_called += 1
        per_slot: dict[float, int] = defaultdict(int)
        for t in calls:
            # The slot this call answers: the latest grid point at or before it.
            slot = first + ((t - first) // INTERVAL) * INTERVAL
            per_slot[slot] += 1
            out.drifts.append(t - slot)
        slot = first
        while slot <= start:
            slot += INTERVAL
        while slot <= end:
            out.expected += 1
            got = per_slot.get(slot, 0)
            if got == 0:
                out.missed += 1
            elif got > 1:
                out.duplicates += got - 1
            slot += INTERVAL
    return out


async def run(jobs: int, minutes: float, spread: bool = False) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="cronbus-seed-") as tmp:
        async with receiving_up(Path(tmp)) as (receiver, url, client, _):
            began = time.monotonic()
            base = float(int(time.time() // INTERVAL * INTERVAL))
            first_slots = await create_jobs(
                client, jobs, lambda i: job_body(i, url, spread_anchor(i, jobs, base) if spread else None)
            )
            creation = time.monotonic() - began
            start = time.time()
            end = start + minutes * 60
            # Calls for slots up to `end` may still be arriving: wait out the late limit.
            await asyncio.sleep(end - time.time() + LATE_LIMIT)
            # A call that arrived later than the limit answers no slot of the window.
            hits = {i: [t for t in ts if t <= end + LATE_LIMIT] for i, ts in receiver.hits.items()}
    outcome = judge(first_slots, hits, start, end)
    p50, p99 = percentile(outcome.drifts, 50), percentile(outcome.drifts, 99)
    note = f"{jobs} jobs, {minutes:g} min observed, {outcome.expected} job-minutes expected"
    shape = (
        "phases spread evenly over the minute (--spread)"
        if spread
        else "phases = the API's default (creation time + an offset from the job id)"
    )
    return [
        Figure("creating the jobs through the API", creation, "s", "<= 60", creation <= 60, f"{jobs} jobs"),
        Figure("jobs never called", outcome.never_called, "jobs", "0", outcome.never_called == 0, note),
        Figure("duplicate calls", outcome.duplicates, "calls", "0", outcome.duplicates == 0, note),
        Figure("missed job-minutes", outcome.missed, "slots", "0", outcome.missed == 0, note),
        Figure("drift from the job's grid p50", p50 * 1000, "ms", "-", None, shape),
        Figure("drift from the job's grid p99", p99 * 1000, "ms", "<= 1000", p99 <= 1.0, shape),
    ]


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench seed")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("SEED_JOBS", "50000")))
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SEED_MINUTES", "3")))
    parser.add_argument(
        "--spread", action="store_true", help="explicit anchors spreading the jobs evenly over the minute"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> list[Figure]:
    opts = options(argv or [])
    return await run(opts.jobs, opts.minutes, opts.spread)
