"""The seed workload: N jobs `@every 1m` calling back over HTTP, on `cronbus up`.

It reproduces the workload of a peer's published benchmark: jobs are created through the
API in batches of 1,000 and each calls a local keep-alive receiver that counts hits per job.
After the last job exists, it observes for M minutes and reports creation time, jobs never
called, duplicates (two calls for one slot), missed job-minutes and each call's drift from the
job's own grid (its anchor plus whole minutes).

`./dev bench seed [--jobs N] [--minutes M] [--spread] [--refusing K]` (defaults 50,000 and 3;
also SEED_JOBS and SEED_MINUTES in the environment).

`--refusing K`: K of the jobs, spread over the minute, call a second receiver instead, with
two attempts per run 5 s apart. A minute into the observed window that receiver stops: its
open connections are cut and its port refuses new ones. Their runs after that must end
`failed` after both attempts, in the history, and the other jobs' figures (which are then
over the other jobs only) must not change: a dead callback fails only its own runs.

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
import sqlite3
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
# How a run of the refusing jobs can end (it may be `retrying` in between).
FINAL = frozenset({"succeeded", "failed", "timed_out", "lost", "cancelled", "skipped"})
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
    connections: list[_Hits] = field(default_factory=list)

    def connection(self) -> asyncio.Protocol:
        protocol = _Hits(self.hits)
        self.connections.append(protocol)
        return protocol

    def cut(self) -> None:
        """Drop every connection it has (a server that died: a reset, not a goodbye)."""
        for protocol in self.connections:
            if protocol.transport is not None:
                protocol.transport.abort()
        self.connections.clear()


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
    client: httpx.AsyncClient,
    n: int,
    body: Callable[[int], dict[str, object]],
    ids: list[str] | None = None,
) -> list[float]:
    """Create jobs `body(0)`..`body(n-1)` in batches; each job's first slot (epoch seconds).
    Their ids are appended to `ids` when given."""
    first: list[float] = [0.0] * n
    for start in range(0, n, BATCH):
        batch = [body(i) for i in range(start, min(n, start + BATCH))]
        answer = await client.post("/v1/jobs", json=batch)
        if answer.status_code != 201:
            raise RuntimeError(f"batch at {start}: {answer.status_code} {answer.text[:500]}")
        for offset, job in enumerate(answer.json()["items"]):
            first[start + offset] = datetime.fromisoformat(job["next_fires"][0]).timestamp()
            if ids is not None:
                ids.append(job["id"])
    return first


@dataclass
class Outcome:
    never_called: int = 0
    duplicates: int = 0
    missed: int = 0
    expected: int = 0
    drifts: list[float] = field(default_factory=list)


def judge(
    first_slots: list[float],
    hits: dict[int, list[float]],
    start: float,
    end: float,
    skip: frozenset[int] = frozenset(),
) -> Outcome:
    """Every job's slots in (start, end] against the calls it got (jobs in `skip` left out)."""
    out = Outcome()
    for i, first in enumerate(first_slots):
        if i in skip:
            continue
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


