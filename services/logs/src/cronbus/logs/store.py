"""Writing the history: one transaction per batch, with the projector's position in it.

`HistoryWriter.apply` is the projector's only way into SQL. It reads the consumer's stored
position, applies the events after it, and moves the position forward, all in one
transaction, so a batch is either wholly in the history (and may then be acked) or not at
all (and will be delivered again). Every statement is an upsert that is safe to repeat.

Run events need no order (see `precedence`): each table gets ONE upsert statement for every
kind of run event, built once, in which a column an event does not speak about is NULL and
NULL means "no news". A batch's rows for one key are folded into one first, with the same
rules in Python (`precedence.merge_run`, `merge_attempt`): a run's started and finished in
one batch are one row. A batch is then written table by table, rows sorted by run id, as
executemany rounds with at most one row per key. Sorted, single-pass writes also mean the
DISPATCH and RUNS projectors, which write the same `runs` rows, take row locks in the same
order and cannot deadlock on PostgreSQL.

On SQLite, which has one writer at a time, the projectors' batches are group-committed:
batches that arrive while a transaction is being written go together in the next one, with
each consumer's position. A run whose run.dispatched (DISPATCH) and run.started/run.finished
(RUNS) are in one group is one row written once, and the group is one commit. When a group
fails, each batch in it is written alone, so one batch's bad data never fails another's.

Output reaches `log_chunks` from two events: `log.chunk` (LOGS) and, for a short attempt,
the parts `run.finished` (RUNS) carries inline. Both become the same insert-if-absent rows,
and only the rows actually inserted add to `output_sizes`, so a redelivery adds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Dialect, Insert, Table, bindparam, case, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronbus.logs import precedence
from cronbus.logs.poison import Rejection
from cronbus.shared.events import (
    AnyEvent,
    AuditRecorded,
    JobCreated,
    JobDeleted,
    JobEvents,
    JobPaused,
    JobResumed,
    JobUpdated,
    LogChunk,
    OutputPart,
    RunDispatched,
    RunFinished,
    RunStarted,
    utcnow,
)
from cronbus.shared.history.schema import (
    UTCDateTime,
    audit,
    jobs,
    log_chunks,
    output_sizes,
    projector_positions,
    rejected_events,
    run_attempts,
    runs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sequenced:
    """An event and the stream sequence it was stored at."""

    seq: int
    event: AnyEvent


@dataclass(frozen=True, slots=True)
class _Row:
    """One row for one of the run upserts: its conflict key, and its values."""

    key: tuple[Any, ...]
    values: dict[str, Any]


class HistoryWriter:
    """Applies batches of events to the history database.

    SQLite allows one writer at a time and fails, rather than waits, when a read transaction
    tries to become a write transaction behind another writer; the projectors of one process
    therefore take turns through `writing()`. PostgreSQL needs no such turn-taking.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        self._turn: asyncio.Lock | None = asyncio.Lock() if self._dialect == "sqlite" else None
        # In write order: runs first (the row both run projectors share), then attempts; output
        # comes last (see _store_output).
        dialect = engine.dialect
        self._run_upserts: list[tuple[Table, Prepared]] = [
            (runs, Prepared(self._runs_upsert(), dialect, runs, _RUNNER_NAMES)),
            (run_attempts, Prepared(self._attempts_upsert(), dialect, run_attempts, _RUNNER_NAMES)),
        ]
        # Insert-if-absent, answering the keys it did insert: only those add to the run's size.
        self._chunks_insert = Prepared(
            self.insert(log_chunks)
            .on_conflict_do_nothing(index_elements=["run_id", "attempt", "seq"])
            .returning(log_chunks.c.run_id, log_chunks.c.attempt, log_chunks.c.seq),
            dialect,
            log_chunks,
        )
        sizes = self.insert(output_sizes)
        self._sizes_upsert = Prepared(
            sizes.on_conflict_do_update(
                index_elements=["run_id"], set_={"bytes": output_sizes.c.bytes + sizes.excluded.bytes}
            ),
            dialect,
            output_sizes,
        )
        self._position_upsert = Prepared(self._position_statement(), dialect, projector_positions)
        self._jobs_create = Prepared(self._jobs_upsert(), dialect, jobs)
        # Batches waiting for the next group commit (SQLite only; see the module's docstring).
        self._waiting: list[_Batch] = []

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, committed when the block exits without an exception."""
        if self._turn is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._turn, self.engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        raise RuntimeError(f"the history store supports PostgreSQL and SQLite, not {self._dialect}")

    async def position(self, consumer: str) -> int:
        """The last stream sequence `consumer` applied (0 when it has applied nothing)."""
        async with self.engine.connect() as conn:
            return await _position(conn, consumer)

    async def apply(
        self,
        consumer: str,
        events: Sequence[Sequenced],
        last_seq: int,
        rejected: Sequence[Rejection] = (),
    ) -> int:
        """Apply the events after `consumer`'s position and move it to `last_seq`, atomically.

        `last_seq` covers messages that carried no event (malformed ones), so the position
        still advances past them; `rejected` are recorded in `rejected_events` in the same
        transaction. Returns how many events were applied (not skipped).
        """
        batch = _Batch(consumer, events, last_seq, rejected)
        if self._turn is None:
            async with self.writing() as conn:
                [applied] = await self._apply(conn, [batch])
            return applied
        result = batch.result = asyncio.get_running_loop().create_future()
        self._waiting.append(batch)
        try:
            async with self._turn:
                if not result.done():
                    # This batch leads a group: it and every batch that came while the last
                    # transaction was written.
                    group, self._waiting = self._waiting, []
                    if batch not in group:
                        group.append(batch)  # a leader that was cancelled had taken it
                    try:
                        await self._group_commit(group)
                    finally:
                        # Cancelled while writing: the next leader takes what is unsettled.
                        self._waiting[:0] = [b for b in group if b is not batch and not _settled(b)]
            return await result
        except asyncio.CancelledError:
            result.cancel()  # nobody waits for it any more: no group writes it
            raise

    async def _group_commit(self, group: list[_Batch]) -> None:
        """Write `group` in one transaction; if that fails, each batch alone (its own error)."""
        group = [b for b in group if not _settled(b)]
        if len(group) > 1:
            try:
                async with self.engine.begin() as conn:
                    applied = await self._apply(conn, group)
            except Exception as exc:
                log.debug("a group of %d batches failed (%s); writing them one by one", len(group), exc)
            else:
                for batch, count in zip(group, applied, strict=True):
                    _settle(batch, count)
                return
        for batch in group:
            try:
                async with self.engine.begin() as conn:
                    [count] = await self._apply(conn, [batch])
            except Exception as exc:
                _settle(batch, exc)
            else:
                _settle(batch, count)

    async def _apply(self, conn: AsyncConnection, batches: Sequence[_Batch]) -> list[int]:
        """Apply `batches` (of different consumers) in `conn`'s transaction; each one's count
        of events applied."""
        counts: list[int] = []
        fresh: list[AnyEvent] = []
        positions: list[tuple[_Batch, int]] = []
        for batch in batches:
            done = await _position(conn, batch.consumer)
            events = [e.event for e in batch.events if e.seq > done]
            # Job events do not commute: they are applied in stream order.
            await self._apply_jobs(conn, events)
            fresh.extend(events)
            counts.append(len(events))
            positions.append((batch, done))
        await self._record_audit(conn, fresh)
        rows = _run_rows(fresh)
        for table, upsert in self._run_upserts:
            for round_ in _rounds(rows[table.name]):
                await upsert.executemany(conn, round_)
        await self._store_output(conn, rows[log_chunks.name])
        for batch, done in positions:
            await self._record_rejections(conn, batch.consumer, [r for r in batch.rejected if r.seq > done])
            await self._save_position(conn, batch.consumer, max(done, batch.last_seq))
        return counts

    async def reject(self, consumer: str, rejection: Rejection) -> None:
        """Set one message aside: record it and move the position past it, atomically."""
        async with self.writing() as conn:
            if rejection.seq <= await _position(conn, consumer):
                return
            await self._record_rejections(conn, consumer, [rejection])
            await self._save_position(conn, consumer, rejection.seq)

    async def _record_rejections(
        self, conn: AsyncConnection, consumer: str, rejected: Sequence[Rejection]
    ) -> None:
        if not rejected:
            return
        at = utcnow()
        stmt = self.insert(rejected_events).on_conflict_do_nothing(index_elements=["stream", "stream_seq"])
        await conn.execute(stmt, [r.row(consumer) | {"rejected_at": at} for r in rejected])

    async def _store_output(self, conn: AsyncConnection, chunks: list[_Row]) -> None:
        """Insert the chunks that are not there yet, and add their bytes to `output_sizes`."""
        added: dict[str, int] = {}
        for round_ in _rounds(chunks):
            sizes = {(c["run_id"], c["attempt"], c["seq"]): len(c["data"]) for c in round_}
            for run_id, attempt, seq in await self._chunks_insert.returning(conn, round_):
                added[run_id] = added.get(run_id, 0) + sizes[(run_id, attempt, seq)]
        if added:
            await self._sizes_upsert.executemany(
                conn, [{"run_id": run_id, "bytes": n} for run_id, n in sorted(added.items())]
            )

    # --- audit: job events and AuditRecorded, one row per event, keyed by the event id ---

    async def _record_audit(self, conn: AsyncConnection, events: Sequence[AnyEvent]) -> None:
        audited = [event for event in events if isinstance(event, _AUDITED)]
        rows = [row for event in audited if (row := _audit_row(event)) is not None]
        if rows:
            stmt = self.insert(audit).on_conflict_do_nothing(index_elements=["id"])
            await conn.execute(stmt, rows)

    # --- jobs: one stream, applied in order; the revision guards against going backwards ---

    async def _apply_jobs(self, conn: AsyncConnection, events: Iterable[AnyEvent]) -> None:
        """The batch's job events, in stream order; consecutive creations are one statement
        (a batch creating a thousand jobs is one round trip, not a thousand)."""
        created: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, JobCreated):
                created.append(_created_row(event))
                continue
            if not isinstance(event, JobEvents):
                continue
            if created:
                await self._jobs_create.executemany(conn, created)
                created = []
            await self._apply_job(conn, event)
        if created:
            await self._jobs_create.executemany(conn, created)

    def _jobs_upsert(self) -> Insert:
        stmt = self.insert(jobs)
        return stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={c.key: stmt.excluded[c.key] for c in jobs.columns if c.key != "id"},
            where=jobs.c.revision <= stmt.excluded.revision,
        )

    async def _apply_job(
        self, conn: AsyncConnection, event: JobUpdated | JobDeleted | JobPaused | JobResumed
    ) -> None:
        at = event.occurred_at
        changes: dict[str, Any] = {"revision": event.revision, "updated_at": at}
        match event:
            case JobUpdated():
                changes |= {"name": event.spec.name, "spec": msgspec.to_builtins(event.spec)}
            case JobDeleted():
                changes["deleted"] = True
            case JobPaused():
                changes["paused"] = True
            case JobResumed():
                changes["paused"] = False
        result = await conn.execute(
            update(jobs).where(jobs.c.id == event.job_id, jobs.c.revision <= event.revision).values(**changes)
        )
        if result.rowcount == 0:
            log.info(
                "%s for job %s revision %d changed nothing (job unknown or at a newer revision)",
                event.__struct_config__.tag,
                event.job_id,
                event.revision,
            )

    # --- run events: one order-independent upsert per table (see precedence) ---

    def _runs_upsert(self) -> Insert:
        stmt = self.insert(runs)
        new = stmt.excluded
        newer = new.attempt > runs.c.attempt
        same = new.attempt == runs.c.attempt
        # Only run.dispatched carries a dispatch time; the others leave the run's columns alone.
        dispatch = new.dispatched_at.is_not(None)
        set_: dict[str, Any] = {
            "attempt": case((newer, new.attempt), else_=runs.c.attempt),
            "status": case(
                (_progress(new.status, new.attempt) > _progress(runs.c.status, runs.c.attempt), new.status),
                else_=runs.c.status,
            ),
        }
        # `job_id` and `slot` are never set again: every event of a run carries the same
        # ones (the run id is derived from them), and a column left out of the SET spares
        # SQLite rewriting the (job_id, slot) index entry on every update.
        for name in precedence.DISPATCH_COLUMNS:
            set_[name] = case((dispatch, new[name]), else_=runs.c[name])
        for name in precedence.ATTEMPT_COLUMNS:
            current = runs.c[name]
            if name == "runner":
                merged: ColumnElement[Any] = _runner_merged(current)
            elif name == "output_bytes":
                merged = case((new.output_bytes > current, new.output_bytes), else_=current)
            elif name == "truncated":
                merged = new.truncated | current
            else:
                merged = func.coalesce(new[name], current)
            # A newer attempt starts afresh: what its event did not say is NULL (or 0/False).
            set_[name] = case((newer, new[name]), (same, merged), else_=current)
        return stmt.on_conflict_do_update(index_elements=["id"], set_=set_)

    def _attempts_upsert(self) -> Insert:
        stmt = self.insert(run_attempts)
        new = stmt.excluded
        current = run_attempts.c
        started = new.status == precedence.RUNNING
        set_: dict[str, Any] = {
            "status": case((started, current.status), else_=new.status),
            "runner": _runner_merged(current.runner),
            "started_at": func.coalesce(new.started_at, current.started_at),
        }
        for name in ("finished_at", "exit_code", "duration_ms", "error"):
            set_[name] = case((started, current[name]), else_=new[name])
        return stmt.on_conflict_do_update(index_elements=["run_id", "attempt"], set_=set_)

    def _position_statement(self) -> Insert:
        """Moves a consumer's position forward, never back; built once, run once per batch."""
        stmt = self.insert(projector_positions)
        new = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=["consumer"],
            set_={
                "stream_seq": case(
                    (new.stream_seq > projector_positions.c.stream_seq, new.stream_seq),
                    else_=projector_positions.c.stream_seq,
                ),
                "updated_at": new.updated_at,
            },
        )

    async def _save_position(self, conn: AsyncConnection, consumer: str, seq: int) -> None:
        await self._position_upsert.executemany(
            conn, [{"consumer": consumer, "stream_seq": seq, "updated_at": utcnow()}]
        )


