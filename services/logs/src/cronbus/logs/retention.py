"""Keeping the history bounded: old finished runs go, and older runs lose their output first.

Global limits, from settings (0 keeps everything):
* `history_runs_per_job` (CRONBUS_HISTORY_RUNS_PER_JOB): the newest N finished runs of each
  job are kept, with their attempts and output; older finished runs are deleted.
* `history_logs_per_job` (CRONBUS_HISTORY_LOGS_PER_JOB): only the newest M finished runs of
  each job keep their output (log chunks); older ones keep their row without output.

Runs that have not finished are never touched. "Newest" is by slot. A pass visits a bounded
number of jobs (continuing where the last pass stopped, wrapping around) and deletes a
bounded number of runs, so one pass never holds the database for long.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cronbus.logs.precedence import FINAL_STATUSES
from cronbus.logs.store import HistoryWriter
from cronbus.shared.history.schema import log_chunks, run_attempts, runs
from cronbus.shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    runs_per_job: int = 1000
    logs_per_job: int = 100
    jobs_per_pass: int = 100
    runs_per_pass: int = 2000

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionLimits:
        return cls(runs_per_job=settings.history_runs_per_job, logs_per_job=settings.history_logs_per_job)


@dataclass(slots=True)
class RetentionPass:
    """What one pass did."""

    jobs_visited: int = 0
    runs_deleted: int = 0
    outputs_deleted: int = 0


class Retention:
    """Trims the history one bounded pass at a time."""

    def __init__(self, writer: HistoryWriter, limits: RetentionLimits) -> None:
        self.writer = writer
        self.limits = limits
        # The last job visited: the next pass continues after it.
        self._after = ""

    async def run_pass(self) -> RetentionPass:
        done = RetentionPass()
        if not (self.limits.runs_per_job or self.limits.logs_per_job):
            return done
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
        self._after = job_ids[-1] if len(job_ids) == self.limits.jobs_per_pass else ""
        for job_id in job_ids:
            budget = self.limits.runs_per_pass - done.runs_deleted - done.outputs_deleted
            if budget <= 0:
                # Come back to this job first next time.
                self._after = _before(job_id)
                break
            done.jobs_visited += 1
            async with self.writer.writing() as conn:
                done.runs_deleted += await _delete_old_runs(conn, job_id, self.limits.runs_per_job, budget)
                budget = self.limits.runs_per_pass - done.runs_deleted - done.outputs_deleted
                if budget > 0:
                    done.outputs_deleted += await _delete_old_output(
                        conn, job_id, self.limits.logs_per_job, budget
                    )
        if done.runs_deleted or done.outputs_deleted:
            log.info(
                "retention: deleted %d runs and the output of %d more (%d jobs visited)",
                done.runs_deleted, done.outputs_deleted, done.jobs_visited,
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


async def _delete_old_runs(conn: AsyncConnection, job_id: str, keep: int, budget: int) -> int:
    if keep <= 0:
        return 0
    cutoff = await _kept_from(conn, job_id, keep)
    if cutoff is None:
        return 0
    ids = list(
        await conn.scalars(
            select(runs.c.id)
            .where(runs.c.job_id == job_id, runs.c.status.in_(FINAL_STATUSES), runs.c.slot < cutoff)
            .order_by(runs.c.slot)
            .limit(budget)
        )
    )
    if ids:
        await conn.execute(delete(log_chunks).where(log_chunks.c.run_id.in_(ids)))
        await conn.execute(delete(run_attempts).where(run_attempts.c.run_id.in_(ids)))
        await conn.execute(delete(runs).where(runs.c.id.in_(ids)))
    return len(ids)


async def _delete_old_output(conn: AsyncConnection, job_id: str, keep: int, budget: int) -> int:
    if keep <= 0:
        return 0
    cutoff = await _kept_from(conn, job_id, keep)
    if cutoff is None:
        return 0
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
        await conn.execute(delete(log_chunks).where(log_chunks.c.run_id.in_(ids)))
    return len(ids)
