"""`cronbus check`: does the SQL history agree with the streams? Report, and optionally repair.

The streams are the truth. The check reads JOBS, DISPATCH and RUNS from their first message
up to the last one at the start of the check and projects them, with the projector's own
code (`write_batch`, so cleaning and poison handling are the same), into a scratch SQLite
database in a temporary directory: memory stays bounded whatever the size of the streams.
RUNS is also projected alone: where it has events for a run, they decide its status, so a
wrong precedence between the streams (shared by SQL and the scratch projection) still shows.
It then walks the scratch projection in key order, a page at a time, and compares each page
with the history database:

* `job_missing`, `job_revision` (SQL has another revision), `job_differs` (same revision,
  other name/paused/deleted), `job_extra` (in SQL, not in JOBS; reported, never repaired);
* `run_missing` (finished runs that retention may have pruned are not counted: see
  `_pruned`), `run_status` (status or attempt differ), `run_differs` (dispatch time, runner,
  finish time or exit code differ where the streams have them).

SQL that is *ahead* of the snapshot (a run already further along, a job at a newer revision)
is not a difference when the row's subject has a message after the snapshot: events arrived
after the check started. Ahead with nothing newer is a difference.

`--repair` replaces each differing row (and a run's attempts) by the scratch projection's,
in a transaction that first checks the difference still holds, so a row the live projector
moved on meanwhile is left alone. Output (LOGS) is not compared.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronbus.logs import precedence
from cronbus.logs.poison import read_message
from cronbus.logs.projector import Feed, feeds, write_batch
from cronbus.logs.retention import RetentionLimits
from cronbus.logs.store import HistoryWriter
from cronbus.shared.history.schema import jobs, projector_positions, run_attempts, runs
from cronbus.shared.history.store import create_engine, migrate
from cronbus.shared.names import Names
from cronbus.shared.settings import Settings, async_database_url

log = logging.getLogger(__name__)

# Messages per fetch from a stream, and rows per page compared (and repaired) at once.
BATCH = 512
# How long a fetch may find no one serving the check's consumer (503, no responders) before
# the check gives up: a consumer just created, or one whose node is restarting, is briefly so.
UNAVAILABLE_PATIENCE = 30.0
PAGE = 500
# Differences listed in a report; all of them are counted (and repaired).
LISTED = 200

_JOB_FIELDS = ("revision", "name", "paused", "deleted")
# Run columns compared only where the streams have a value (their events may have expired).
_RUN_DETAILS = ("dispatched_at", "runner", "finished_at", "exit_code")


@dataclass(frozen=True, slots=True)
class Difference:
    """One row where SQL and the streams disagree: what the streams say and what SQL has."""

    kind: str
    key: str
    streams: str
    sql: str


@dataclass(slots=True)
class Report:
    """What a check found. `ok` when SQL agrees with the streams (after repair, if asked)."""

    streams: dict[str, int] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    compared: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    # With repair: what the first comparison found, and how many rows were rewritten.
    found_before_repair: dict[str, int] = field(default_factory=dict)
    repaired: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return self.total == 0

    @property
    def lagging(self) -> list[str]:
        """Projectors whose position is behind the snapshot: their differences may be lag."""
        return [feed for feed, last in self.streams.items() if self.positions.get(f"logs-{feed}", 0) < last]

    def add(self, diff: Difference) -> None:
        self.counts[diff.kind] = self.counts.get(diff.kind, 0) + 1
        if len(self.differences) < LISTED:
            self.differences.append(diff)

    def to_json(self) -> bytes:
        out = asdict(self)
        out |= {"ok": self.ok, "total": self.total, "lagging": self.lagging}
        return msgspec.json.format(msgspec.json.encode(out), indent=2)

    def table(self) -> str:
        lines = [
            "stream     last seq  projector position",
            *(f"{feed:<10} {last:>8}  {self.positions.get(f'logs-{feed}', 0):>8}"
              for feed, last in self.streams.items()),
            "",
            f"compared: {', '.join(f'{n} {k}' for k, n in self.compared.items())}",
        ]  # fmt: skip
        if self.ok:
            lines.append("SQL agrees with the streams.")
        else:
            lines.append(
                f"{self.total} difference(s): {', '.join(f'{n} {k}' for k, n in self.counts.items())}"
            )
            if self.lagging:
                lines.append(f"note: projector(s) behind the streams: {', '.join(self.lagging)}")
            lines.append("")
            lines.append(f"{'kind':<13} {'key':<38} {'streams':<28} sql")
            for d in self.differences:
                lines.append(f"{d.kind:<13} {d.key:<38} {d.streams:<28} {d.sql}")
            if self.total > len(self.differences):
                lines.append(f"... and {self.total - len(self.differences)} more")
        if self.found_before_repair:
            found = ", ".join(f"{n} {k}" for k, n in self.found_before_repair.items())
            lines.append(f"before repair: {found}; repaired {self.repaired} row(s) from the streams")
        return "\n".join(lines)


async def compare(
    nats_url: str,
    database_url: str,
    prefix: str = "cronbus",
    *,
    repair: bool = False,
    runs_per_job: int = 1000,
) -> Report:
    """Compare the streams of `prefix` at `nats_url` with the history at `database_url`.

    With `repair`, rows that differ are rewritten from the streams and the report describes
    what still differs afterwards (`repaired` counts the rows rewritten). `runs_per_job` is
    the logs service's CRONBUS_HISTORY_RUNS_PER_JOB (finished runs beyond it were pruned).
    """
    names = Settings(prefix=prefix).names
    nc = await _connect(nats_url)
    engine = create_engine(async_database_url(database_url, Path(".cronbus")))
    try:
        with tempfile.TemporaryDirectory(prefix="cronbus-check-") as scratch_dir:
            scratch = create_engine(f"sqlite+aiosqlite:///{Path(scratch_dir) / 'streams.db'}")
            runs_only = create_engine(f"sqlite+aiosqlite:///{Path(scratch_dir) / 'runs.db'}")
            try:
                await migrate(scratch)
                await migrate(runs_only)
                check = _Check(
                    names,
                    nc.jetstream(timeout=10.0),
                    HistoryWriter(scratch),
                    HistoryWriter(runs_only),
                    engine,
                    runs_per_job,
                )
                return await check.run([f for f in feeds(names) if f.kind != "logs"], repair)
            finally:
                await scratch.dispose()
                await runs_only.dispose()
    finally:
        await engine.dispose()
        await nc.close()


async def _connect(nats_url: str) -> NATS:
    """A connection that rides out a node restart during the check but gives up on a NATS
    that is not there (about ten seconds), unlike a service's."""

    async def quiet(exc: Exception) -> None:
        log.debug("nats: %s", exc)

    return await nats.connect(
        [url.strip() for url in nats_url.split(",") if url.strip()],
        name="cronbus-check",
        connect_timeout=5,
        max_reconnect_attempts=20,
        reconnect_time_wait=0.5,
        error_cb=quiet,
    )


