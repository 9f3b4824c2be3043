"""Keeping the history bounded: old finished runs go, and older runs lose their output first.

Limits (0 keeps everything); a job's spec may override the per-job ones (`retention`):
* runs per job: `history_runs_per_job` (CRONBUS_HISTORY_RUNS_PER_JOB), or the job's
  `retention.runs`: the newest N finished runs of each job are kept, with their attempts and
  output; older finished runs are deleted.
* `history_logs_per_job` (CRONBUS_HISTORY_LOGS_PER_JOB): only the newest M finished runs of
  each job keep their output (log chunks); older ones keep their row without output.
* log bytes per job: `history_log_bytes_per_job` (CRONBUS_HISTORY_LOG_BYTES_PER_JOB), or the
  job's `retention.log_bytes`: output is kept for the newest runs of the job until their total
  exceeds the budget; the run that crosses it and all older ones lose their output.
* `history_log_bytes_total` (CRONBUS_HISTORY_LOG_BYTES_TOTAL): while all stored output
  together exceeds it, the oldest finished runs (of any job) lose their output.

Runs that have not finished are never touched, though their output counts towards the byte
budgets. "Newest" and "oldest" are by slot. Output sizes come from `output_sizes`, which the
LOGS projector keeps. A pass visits a bounded number of jobs (continuing where the last pass
stopped, wrapping around) and deletes a bounded number of runs and outputs, so one pass never
holds the database for long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cronbus.logs.precedence import FINAL_STATUSES
from cronbus.logs.store import HistoryWriter
from cronbus.shared.events import Retention as JobRetention
from cronbus.shared.history.schema import jobs, log_chunks, output_sizes, run_attempts, runs
from cronbus.shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The limits that apply to one job (0 keeps everything)."""

    runs: int
    log_bytes: int


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    runs_per_job: int = 1000
    logs_per_job: int = 100
    log_bytes_per_job: int = 100 * 1024 * 1024
    log_bytes_total: int = 0
    jobs_per_pass: int = 100
    runs_per_pass: int = 2000

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionLimits:
        return cls(
            runs_per_job=settings.history_runs_per_job,
            logs_per_job=settings.history_logs_per_job,
            log_bytes_per_job=settings.history_log_bytes_per_job,
            log_bytes_total=settings.history_log_bytes_total,
        )

    def for_job(self, spec: Any) -> JobLimits:
        """The limits of the job whose stored spec (`jobs.spec`, JSON) is `spec`: its own
        `retention` where it names one, the global limits elsewhere (and for unknown jobs)."""
        own = _own_retention(spec)
        return JobLimits(
            runs=self.runs_per_job if own.runs is None else own.runs,
            log_bytes=self.log_bytes_per_job if own.log_bytes is None else own.log_bytes,
        )


def _own_retention(spec: Any) -> JobRetention:
    if not isinstance(spec, dict) or not spec.get("retention"):
        return JobRetention()
    try:
        own = msgspec.convert(spec["retention"], JobRetention)
    except msgspec.ValidationError as exc:
        log.warning(
            "retention: ignoring the unreadable retention %r of a job spec: %s", spec["retention"], exc
        )
        return JobRetention()
    # The API never accepts negative limits; anything else that wrote one gets the defaults.
    return JobRetention(
        runs=own.runs if own.runs is not None and own.runs >= 0 else None,
        log_bytes=own.log_bytes if own.log_bytes is not None and own.log_bytes >= 0 else None,
    )


@dataclass(slots=True)
class RetentionPass:
    """What one pass did."""

    jobs_visited: int = 0
    runs_deleted: int = 0
    outputs_deleted: int = 0
    # Bytes of output deleted, with runs or alone.
    bytes_deleted: int = 0


class Retention:
    """Trims the history one bounded pass at a time."""

    def __init__(self, writer: HistoryWriter, limits: RetentionLimits) -> None:
        self.writer = writer
        self.limits = limits
        # The last job visited: the next pass continues after it.
        self._after = ""

    async def run_pass(self) -> RetentionPass:
        done = RetentionPass()

        def budget() -> int:
            return self.limits.runs_per_pass - done.runs_deleted - done.outputs_deleted

        async with self.writer.engine.connect() as conn:
            job_ids = list(
                await conn.scalars(
                    select(runs.c.job_id)
                    .distinct()
                    .where(runs.c.job_id > self._after)
                    .order_by(runs.c.job_id)
                    .limit(self.limits.jobs_per_pass)
                )
            )
            found = await conn.execute(select(jobs.c.id, jobs.c.spec).where(jobs.c.id.in_(job_ids)))
            specs: dict[str, Any] = {row.id: row.spec for row in found}
        self._after = job_ids[-1] if len(job_ids) == self.limits.jobs_per_pass else ""
        for job_id in job_ids:
            done.jobs_visited += 1
            limits = self.limits.for_job(specs.get(job_id))
            async with self.writer.writing() as conn:
                await _delete_old_runs(conn, done, job_id, limits.runs, budget())
                if budget() > 0:
                    await _delete_old_output(conn, done, job_id, self.limits.logs_per_job, budget())
                if budget() > 0:
                    await _delete_output_over(conn, done, job_id, limits.log_bytes, budget())
            if budget() <= 0:
                # This job may have more to delete: come back to it first next time.
                self._after = _before(job_id)
                break
        if self.limits.log_bytes_total > 0 and budget() > 0:
            async with self.writer.writing() as conn:
                await _delete_output_over_total(conn, done, self.limits.log_bytes_total, budget())
        if done.runs_deleted or done.outputs_deleted:
            log.info(
                "retention: deleted %d runs and the output of %d more, %d bytes of output (%d jobs visited)",
                done.runs_deleted, done.outputs_deleted, done.bytes_deleted, done.jobs_visited,
            )  # fmt: skip
        return done