@dataclass(slots=True, eq=False)
class _Batch:
    """One `HistoryWriter.apply` call; on SQLite, its outcome once its group is written.
    Compared by identity: `batch in group` must not compare whole event lists."""

    consumer: str
    events: Sequence[Sequenced]
    last_seq: int
    rejected: Sequence[Rejection]
    result: asyncio.Future[int] | None = None


def _settled(batch: _Batch) -> bool:
    return batch.result is not None and batch.result.done()


def _settle(batch: _Batch, outcome: int | BaseException) -> None:
    future = batch.result
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Prepared:
    """An INSERT compiled once for the engine's dialect, run through the driver with tuples.

    Building parameters through SQLAlchemy (a dict per row, every value through its type's
    processing, again for each statement) cost more than the database's own work for the
    small rows of a projection. Here each value still goes through its column type's bind
    processing -- what SQLAlchemy would store is stored (SQLite's datetime strings above all)
    -- but only for the types that have any, and the rows reach the driver as tuples.
    Constants the statement's expressions hold are bound once.
    """

    # Rows per multi-row INSERT ... RETURNING: within SQLite's and PostgreSQL's limits on
    # parameters per statement (32766 and 32767) for any table here.
    _ROWS_PER_STATEMENT = 500

    def __init__(self, stmt: Insert, dialect: Dialect, table: Table, extra: Sequence[str] = ()) -> None:
        """`extra`: names of parameters beyond the table's columns that each row gives."""
        compiled = stmt.compile(dialect=dialect, column_keys=[c.key for c in table.columns])
        columns = [c.key for c in table.columns] + list(extra)
        names: list[str] = list(compiled.positiontup or ())
        self._processors: list[tuple[str, Callable[[Any], Any]]] = []
        self._constants: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None and isinstance(bind.type, UTCDateTime) and dialect.name == "sqlite":
                process = _sqlite_utc_text if _same_text(process) else process
            if name in columns:
                if process is not None:
                    self._processors.append((name, process))
            else:
                value = bind.effective_value
                self._constants[name] = process(value) if process is not None else value
        self._names = names
        self._get = itemgetter(*names)
        self.sql = compiled.string
        self._positional_numbers = dialect.paramstyle == "numeric_dollar"
        # The multi-row statements built so far, by row count (batches repeat their sizes).
        self._multi_row: dict[int, str] = {}

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """The driver's parameters for one row (a value for each column of the table)."""
        values = {**row, **self._constants}
        for name, process in self._processors:
            values[name] = process(values[name])
        got = self._get(values)
        return got if len(self._names) > 1 else (got,)

    async def executemany(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await conn.exec_driver_sql(self.sql, [self.parameters(row) for row in rows])

    async def returning(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Run the statement for `rows` as multi-row INSERTs; the rows its RETURNING answers.

        A driver's executemany discards what RETURNING answers, so the VALUES group is
        repeated (its placeholders renumbered where they are numbered).
        """
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(rows), self._ROWS_PER_STATEMENT):
            part = rows[start : start + self._ROWS_PER_STATEMENT]
            params: list[Any] = []
            for row in part:
                params.extend(self.parameters(row))
            result = await conn.exec_driver_sql(self._multi_row_sql(len(part)), tuple(params))
            out.extend(tuple(r) for r in result)
        return out

    def _multi_row_sql(self, count: int) -> str:
        sql = self._multi_row.get(count)
        if sql is None:
            if len(self._multi_row) >= 16:
                self._multi_row.clear()
            sql = self._multi_row[count] = self._repeat_values(count)
        return sql

    def _repeat_values(self, count: int) -> str:
        head, _, rest = self.sql.partition(" VALUES (")
        group, _, tail = rest.partition(")")
        placeholders = len(_PLACEHOLDER.findall(group)) if self._positional_numbers else group.count("?")
        if self._constants or placeholders != len(self._names):
            raise RuntimeError(f"cannot repeat the VALUES of {self.sql!r}: they are not just its columns")
        if not self._positional_numbers:
            return f"{head} VALUES {', '.join([f'({group})'] * count)}{tail}"
        width = len(self._names)

        def numbered(i: int) -> str:
            return "(" + _PLACEHOLDER.sub(lambda m: f"${int(m[1]) + i * width}", group) + ")"

        return f"{head} VALUES {', '.join(numbered(i) for i in range(count))}{tail}"


def _sqlite_utc_text(value: datetime | None) -> str | None:
    """What UTCDateTime and SQLite's DATETIME make of `value` (text in UTC, microseconds
    always), in one step: theirs were a tenth of the projection's CPU time."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).isoformat(" ", "microseconds")[:-6]


def _same_text(process: Callable[[Any], Any]) -> bool:
    """Whether `_sqlite_utc_text` stores what SQLAlchemy's `process` stores (checked once, so
    a change of storage format shows as a slower projection, never as other text)."""
    samples = [
        datetime(2026, 11, 22, 3, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ]
    return all(process(t) == _sqlite_utc_text(t) for t in samples)


_PLACEHOLDER = re.compile(r"\$(\d+)")


_POSITION = select(projector_positions.c.stream_seq).where(
    projector_positions.c.consumer == bindparam("consumer")
)


async def _position(conn: AsyncConnection, consumer: str) -> int:
    seq = await conn.scalar(_POSITION, {"consumer": consumer})
    return int(seq or 0)


# The events with an `audit` row (see _audit_row).
_AUDITED = (AuditRecorded, JobCreated, JobUpdated, JobDeleted, JobPaused, JobResumed)


def _audit_row(event: AnyEvent) -> dict[str, Any] | None:
    """The `audit` row of a job event or an audit record; None for other events."""
    match event:
        case AuditRecorded():
            return {
                "id": event.event_id,
                "at": event.occurred_at,
                "actor": event.actor,
                "action": event.action,
                "job_id": event.job_id,
                "revision": event.revision,
                "detail": event.detail,
            }
        case JobCreated() | JobUpdated():
            detail: dict[str, Any] = {"name": event.spec.name}
        case JobDeleted() | JobPaused() | JobResumed():
            detail = {}
        case _:
            return None
    return {
        "id": event.event_id,
        "at": event.occurred_at,
        "actor": event.actor,
        "action": event.__struct_config__.tag,
        "job_id": event.job_id,
        "revision": event.revision,
        "detail": detail,
    }


def _created_row(event: JobCreated) -> dict[str, Any]:
    """The `jobs` row of a job.created: the job as created, at its revision."""
    return {
        "id": event.job_id,
        "name": event.spec.name,
        "spec": msgspec.to_builtins(event.spec),
        "revision": event.revision,
        "paused": event.paused,
        "deleted": False,
        "created_at": event.occurred_at,
        "updated_at": event.occurred_at,
    }


def _runner_merged(current: ColumnElement[Any]) -> ColumnElement[Any]:
    """The runner of a row that has `current`, after the names a row being written brings
    (bound per row, beside its columns; see precedence.merge_run): run.started names the
    runner, run.finished only fills a gap."""
    return func.coalesce(_STARTED_RUNNER, current, _FINISHED_RUNNER)


_STARTED_RUNNER = bindparam(precedence.STARTED_RUNNER, type_=runs.c.runner.type)
_FINISHED_RUNNER = bindparam(precedence.FINISHED_RUNNER, type_=runs.c.runner.type)
_RUNNER_NAMES = (precedence.STARTED_RUNNER, precedence.FINISHED_RUNNER)


def _progress(status: ColumnElement[Any], attempt: ColumnElement[Any]) -> ColumnElement[int]:
    """precedence.progress() as SQL, for the row's and the incoming status."""
    phase = case(
        *((status == name, literal(precedence.phase(name))) for name in _NAMED_PHASES),
        else_=literal(precedence.FINAL_PHASE),
    )
    return attempt * precedence.PHASES + phase


_NAMED_PHASES = (precedence.DISPATCHED, precedence.RUNNING, precedence.RETRYING)


def _run_rows(events: Iterable[AnyEvent]) -> dict[str, list[_Row]]:
    """The rows the run events of a batch write, per table, sorted by key."""
    out: dict[str, list[_Row]] = {runs.name: [], run_attempts.name: [], log_chunks.name: []}
    for event in events:
        match event:
            case RunDispatched() | RunStarted() | RunFinished():
                out[runs.name].append(_Row((event.run_id,), _runs_values(event)))
                if not isinstance(event, RunDispatched):
                    out[run_attempts.name].append(
                        _Row((event.run_id, event.attempt), _attempts_values(event))
                    )
            case LogChunk():
                out[log_chunks.name].append(_chunk_row(event, event))
        if isinstance(event, RunFinished):
            # A short attempt's whole output rides on its run.finished: the same rows as the
            # log.chunk events it replaces.
            out[log_chunks.name].extend(_chunk_row(event, part) for part in event.output)
    for rows in out.values():
        rows.sort(key=lambda row: row.key)
    out[runs.name] = _folded(out[runs.name], precedence.merge_run)
    out[run_attempts.name] = _folded(out[run_attempts.name], precedence.merge_attempt)
    return out


def _folded(
    rows: list[_Row], merge: Callable[[precedence.Row, precedence.Row], precedence.Row]
) -> list[_Row]:
    """`rows` (sorted by key, in event order within a key) with the rows of each key merged
    into one, as the upsert would merge them written one after the other."""
    out: list[_Row] = []
    for row in rows:
        if out and out[-1].key == row.key:
            out[-1] = _Row(row.key, merge(out[-1].values, row.values))
        else:
            out.append(row)
    return out


def _chunk_row(event: LogChunk | RunFinished, part: LogChunk | OutputPart) -> _Row:
    """The `log_chunks` row of one piece of an attempt's output."""
    values = {
        "run_id": event.run_id,
        "attempt": event.attempt,
        "seq": part.seq,
        "stream": part.stream,
        "data": part.data,
        "at": event.occurred_at,
    }
    return _Row((event.run_id, event.attempt, part.seq), values)


def _rounds(rows: list[_Row]) -> Iterable[list[dict[str, Any]]]:
    """`rows` (sorted by key) cut into executemany rounds with at most one row per key, since
    one statement may not upsert the same row twice. Most batches are a single round."""
    pending = rows
    while pending:
        this: list[dict[str, Any]] = []
        later: list[_Row] = []
        last: tuple[Any, ...] | None = None
        for row in pending:
            if row.key == last:
                later.append(row)
            else:
                this.append(row.values)
                last = row.key
        yield this
        pending = later


def _runs_values(event: RunDispatched | RunStarted | RunFinished) -> dict[str, Any]:
    """A full `runs` row for one event; NULL where the event has nothing to say."""
    values: dict[str, Any] = {
        "id": event.run_id,
        "job_id": event.job_id,
        "slot": event.slot,
        "attempt": event.attempt,
        # Placeholders for a row created before its run.dispatched is projected.
        "trigger": "schedule",
        "pool": "default",
        "dispatched_at": None,
        "lateness_ms": None,
        **precedence.ATTEMPT_COLUMNS,
        precedence.STARTED_RUNNER: None,
        precedence.FINISHED_RUNNER: None,
    }
    match event:
        case RunDispatched():
            values |= {
                "attempt": precedence.DISPATCH_ATTEMPT,
                "status": precedence.DISPATCHED,
                "pool": event.pool,
                "trigger": event.trigger,
                "dispatched_at": event.dispatched_at,
                "lateness_ms": event.lateness_ms,
            }
        case RunStarted():
            values |= {"status": precedence.RUNNING, "started_at": event.occurred_at, **_started_by(event)}
        case RunFinished():
            values |= {
                "status": precedence.finished_status(event.status, event.final),
                **_finished_by(event),
                "finished_at": event.occurred_at,
                "exit_code": event.exit_code,
                "duration_ms": event.duration_ms,
                "error": event.error or None,
                "cpu_ms": event.cpu_ms,
                "peak_rss_bytes": event.peak_rss_bytes,
                "output_bytes": event.output_bytes,
                "truncated": event.truncated,
            }
    return values


def _attempts_values(event: RunStarted | RunFinished) -> dict[str, Any]:
    values: dict[str, Any] = {
        "run_id": event.run_id,
        "attempt": event.attempt,
        "status": precedence.RUNNING,
        "runner": None,
        "started_at": None,
        "finished_at": None,
        "exit_code": None,
        "duration_ms": None,
        "error": None,
    }
    if isinstance(event, RunStarted):
        values |= {"started_at": event.occurred_at, **_started_by(event)}
    else:
        values |= {
            "status": event.status,
            **_finished_by(event),
            "finished_at": event.occurred_at,
            "exit_code": event.exit_code,
            "duration_ms": event.duration_ms,
            "error": event.error or None,
        }
    return values


def _started_by(event: RunStarted) -> dict[str, Any]:
    return {"runner": event.runner, precedence.STARTED_RUNNER: event.runner, precedence.FINISHED_RUNNER: None}


def _finished_by(event: RunFinished) -> dict[str, Any]:
    runner = event.runner or None
    return {"runner": runner, precedence.STARTED_RUNNER: None, precedence.FINISHED_RUNNER: runner}