class _Check:
    def __init__(
        self,
        names: Names,
        js: JetStreamContext,
        scratch: HistoryWriter,
        runs_only: HistoryWriter,
        history: AsyncEngine,
        runs_per_job: int,
    ) -> None:
        self.names = names
        self.js = js
        self.scratch = scratch
        # RUNS projected alone: the status the runner's events give, which no dispatch may
        # override. Checked separately so that a wrong precedence rule (which the scratch
        # projection would share with SQL) still shows.
        self.runs_only = runs_only
        self.history = history
        self.runs_per_job = runs_per_job
        # Finished runs kept per job (its own retention, else runs_per_job); see _kept_runs.
        self._limits: dict[str, int] = {}

    async def run(self, feeds_: Sequence[Feed], repair: bool) -> Report:
        report = Report()
        for feed in feeds_:
            report.streams[feed.kind] = await self._project(feed)
        async with self.history.connect() as conn:
            found = await conn.execute(
                select(projector_positions.c.consumer, projector_positions.c.stream_seq)
            )
            report.positions = {consumer: int(seq) for consumer, seq in found}
        if repair:
            first = await self._compare(report, repair=True)
            report = await self._compare(Report(report.streams, report.positions), repair=False)
            report.repaired = first.repaired
            report.found_before_repair = first.counts
            return report
        return await self._compare(report, repair=False)

    async def _project(self, feed: Feed) -> int:
        """Project `feed` up to its current last message into the scratch database."""
        try:
            info = await self.js.stream_info(feed.stream)
        except NotFoundError:
            return 0
        last = info.state.last_seq
        if info.state.messages == 0:
            return last
        async for batch in _read(self.js, feed, last):
            items = [
                (seq, subject, data, read_message(feed.decode, feed.stream, seq, subject, data))
                for seq, subject, data in batch
            ]
            await write_batch(self.scratch, f"check-{feed.kind}", feed.stream, items)
            if feed.kind == "runs":
                await write_batch(self.runs_only, "check-runs", feed.stream, items)
        return last

    async def _compare(self, report: Report, *, repair: bool) -> Report:
        await self._compare_jobs(report, repair)
        await self._compare_runs(report, repair)
        return report

    async def _updated_since(self, report: Report, kind: str, subject: str) -> bool:
        """Whether `subject` has a message after the snapshot of stream `kind`: SQL may then be
        ahead of the snapshot for good reason."""
        stream = next(f.stream for f in feeds(self.names) if f.kind == kind)
        try:
            last = await self.js.get_msg(stream, subject=subject)
        except NotFoundError:
            return False
        return (last.seq or 0) > report.streams.get(kind, 0)

    # --- jobs ---

    async def _compare_jobs(self, report: Report, repair: bool) -> None:
        compared = 0
        async for page in _pages(self.scratch.engine, jobs):
            compared += len(page)
            keys = [row["id"] for row in page]
            async with self._sql(repair) as conn:
                current = await _rows_by_id(conn, jobs, keys, lock=repair)
                fix = []
                for want in page:
                    have = current.get(want["id"])
                    diff = _job_difference(want, have)
                    if (
                        diff is not None
                        and have is not None
                        and have["revision"] > want["revision"]
                        and await self._updated_since(report, "jobs", self.names.job_subject(want["id"]))
                    ):
                        diff = None
                    if diff is not None:
                        report.add(diff)
                        fix.append(want)
                if repair and fix:
                    await _replace(conn, jobs, jobs.c.id, fix)
                    report.repaired += len(fix)
        report.compared["jobs"] = compared
        # Jobs in SQL that JOBS never had: reported, not repaired (there is nothing to rebuild).
        async for page in _pages(self.history, jobs):
            keys = [row["id"] for row in page]
            async with self.scratch.engine.connect() as conn:
                known = set(await conn.scalars(select(jobs.c.id).where(jobs.c.id.in_(keys))))
            for row in page:
                if row["id"] not in known:
                    report.add(Difference("job_extra", row["id"], "-", f"revision {row['revision']}"))

    # --- runs ---

    async def _compare_runs(self, report: Report, repair: bool) -> None:
        kept = await self._kept_runs()
        compared = 0
        async for projected in _pages(self.scratch.engine, runs):
            compared += len(projected)
            keys = [row["id"] for row in projected]
            async with self.runs_only.engine.connect() as conn:
                by_runs = {
                    m.id: dict(m._mapping)
                    for m in await conn.execute(select(runs).where(runs.c.id.in_(keys)))
                }
            page = [_as_runs_say(row, by_runs.get(row["id"])) for row in projected]
            async with self._sql(repair) as conn:
                current = await _rows_by_id(conn, runs, keys, lock=repair)
                fix = []
                for want in page:
                    have = current.get(want["id"])
                    if have is None and self._pruned(want, kept):
                        continue
                    diff = _run_difference(want, have)
                    if (
                        diff is not None
                        and have is not None
                        and _ahead(have, want)
                        and await self._updated_since(
                            report, "runs", self.names.run_subject(want["job_id"], want["id"])
                        )
                    ):
                        diff = None
                    if diff is not None:
                        report.add(diff)
                        fix.append(want)
                if repair and fix:
                    await _replace(conn, runs, runs.c.id, fix)
                    ids = [r["id"] for r in fix]
                    async with self.scratch.engine.connect() as scratch:
                        found = await scratch.execute(
                            select(run_attempts).where(run_attempts.c.run_id.in_(ids))
                        )
                        attempts = [dict(m._mapping) for m in found]
                    await conn.execute(delete(run_attempts).where(run_attempts.c.run_id.in_(ids)))
                    if attempts:
                        await conn.execute(insert(run_attempts), attempts)
                    report.repaired += len(fix)
        report.compared["runs"] = compared

    async def _kept_runs(self) -> dict[str, tuple[int, Any]]:
        """Per job: how many finished runs SQL holds, and the oldest slot among them."""
        finished = runs.c.status.in_(precedence.FINAL_STATUSES)
        async with self.history.connect() as conn:
            found = await conn.execute(
                select(runs.c.job_id, func.count(), func.min(runs.c.slot))
                .where(finished)
                .group_by(runs.c.job_id)
            )
            limits = {
                job_id: RetentionLimits(runs_per_job=self.runs_per_job).for_job(spec).runs
                for job_id, spec in await conn.execute(select(jobs.c.id, jobs.c.spec))
            }
        self._limits = limits
        return {job_id: (int(n), oldest) for job_id, n, oldest in found}

    def _pruned(self, want: dict[str, Any], kept: dict[str, tuple[int, Any]]) -> bool:
        """Whether a finished run missing from SQL is one retention deleted: its job keeps its
        limit of finished runs, all of them newer than this one."""
        if want["status"] not in precedence.FINAL_STATUSES:
            return False
        limit = self._limits.get(want["job_id"], self.runs_per_job)
        count, oldest = kept.get(want["job_id"], (0, None))
        return limit > 0 and count >= limit and oldest is not None and want["slot"] < oldest

    def _sql(self, repair: bool) -> Any:
        """A connection to the history: a write transaction when repairing."""
        return self.history.begin() if repair else self.history.connect()


