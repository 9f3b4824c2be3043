"""Reads from the SQL history the logs service projects: jobs, runs, output, api keys."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, and_, case, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronbus.api.domain import RAN_OUTCOMES, Cursor, JobState, RunSummary
from cronbus.api.schemas import AttemptOut, HistoryOut, LastRun, RunOut
from cronbus.shared.events import JobSpec
from cronbus.shared.history.schema import (
    api_keys,
    jobs,
    log_chunks,
    projector_positions,
    rejected_events,
    run_attempts,
    runs,
)


def _job_state(row: Any) -> JobState:
    return JobState(
        id=row.id,
        spec=msgspec.convert(row.spec, JobSpec),
        revision=row.revision,
        paused=row.paused,
        deleted=row.deleted,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _run(row: Any) -> RunOut:
    return RunOut(
        id=row.id,
        job_id=row.job_id,
        slot=row.slot,
        attempt=row.attempt,
        status=row.status,
        trigger=row.trigger,
        pool=row.pool,
        runner=row.runner,
        dispatched_at=row.dispatched_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        exit_code=row.exit_code,
        duration_ms=row.duration_ms,
        lateness_ms=row.lateness_ms,
        error=row.error,
        cpu_ms=row.cpu_ms,
        peak_rss_bytes=row.peak_rss_bytes,
        output_bytes=row.output_bytes or 0,
        truncated=bool(row.truncated),
    )


@dataclass(frozen=True, slots=True)
class JobFilter:
    """`GET /v1/jobs` filters; each given one must hold. `labels`: "key=value" or "key"."""

    state: str | None = None
    labels: Sequence[str] = ()
    pool: str | None = None
    q: str | None = None


# The newest run of the job in the row, and the newest one that ran to an outcome (a correlated
# subquery each, on the runs (job_id, slot) index: a few index rows per job).
# Ordered by slot alone, so the index answers it by reading backwards from the job's newest slot
# (a tie-breaker outside the index would sort all of a job's runs).
_LAST_RUN_ID = (
    select(runs.c.id)
    .where(runs.c.job_id == jobs.c.id)
    .order_by(runs.c.slot.desc())
    .limit(1)
    .scalar_subquery()
)
_LAST_OUTCOME = (
    select(runs.c.status)
    .where(runs.c.job_id == jobs.c.id, runs.c.status.in_(RAN_OUTCOMES))
    .order_by(runs.c.slot.desc())
    .limit(1)
    .scalar_subquery()
)


def _iso(at: datetime) -> str:
    """`at` as the jobs' JSON spec writes instants (msgspec: ISO-8601, Z for UTC)."""
    text_: str = msgspec.to_builtins(at.replace(microsecond=0))
    return text_


def state_of(now: datetime) -> ColumnElement[str]:
    """domain.job_state in SQL: the job's state at `now`, for filtering. Keep them together."""
    schedule = jobs.c.spec["schedule"].as_string()
    end_at = jobs.c.spec["end_at"].as_string()
    return case(
        (jobs.c.paused.is_(True), "paused"),
        (
            or_(
                and_(end_at.is_not(None), end_at < _iso(now)),
                and_(func.lower(func.substr(schedule, 1, 3)) == "@at", _LAST_RUN_ID.is_not(None)),
            ),
            "finished",
        ),
        (func.coalesce(_LAST_OUTCOME, "succeeded") != "succeeded", "failing"),
        else_="scheduled",
    )