def _before(job_id: str) -> str:
    """A string just below `job_id`, so `job_id > it` includes `job_id` again."""
    return job_id[:-1] if job_id else ""


async def _kept_from(conn: AsyncConnection, job_id: str, keep: int) -> datetime | None:
    """The slot of the `keep`-th newest finished run of `job_id` (None: fewer than that)."""
    return await conn.scalar(
        select(runs.c.slot)
        .where(runs.c.job_id == job_id, runs.c.status.in_(FINAL_STATUSES))
        .order_by(runs.c.slot.desc())
        .offset(keep - 1)
        .limit(1)
    )


async def _drop_output(conn: AsyncConnection, ids: list[str]) -> int:
    """Delete the output of the runs `ids`; the bytes it held."""
    freed = await conn.scalar(
        select(func.coalesce(func.sum(output_sizes.c.bytes), 0)).where(output_sizes.c.run_id.in_(ids))
    )
    # Sizes first: a chunk the LOGS projector inserts meanwhile then gets a fresh size row.
    await conn.execute(delete(output_sizes).where(output_sizes.c.run_id.in_(ids)))
    await conn.execute(delete(log_chunks).where(log_chunks.c.run_id.in_(ids)))
    return int(freed or 0)


async def _delete_old_runs(
    conn: AsyncConnection, done: RetentionPass, job_id: str, keep: int, budget: int
) -> None:
    if keep <= 0:
        return
    cutoff = await _kept_from(conn, job_id, keep)
    if cutoff is None:
        return
    ids = list(
        await conn.scalars(
            select(runs.c.id)
            .where(runs.c.job_id == job_id, runs.c.status.in_(FINAL_STATUSES), runs.c.slot < cutoff)
            .order_by(runs.c.slot)
            .limit(budget)
        )
    )
    if ids:
        done.bytes_deleted += await _drop_output(conn, ids)
        await conn.execute(delete(run_attempts).where(run_attempts.c.run_id.in_(ids)))
        await conn.execute(delete(runs).where(runs.c.id.in_(ids)))
        done.runs_deleted += len(ids)


async def _delete_old_output(
    conn: AsyncConnection, done: RetentionPass, job_id: str, keep: int, budget: int
) -> None:
    if keep <= 0:
        return
    cutoff = await _kept_from(conn, job_id, keep)
    if cutoff is None:
        return
    ids = list(
        await conn.scalars(
            select(log_chunks.c.run_id)
            .distinct()
            .join(runs, runs.c.id == log_chunks.c.run_id)
            .where(runs.c.job_id == job_id, runs.c.status.in_(FINAL_STATUSES), runs.c.slot < cutoff)
            .limit(budget)
        )
    )
    if ids:
        done.bytes_deleted += await _drop_output(conn, ids)
        done.outputs_deleted += len(ids)


async def _delete_output_over(
    conn: AsyncConnection, done: RetentionPass, job_id: str, max_bytes: int, budget: int
) -> None:
    """Output of `job_id`'s runs, newest first, is kept while its running total stays within
    `max_bytes`; the finished runs past that lose it, oldest first."""
    if max_bytes <= 0:
        return
    newest_first = (runs.c.slot.desc(), runs.c.id.desc())
    with_totals = (
        select(
            runs.c.id,
            runs.c.slot,
            runs.c.status,
            func.sum(output_sizes.c.bytes).over(order_by=newest_first, rows=(None, 0)).label("total"),
        )
        .join(output_sizes, output_sizes.c.run_id == runs.c.id)
        .where(runs.c.job_id == job_id)
        .subquery()
    )
    ids = list(
        await conn.scalars(
            select(with_totals.c.id)
            .where(with_totals.c.total > max_bytes, with_totals.c.status.in_(FINAL_STATUSES))
            .order_by(with_totals.c.slot, with_totals.c.id)
            .limit(budget)
        )
    )
    if ids:
        done.bytes_deleted += await _drop_output(conn, ids)
        done.outputs_deleted += len(ids)


async def _delete_output_over_total(
    conn: AsyncConnection, done: RetentionPass, max_bytes: int, budget: int
) -> None:
    """While all stored output exceeds `max_bytes`, the oldest finished runs lose theirs."""
    total = int(await conn.scalar(select(func.coalesce(func.sum(output_sizes.c.bytes), 0))) or 0)
    excess = total - max_bytes
    if excess <= 0:
        return
    oldest = await conn.execute(
        select(runs.c.id, output_sizes.c.bytes)
        .join(output_sizes, output_sizes.c.run_id == runs.c.id)
        .where(runs.c.status.in_(FINAL_STATUSES))
        .order_by(runs.c.slot, runs.c.id)
        .limit(budget)
    )
    ids: list[str] = []
    freeing = 0
    for run_id, size in oldest:
        if freeing >= excess:
            break
        ids.append(run_id)
        freeing += size
    if ids:
        done.bytes_deleted += await _drop_output(conn, ids)
        done.outputs_deleted += len(ids)