def refusing_jobs(jobs: int, k: int) -> frozenset[int]:
    """The indexes of `k` of `jobs` jobs, evenly apart (so their phases spread too)."""
    return frozenset(i * jobs // k for i in range(k)) if k > 0 else frozenset()


async def run(jobs: int, minutes: float, spread: bool = False, refusing: int = 0) -> list[Figure]:
    doomed = refusing_jobs(jobs, refusing)
    with tempfile.TemporaryDirectory(prefix="cronbus-seed-") as tmp:
        async with receiving_up(Path(tmp)) as (receiver, url, client, data_dir):
            dying = Receiver()
            dying_server = await asyncio.get_running_loop().create_server(dying.connection, "127.0.0.1", 0)
            dying_url = f"http://127.0.0.1:{dying_server.sockets[0].getsockname()[1]}"

            def body(i: int) -> dict[str, object]:
                anchor = spread_anchor(i, jobs, base) if spread else None
                if i not in doomed:
                    return job_body(i, url, anchor)
                return job_body(i, dying_url, anchor) | {"retries": {"max_attempts": 2, "backoff": "5s"}}

            began = time.monotonic()
            base = float(int(time.time() // INTERVAL * INTERVAL))
            ids: list[str] = []
            first_slots = await create_jobs(client, jobs, body, ids)
            creation = time.monotonic() - began
            start = time.time()
            end = start + minutes * 60
            refused_from = None
            if doomed:
                await asyncio.sleep(min(INTERVAL, end - start))
                refused_from = time.time()
            dying_server.close()
            dying.cut()
            # Calls for slots up to `end` may still be arriving: wait out the late limit.
            await asyncio.sleep(end - time.time() + LATE_LIMIT)
            # A call that arrived later than the limit answers no slot of the window.
            hits = {i: [t for t in ts if t <= end + LATE_LIMIT] for i, ts in receiver.hits.items()}
            refused = None
            if refused_from is not None:
                refused = await refused_runs(data_dir / "cronbus.db", [ids[i] for i in sorted(doomed)],
                                             refused_from, end)  # fmt: skip
    outcome = judge(first_slots, hits, start, end, skip=doomed)
    p50, p99 = percentile(outcome.drifts, 50), percentile(outcome.drifts, 99)
    others = f" (the {jobs - len(doomed)} jobs whose receiver stays up)" if doomed else ""
    note = f"{jobs} jobs, {minutes:g} min observed, {outcome.expected} job-minutes expected{others}"
    shape = (
        "phases spread evenly over the minute (--spread)"
        if spread
        else "phases = the API's default (creation time + an offset from the job id)"
    )
    figures = [
        Figure("creating the jobs through the API", creation, "s", "<= 60", creation <= 60, f"{jobs} jobs"),
        Figure("jobs never called", outcome.never_called, "jobs", "0", outcome.never_called == 0, note),
        Figure("duplicate calls", outcome.duplicates, "calls", "0", outcome.duplicates == 0, note),
        Figure("missed job-minutes", outcome.missed, "slots", "0", outcome.missed == 0, note),
        Figure("drift from the job's grid p50", p50 * 1000, "ms", "-", None, shape),
        Figure("drift from the job's grid p99", p99 * 1000, "ms", "<= 1000", p99 <= 1.0, shape),
    ]
    if refused is not None:
        figures.append(refused.figure(len(doomed)))
    return figures


@dataclass
class Refused:
    """The runs of the refusing jobs for slots after their receiver stopped, as the history
    has them once they all ended (or the wait did)."""

    expected: int
    ended_failed: int
    by_status: dict[str, int]
    errors: list[str]

    def figure(self, jobs: int) -> Figure:
        met = self.expected > 0 and self.ended_failed == self.expected
        note = (
            f"{jobs} jobs whose receiver stopped a minute in; {self.expected} runs after that: "
            f"{dict(sorted(self.by_status.items()))}; e.g. {self.errors[:2]}"
        )
        return Figure("runs to a refusing callback that ended failed after 2 attempts",
                      self.ended_failed, "runs", f"= {self.expected}", met, note)  # fmt: skip


async def refused_runs(db: Path, job_ids: list[str], since: float, until: float) -> Refused:
    """Wait (at most a minute) until the refusing jobs' runs for slots in (since, until] have
    ended, then count them by status. A slot's run ends `failed` at its second attempt."""

    def read() -> list[tuple[str, int, str | None]]:
        low = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        high = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        marks = ",".join("?" * len(job_ids))
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            query = (
                f"SELECT status, attempt, error FROM runs"
                f" WHERE job_id IN ({marks}) AND slot > ? AND slot <= ?"
            )
            found = conn.execute(query, [*job_ids, low, high]).fetchall()
        return [(str(status), int(attempt), error) for status, attempt, error in found]

    deadline = time.monotonic() + 60
    while True:
        found = await asyncio.to_thread(read)
        if all(status in FINAL for status, _, _ in found) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    by_status: dict[str, int] = defaultdict(int)
    for status, _, _ in found:
        by_status[status] += 1
    failed = sum(1 for status, attempt, _ in found if status == "failed" and attempt == 2)
    errors = sorted({error for _, _, error in found if error})
    return Refused(len(found), failed, dict(by_status), errors)


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench seed")
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("SEED_JOBS", "50000")))
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SEED_MINUTES", "3")))
    parser.add_argument(
        "--spread", action="store_true", help="explicit anchors spreading the jobs evenly over the minute"
    )
    parser.add_argument(
        "--refusing", type=int, default=0,
        help="this many jobs call a receiver that stops (and refuses connections) a minute in",
    )  # fmt: skip
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> list[Figure]:
    opts = options(argv or [])
    return await run(opts.jobs, opts.minutes, opts.spread, opts.refusing)