def _escaped(q: str) -> str:
    return q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class History:
    """Read-only queries; every call is one short transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def rejected(self) -> HistoryOut:
        """How many events the projectors set aside or cleaned (`rejected_events`)."""
        query = select(
            rejected_events.c.sanitized, func.count(), func.max(rejected_events.c.rejected_at)
        ).group_by(rejected_events.c.sanitized)
        async with self.engine.connect() as conn:
            found = {bool(sanitized): (int(n), at) for sanitized, n, at in await conn.execute(query)}
        times = [at for _, at in found.values() if at is not None]
        return HistoryOut(
            rejected_events=found.get(False, (0, None))[0],
            sanitized_events=found.get(True, (0, None))[0],
            last_rejected_at=max(times) if times else None,
        )

    async def job(self, job_id: str) -> JobState | None:
        """The job as projected, deleted ones included (callers decide what deleted means)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return None if row is None else _job_state(row)

    async def jobs(
        self, *, after: Cursor | None, limit: int, now: datetime, where: JobFilter | None = None
    ) -> list[tuple[JobState, RunSummary]]:
        """Live jobs that pass `where`, oldest first, `limit` of them after the cursor, each
        with what its state needs from its runs."""
        where = where or JobFilter()
        query = select(jobs, _LAST_RUN_ID.label("last_run_id"), _LAST_OUTCOME.label("last_outcome")).where(
            jobs.c.deleted.is_(False)
        )
        if after is not None:
            query = query.where(
                or_(jobs.c.created_at > after.at, and_(jobs.c.created_at == after.at, jobs.c.id > after.id))
            )
        if where.state is not None:
            query = query.where(state_of(now) == where.state)
        if where.pool is not None:
            query = query.where(jobs.c.spec["pool"].as_string() == where.pool)
        for label in where.labels:
            key, eq, value = label.partition("=")
            found = jobs.c.spec[("labels", key)].as_string()
            query = query.where(found == value if eq else found.is_not(None))
        if where.q:
            query = query.where(func.lower(jobs.c.name).like(f"%{_escaped(where.q)}%", escape="\\"))
        query = query.order_by(jobs.c.created_at, jobs.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            last = await self._last_runs(conn, [r.last_run_id for r in rows if r.last_run_id is not None])
        return [
            (_job_state(r), RunSummary(last_run=last.get(r.last_run_id), last_outcome=r.last_outcome))
            for r in rows
        ]

    async def run_summary(self, job_id: str) -> RunSummary:
        """What the job's state needs from its runs (see `jobs`)."""
        last_id = (
            select(runs.c.id)
            .where(runs.c.job_id == job_id)
            .order_by(runs.c.slot.desc())
            .limit(1)
            .scalar_subquery()
        )
        outcome = (
            select(runs.c.status)
            .where(runs.c.job_id == job_id, runs.c.status.in_(RAN_OUTCOMES))
            .order_by(runs.c.slot.desc())
            .limit(1)
            .scalar_subquery()
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(last_id.label("id"), outcome.label("outcome")))).one()
            last = await self._last_runs(conn, [row.id] if row.id is not None else [])
        return RunSummary(last_run=last.get(row.id), last_outcome=row.outcome)

    @staticmethod
    async def _last_runs(conn: AsyncConnection, ids: list[str]) -> dict[str, LastRun]:
        if not ids:
            return {}
        query = select(runs.c.id, runs.c.slot, runs.c.status, runs.c.finished_at).where(runs.c.id.in_(ids))
        return {
            r.id: LastRun(id=r.id, slot=r.slot, status=r.status, finished_at=r.finished_at)
            for r in await conn.execute(query)
        }

    async def runs_by_id(self, job_id: str, run_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """(status, error) of each of the job's runs named (those the history has)."""
        found: dict[str, tuple[str, str | None]] = {}
        query = select(runs.c.id, runs.c.status, runs.c.error).where(runs.c.job_id == job_id)
        async with self.engine.connect() as conn:
            # Bounded IN lists: SQLite allows 32,766 parameters, PostgreSQL 65,535.
            for i in range(0, len(run_ids), 1000):
                chunk = list(run_ids[i : i + 1000])
                for r in await conn.execute(query.where(runs.c.id.in_(chunk))):
                    found[r.id] = (r.status, r.error)
        return found

    async def runs_of(self, job_id: str, *, before: Cursor | None, limit: int) -> list[RunOut]:
        """A job's runs, newest slot first."""
        query = select(runs).where(runs.c.job_id == job_id)
        if before is not None:
            query = query.where(
                or_(runs.c.slot < before.at, and_(runs.c.slot == before.at, runs.c.id < before.id))
            )
        query = query.order_by(runs.c.slot.desc(), runs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_run(r) for r in rows]

    async def run(self, run_id: str) -> RunOut | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(runs).where(runs.c.id == run_id))).first()
            if row is None:
                return None
            attempts = (
                await conn.execute(
                    select(run_attempts)
                    .where(run_attempts.c.run_id == run_id)
                    .order_by(run_attempts.c.attempt)
                )
            ).all()
        run = _run(row)
        run.attempts = [
            AttemptOut(
                attempt=a.attempt,
                status=a.status,
                runner=a.runner,
                started_at=a.started_at,
                finished_at=a.finished_at,
                exit_code=a.exit_code,
                duration_ms=a.duration_ms,
                error=a.error,
            )
            for a in attempts
        ]
        return run

    async def latest_log_attempt(self, run_id: str) -> int | None:
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(func.max(log_chunks.c.attempt)).where(log_chunks.c.run_id == run_id)
                )
            ).scalar()
        return None if value is None else int(value)

    async def log(self, run_id: str, attempt: int) -> bytes:
        """The attempt's output, chunks in sequence order (all streams interleaved as written)."""
        query = (
            select(log_chunks.c.data)
            .where(log_chunks.c.run_id == run_id, log_chunks.c.attempt == attempt)
            .order_by(log_chunks.c.seq)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return b"".join(bytes(r.data) for r in rows)

    async def projected_seq(self, consumer: str) -> int:
        """The last stream sequence the logs service's `consumer` applied (0 before any)."""
        query = select(projector_positions.c.stream_seq).where(projector_positions.c.consumer == consumer)
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return 0 if value is None else int(value)

    async def role_of_key(self, key_hash: str, now: datetime) -> tuple[str, str] | None:
        """(name, role) of an unrevoked key with this sha256 hex digest."""
        query = select(api_keys.c.name, api_keys.c.role, api_keys.c.revoked_at).where(
            api_keys.c.key_hash == key_hash
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or (row.revoked_at is not None and row.revoked_at <= now):
            return None
        return row.name, row.role