def _job_difference(want: dict[str, Any], have: dict[str, Any] | None) -> Difference | None:
    if have is None:
        return Difference("job_missing", want["id"], f"revision {want['revision']}", "-")
    if have["revision"] != want["revision"]:
        return Difference(
            "job_revision", want["id"], f"revision {want['revision']}", f"revision {have['revision']}"
        )
    fields = [f for f in _JOB_FIELDS if have[f] != want[f]]
    if fields:
        return Difference("job_differs", want["id"], _show(want, fields), _show(have, fields))
    return None


def _ahead(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Whether SQL has the run further along than the streams' snapshot."""
    return precedence.progress(have["status"], have["attempt"]) > precedence.progress(
        want["status"], want["attempt"]
    )


def _run_difference(want: dict[str, Any], have: dict[str, Any] | None) -> Difference | None:
    if have is None:
        return Difference("run_missing", want["id"], f"{want['status']} (attempt {want['attempt']})", "-")
    if (have["status"], have["attempt"]) != (want["status"], want["attempt"]):
        return Difference(
            "run_status",
            want["id"],
            f"{want['status']} (attempt {want['attempt']})",
            f"{have['status']} (attempt {have['attempt']})",
        )
    fields = [f for f in _RUN_DETAILS if want[f] is not None and have[f] != want[f]]
    if fields:
        return Difference("run_differs", want["id"], _show(want, fields), _show(have, fields))
    return None


def _as_runs_say(projected: dict[str, Any], by_runs: dict[str, Any] | None) -> dict[str, Any]:
    """The run as the streams say: the projection of all streams, except that whenever RUNS
    has events for the run, its status and attempt (and that attempt's columns) are what
    RUNS alone gives."""
    if by_runs is None or (by_runs["status"], by_runs["attempt"]) == (
        projected["status"],
        projected["attempt"],
    ):
        return projected
    return projected | {name: by_runs[name] for name in ("status", "attempt", *precedence.ATTEMPT_COLUMNS)}


def _show(row: dict[str, Any], fields: Sequence[str]) -> str:
    return ", ".join(f"{f}={row[f]}" for f in fields)


async def _replace(conn: AsyncConnection, table: Table, key: Any, rows: list[dict[str, Any]]) -> None:
    await conn.execute(delete(table).where(key.in_([r[key.name] for r in rows])))
    await conn.execute(insert(table), rows)


async def _rows_by_id(
    conn: AsyncConnection, table: Table, keys: list[Any], *, lock: bool
) -> dict[Any, dict[str, Any]]:
    """The rows of `table` with these ids, by id; locked for update on PostgreSQL when `lock`
    (a repair rewrites them in the same transaction)."""
    stmt = select(table).where(table.c.id.in_(keys))
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return {r["id"]: r for r in (dict(m._mapping) for m in await conn.execute(stmt))}


async def _pages(engine: AsyncEngine, table: Table) -> AsyncIterator[list[dict[str, Any]]]:
    """Every row of `table` (keyed by `id`), in key order, PAGE rows at a time."""
    after: str | None = None
    while True:
        stmt = select(table).order_by(table.c.id).limit(PAGE)
        if after is not None:
            stmt = stmt.where(table.c.id > after)
        async with engine.connect() as conn:
            page = [dict(m._mapping) for m in await conn.execute(stmt)]
        if not page:
            return
        yield page
        after = page[-1]["id"]


async def _read(js: JetStreamContext, feed: Feed, last: int) -> AsyncIterator[list[tuple[int, str, bytes]]]:
    """The messages of `feed` up to sequence `last`, in order, a batch at a time, through a
    temporary consumer of this check's own (the projector's consumer is left alone)."""
    name = f"cronbus-check-{uuid.uuid4().hex[:12]}"
    await js.add_consumer(
        feed.stream,
        ConsumerConfig(
            name=name,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=feed.subjects,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        ),
    )
    sub = await js.pull_subscribe_bind(durable=name, stream=feed.stream)
    try:
        seen = 0
        while seen < last:
            try:
                msgs = await fetch_when_served(sub, BATCH, timeout=5.0, consumer=name)
            except TimeoutError:
                # Nothing more to deliver: the rest expired or was deleted meanwhile.
                info = await js.consumer_info(feed.stream, name)
                if info.num_pending == 0:
                    return
                continue
            batch = []
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq <= seen:
                    continue
                seen = seq
                if seq <= last:
                    batch.append((seq, msg.subject, msg.data))
            if batch:
                yield batch
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(feed.stream, name)
        except Exception as exc:
            log.debug("removing the check's consumer %s failed (it expires by itself): %s", name, exc)


async def fetch_when_served(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    timeout: float,
    *,
    consumer: str,
    patience: float = UNAVAILABLE_PATIENCE,
) -> list[Msg]:
    """`sub.fetch`, asked again while no server answers for the consumer (503): in a cluster
    a consumer created a moment ago may not be known yet on the server the check is connected
    to, and one whose node restarts is unserved until a replica takes over. Gives up (raises)
    after `patience` seconds of nothing but 503s."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await sub.fetch(batch, timeout=timeout)
        except ServiceUnavailableError:
            if time.monotonic() >= deadline:
                raise
            log.debug("no server answers for consumer %s yet; asking again", consumer)
            await asyncio.sleep(0.2)


def check_main(args: argparse.Namespace, settings: Settings) -> int:
    """`cronbus check`: print the report (a table, or JSON with --json); 0 when SQL agrees with
    the streams, 1 when it does not, 2 when the check could not run."""
    logging.basicConfig(
        level=settings.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        report = asyncio.run(
            compare(
                settings.nats_url,
                settings.sql_url,
                settings.prefix,
                repair=bool(args.repair),
                runs_per_job=settings.history_runs_per_job,
            )
        )
    except Exception as exc:
        print(f"cronbus check: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        print(report.table())
    return 0 if report.ok else 1
