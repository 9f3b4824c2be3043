"""Reads from the SQL history the logs service projects: jobs, runs, output, api keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.api.domain import Cursor, JobState
from cronbus.api.schemas import AttemptOut, HistoryOut, RunOut
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

    async def jobs(self, *, after: Cursor | None, limit: int) -> list[JobState]:
        """Live jobs, oldest first, `limit` of them after the cursor."""
        query = select(jobs).where(jobs.c.deleted.is_(False))
        if after is not None:
            query = query.where(
                or_(jobs.c.created_at > after.at, and_(jobs.c.created_at == after.at, jobs.c.id > after.id))
            )
        query = query.order_by(jobs.c.created_at, jobs.c.id).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_job_state(r) for r in rows]

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
