"""Jobs: what the job endpoints do, between HTTP (controllers) and storage (journal, history)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from cronbus.api import validation as limits
from cronbus.api.crontab import parse_crontab
from cronbus.api.domain import (
    Cursor,
    FieldError,
    InvalidInput,
    JobIsPaused,
    JobNotFound,
    JobState,
    Principal,
    ProjectionBehind,
    RevisionConflict,
    RunSummary,
    SlotFacts,
    anchored,
    check_id,
    check_spec,
    evolve,
    explain_slot,
    job_view,
    patched_spec,
    slots_in,
)
from cronbus.api.history import History, JobFilter
from cronbus.api.journal import JobHead, Journal
from cronbus.api.schemas import (
    BackfillIn,
    BackfillOut,
    CrontabImport,
    JobIn,
    JobOut,
    JobPage,
    JobPatch,
    RunAccepted,
    RunPage,
    SkippedLine,
    SlotList,
    SlotRun,
)
from cronbus.api.timeline import Timeline, pauses_and_deletion
from cronbus.shared.events import (
    JobCreated,
    JobDeleted,
    JobEvent,
    JobPaused,
    JobResumed,
    JobUpdated,
    RunDispatched,
    RunIds,
    encode,
    manual_run,
    scheduled_run,
    slot_ms,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# How often a read that names a revision looks again; the projector lands a write in ~50 ms.
_REVISION_POLL = 0.02
# Appends of one batch in flight at once: enough to hide the round trips, bounded so a batch
# cannot flood the connection.
_APPENDS_IN_FLIGHT = 256
# Room left in a NATS message for headers (trace context, expected sequence).
_HEADER_ROOM = 4096
# Job ids made from an Idempotency-Key.
_JOB_NAMESPACE = uuid.UUID("0b6f2d0e-8c9a-5b1e-a4c3-7e2f9d1c5a60")


# Seconds after a slot before its absence from the history is explained rather than pending.
_SETTLE = 60.0


def _in_bounds(state: JobState, slot: datetime) -> bool:
    spec = state.spec
    return (spec.start_at is None or slot >= spec.start_at) and (spec.end_at is None or slot <= spec.end_at)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Jobs:
    def __init__(
        self,
        journal: Journal,
        history: History,
        *,
        clock: Clock = _utcnow,
        revision_wait: float = 5.0,
    ) -> None:
        self.journal = journal
        self.history = history
        self.clock = clock
        self.revision_wait = revision_wait
        self.timeline = Timeline(journal.bus)

    # --- reads (the SQL projection) ------------------------------------------------------------

    async def get(self, job_id: str, *, revision: int | None = None) -> JobOut:
        """The job; with `revision`, wait (bounded) until the history has at least that one."""
        job_id = check_id("job", job_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.revision_wait
        while True:
            state = await self.history.job(job_id)
            if revision is None or (state is not None and state.revision >= revision):
                break
            if loop.time() >= deadline:
                if state is None and await self._absent_from_stream(job_id):
                    raise JobNotFound(job_id)
                raise ProjectionBehind(
                    job_id, revision, None if state is None else state.revision, self.revision_wait
                )
            await asyncio.sleep(_REVISION_POLL)
        if state is None:
            # Created a moment ago and not projected yet: JOBS is the source of truth.
            state = (await self.journal.head(job_id)).state
        if state is None or state.deleted:
            raise JobNotFound(job_id)
        return job_view(state, self.clock(), await self.history.run_summary(job_id))

    async def _absent_from_stream(self, job_id: str) -> bool:
        return (await self.journal.head(job_id)).state is None

    async def list(self, *, cursor: str | None, limit: int, where: JobFilter | None = None) -> JobPage:
        after = Cursor.decode(cursor) if cursor else None
        where = where or JobFilter()
        errors: list[FieldError] = []
        for label in where.labels:
            if not label.partition("=")[0]:
                errors.append(FieldError(field="label", reason=f"{label!r}: give 'key=value' or 'key'"))
        if errors:
            raise InvalidInput(errors)
        now = self.clock()
        found = await self.history.jobs(after=after, limit=limit + 1, now=now, where=where)
        page = found[:limit]
        next_cursor = (
            Cursor(at=page[-1][0].created_at, id=page[-1][0].id).encode() if len(found) > limit else None
        )
        return JobPage(items=[job_view(s, now, runs) for s, runs in page], next=next_cursor)

    async def runs(self, job_id: str, *, cursor: str | None, limit: int) -> RunPage:
        job_id = check_id("job", job_id)
        before = Cursor.decode(cursor) if cursor else None
        if (
            before is None
            and await self.history.job(job_id) is None
            and await self._absent_from_stream(job_id)
        ):
            raise JobNotFound(job_id)
        runs = await self.history.runs_of(job_id, before=before, limit=limit + 1)
        page = runs[:limit]
        next_cursor = Cursor(at=page[-1].slot, id=page[-1].id).encode() if len(runs) > limit else None
        return RunPage(items=page, next=next_cursor)

    # --- writes (events on JOBS) ---------------------------------------------------------------

    async def create(
        self, job: JobIn, by: Principal, *, request_key: str | None = None, dry_run: bool = False
    ) -> JobOut:
        return (await self._create([job], by, request_key=request_key, batch=False, dry_run=dry_run))[0]

    async def create_many(
        self, jobs: Sequence[JobIn], by: Principal, *, request_key: str | None = None, dry_run: bool = False
    ) -> Sequence[JobOut]:
        """Create every job or none: all are checked before the first is appended; the appends
        are pipelined. The answer is in input order. `dry_run` checks and answers, appends nothing."""
        return await self._create(jobs, by, request_key=request_key, batch=True, dry_run=dry_run)

    async def import_crontab(
        self, text: str, by: Principal, *, timezone: str, pool: str, prefix: str, dry_run: bool = False
    ) -> CrontabImport:
        """The crontab's entries as jobs, idempotent by content (see cronbus.api.crontab)."""
        errors: list[FieldError] = []
        limits.check_text(errors, "prefix", prefix, max_chars=limits.MAX_NAME // 2)
        if errors:
            raise InvalidInput(errors)
        entries, skipped = parse_crontab(text, timezone=timezone, pool=pool, prefix=prefix)
        lines = [SkippedLine(line=s.line, text=s.text, reason=s.reason) for s in skipped]
        valid = []
        for entry in entries:
            _, problems = check_spec(entry.job)
            if problems:
                reason = "; ".join(f"{p.field}: {p.reason}" for p in problems)
                lines.append(SkippedLine(line=entry.line, text=entry.text, reason=reason))
            else:
                valid.append(entry)
        if len(valid) > limits.MAX_BATCH:
            raise InvalidInput(
                [
                    FieldError(
                        field="body",
                        reason=f"{len(valid)} entries; import at most {limits.MAX_BATCH} at once",
                    )
                ]
            )
        lines.sort(key=lambda s: s.line)
        if not valid:
            return CrontabImport(items=[], skipped=lines)
        made = await self._create(
            [e.job for e in valid],
            by,
            request_key=None,
            batch=True,
            dry_run=dry_run,
            ids=[e.job_id for e in valid],
        )
        return CrontabImport(items=list(made), skipped=lines)

    async def _create(
        self,
        jobs: Sequence[JobIn],
        by: Principal,
        *,
        request_key: str | None,
        batch: bool,
        dry_run: bool = False,
        ids: Sequence[str] | None = None,
    ) -> Sequence[JobOut]:
        """`ids`, when given, name the jobs (one each): an existing job with such an id is the
        job asked for, as with a repeated Idempotency-Key."""
        errors = limits.check_idempotency_key(request_key) if request_key is not None else []
        checked = [check_spec(job, f"[{i}]." if batch else "") for i, job in enumerate(jobs)]
        specs = [spec for spec, found in checked if not found and spec is not None]
        errors += [error for _, found in checked for error in found]
        if errors:
            raise InvalidInput(errors)
        now = self.clock()
        job_ids = [
            ids[i] if ids is not None else self._new_job_id(by, request_key, i if batch else None)
            for i in range(len(specs))
        ]
        events = [
            JobCreated(
                job_id=job_id, revision=1, actor=by.name, spec=anchored(spec, now, job_id), occurred_at=now
            )
            for job_id, spec in zip(job_ids, specs, strict=True)
        ]
        limit = self._event_limit()
        for i, event in enumerate(events):
            limits.check_event_size(errors, f"[{i}]" if batch else "body", len(encode(event)), limit)
        if errors:
            raise InvalidInput(errors)
        if dry_run:
            return [job_view(state, now) for state in (evolve(None, e) for e in events) if state is not None]
        in_flight = asyncio.Semaphore(_APPENDS_IN_FLIGHT)

        async def append(event: JobCreated) -> JobState:
            async with in_flight:
                return await self._append_created(event, replayed=request_key is not None or ids is not None)

        # Every append finishes (or fails) before the answer: none is left running behind it.
        results = await asyncio.gather(*(append(e) for e in events), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        now = self.clock()
        return [job_view(state, now) for state in results if isinstance(state, JobState)]

    @staticmethod
    def _new_job_id(by: Principal, request_key: str | None, index: int | None) -> str:
        if request_key is None:
            return str(uuid.uuid4())
        # The same key (from the same caller) names the same jobs: a retried request finds them.
        suffix = "" if index is None else f":{index}"
        return str(uuid.uuid5(_JOB_NAMESPACE, f"{by.name}:{request_key}{suffix}"))

    async def _append_created(self, event: JobCreated, *, replayed: bool) -> JobState:
        try:
            await self.journal.append(event, expected_last_seq=0, current=None)
        except RevisionConflict:
            if not replayed:
                raise
            return await self._created_before(event)
        state = evolve(None, event)
        assert state is not None
        return state

    async def _created_before(self, event: JobCreated) -> JobState:
        """The job an earlier request with the same Idempotency-Key created as `event` would."""
        state = (await self.journal.head(event.job_id)).state
        if state is None:
            raise RevisionConflict(event.job_id, None, None)
        # The anchor follows the creation time: a retry made later differs there and nowhere else.
        same = msgspec.structs.replace(event.spec, anchor=state.spec.anchor)
        if state.revision == 1 and state.spec != same:
            raise InvalidInput(
                [
                    FieldError(
                        field="Idempotency-Key",
                        reason="already used for a different job; send a new key for a new job",
                    )
                ]
            )
        return state

    def _event_limit(self) -> int:
        """The most an event may take: it, and each dispatch carrying its spec, must fit in one
        NATS message."""
        server = self.journal.bus.nc.max_payload or limits.MAX_EVENT_BYTES
        return min(limits.MAX_EVENT_BYTES, server - _HEADER_ROOM)

    async def update(self, job_id: str, patch: JobPatch, by: Principal, *, if_match: int | None) -> JobOut:
        head = await self._live_head(job_id)
        assert head.state is not None
        expected = patch.revision if isinstance(patch.revision, int) else if_match
        if expected is not None and expected != head.state.revision:
            raise RevisionConflict(head.state.id, expected, head.state.revision)
        now = self.clock()
        spec = anchored(patched_spec(head.state.spec, patch), now, head.state.id, previous=head.state.spec)
        event = JobUpdated(
            job_id=head.state.id,
            revision=head.state.revision + 1,
            actor=by.name,
            spec=spec,
            occurred_at=now,
        )
        errors: list[FieldError] = []
        limits.check_event_size(errors, "body", len(encode(event)), self._event_limit())
        if errors:
            raise InvalidInput(errors)
        return await self._append(head, event)

    async def delete(self, job_id: str, by: Principal, *, if_match: int | None) -> None:
        head = await self._live_head(job_id)
        assert head.state is not None
        if if_match is not None and if_match != head.state.revision:
            raise RevisionConflict(head.state.id, if_match, head.state.revision)
        await self._append(
            head,
            JobDeleted(
                job_id=head.state.id,
                revision=head.state.revision + 1,
                actor=by.name,
                occurred_at=self.clock(),
            ),
        )

    async def pause(self, job_id: str, by: Principal) -> JobOut:
        head = await self._live_head(job_id)
        assert head.state is not None
        if head.state.paused:
            return job_view(head.state, self.clock())
        event = JobPaused(
            job_id=head.state.id, revision=head.state.revision + 1, actor=by.name, occurred_at=self.clock()
        )
        return await self._append(head, event)

    async def resume(self, job_id: str, by: Principal) -> JobOut:
        head = await self._live_head(job_id)
        assert head.state is not None
        if not head.state.paused:
            return job_view(head.state, self.clock(), await self._runs_of(head.state.id))
        event = JobResumed(
            job_id=head.state.id, revision=head.state.revision + 1, actor=by.name, occurred_at=self.clock()
        )
        return await self._append(head, event)

    async def run_now(self, job_id: str, by: Principal, *, request_id: str | None) -> RunAccepted:
        """Dispatch one manual run now. The same `request_id` twice dispatches once."""
        if request_id is not None and (errors := limits.check_idempotency_key(request_id)):
            raise InvalidInput(errors)
        head = await self._live_head(job_id)
        state = head.state
        assert state is not None
        now = self.clock()
        # Slots are whole milliseconds everywhere.
        slot = now.replace(microsecond=now.microsecond // 1000 * 1000)
        # Never a scheduled slot's ids, even in the same millisecond (events.manual_run).
        run_id, msg_id = manual_run(state.id, request_id)
        run = RunDispatched(
            run_id=run_id,
            job_id=state.id,
            slot=slot,
            pool=state.spec.pool,
            spec=state.spec,
            job_revision=state.revision,
            trigger="manual",
            dispatched_at=now,
            scheduler=f"api:{by.name}",
        )
        await self.journal.dispatch(run, msg_id)
        return RunAccepted(id=run_id, job_id=state.id, slot=slot, attempt=1)

    async def backfill(self, job_id: str, body: BackfillIn, by: Principal) -> BackfillOut:
        """Dispatch every slot of the job's schedule in [from, to) that was not dispatched yet,
        with the ids the scheduler gives it (events.scheduled_run): JetStream's dedupe window
        drops a race with the scheduler, and DISPATCH and the history are read first for what
        is older than that window. The runner applies the job's overlap policy to these runs
        like to any other."""
        head = await self._live_head(job_id)
        state = head.state
        assert state is not None
        if state.paused:
            raise JobIsPaused(state.id)
        now = self.clock()
        if body.to.tzinfo is not None and body.to > now:
            raise InvalidInput(
                [
                    FieldError(
                        field="to", reason=f"is in the future (now is {now.isoformat()}); backfill past slots"
                    )
                ]
            )
        slots = [s for s in slots_in(state.spec, body.from_, body.to) if _in_bounds(state, s)]
        ids = [scheduled_run(state.id, slot_ms(s)) for s in slots]
        there = await self._already_dispatched(state.id, body.from_, [i.run_id for i in ids])
        todo = [(s, run) for s, run in zip(slots, ids, strict=True) if not {run.msg_id, run.run_id} & there]
        in_flight = asyncio.Semaphore(_APPENDS_IN_FLIGHT)
        dispatched_at = self.clock()

        async def dispatch(slot: datetime, run: RunIds) -> bool:
            event = RunDispatched(
                run_id=run.run_id,
                job_id=state.id,
                slot=slot,
                pool=state.spec.pool,
                spec=state.spec,
                job_revision=state.revision,
                trigger="catchup",
                dispatched_at=dispatched_at,
                scheduler=f"api:{by.name}",
            )
            async with in_flight:
                return await self.journal.dispatch(event, run.msg_id)

        # Pipelined like a batch create; every publish ends (or fails) before the answer. A
        # backfill cut short by an error is safe to repeat: it dispatches only what is missing.
        results = await asyncio.gather(*(dispatch(s, run) for s, run in todo), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        new = {run.run_id for (_, run), fresh in zip(todo, results, strict=True) if fresh is True}
        dispatched = [
            SlotRun(slot=s, run_id=run.run_id) for s, run in zip(slots, ids, strict=True) if run.run_id in new
        ]
        already = [
            SlotRun(slot=s, run_id=run.run_id)
            for s, run in zip(slots, ids, strict=True)
            if run.run_id not in new
        ]
        # Audit: the backfill (job, range, slots dispatched) is recorded here.
        return BackfillOut(slots=len(slots), dispatched=dispatched, already=already)

    async def _already_dispatched(self, job_id: str, since: datetime, run_ids: Sequence[str]) -> set[str]:
        """Message ids on DISPATCH and run ids in the history among the job's runs since `since`."""
        if not run_ids:
            return set()
        on_stream = await self.timeline.dispatched(job_id, since)
        in_history = await self.history.runs_by_id(job_id, run_ids)
        return on_stream | set(in_history)

    async def slots(self, job_id: str, start: datetime | None, end: datetime | None) -> SlotList:
        """Every slot of the job's schedule in [start, end) (default: the day before now) and what
        became of it, from what was recorded: its runs (history and DISPATCH), its events, the
        schedulers' terms."""
        job_id = check_id("job", job_id)
        end = end or self.clock()
        start = start or end - timedelta(days=1)
        events = await self.timeline.job_events(job_id)
        state: JobState | None = None
        for event in events:
            state = evolve(state, event)
        if state is None:
            raise JobNotFound(job_id)
        created, paused, deleted = pauses_and_deletion(events)
        assert created is not None
        slots = slots_in(state.spec, start, end)
        now = self.clock()
        ids = {s: scheduled_run(state.id, slot_ms(s)) for s in slots}
        past = [s for s in slots if s <= now]
        history = await self.history.runs_by_id(state.id, [ids[s].run_id for s in past])
        on_stream = await self.timeline.dispatched(state.id, start) if past else set()
        runs: dict[datetime, tuple[str, str, str | None]] = {}
        for s in past:
            run = ids[s]
            if run.run_id in history:
                status, error = history[run.run_id]
                runs[s] = (run.run_id, status, error)
            elif run.msg_id in on_stream:
                runs[s] = (run.run_id, "dispatched", None)
        facts = SlotFacts(
            runs=runs,
            created_at=created,
            paused=paused,
            deleted_at=deleted,
            gaps=await self.timeline.leader_gaps(now) if past else [],
        )
        return SlotList(items=[explain_slot(s, state.spec, facts, now, settle=_SETTLE) for s in slots])

    async def _live_head(self, job_id: str) -> JobHead:
        job_id = check_id("job", job_id)
        head = await self.journal.head(job_id)
        if head.state is None or head.state.deleted:
            raise JobNotFound(job_id)
        return head

    async def _append(self, head: JobHead, event: JobEvent) -> JobOut:
        assert head.state is not None
        await self.journal.append(event, expected_last_seq=head.last_seq, current=head.state.revision)
        state: JobState | None = evolve(head.state, event)  # type: ignore[arg-type]
        assert state is not None
        return job_view(state, self.clock(), await self._runs_of(state.id))

    async def _runs_of(self, job_id: str) -> RunSummary:
        """The job's runs for its state in a write's answer; without them (the history is
        unreachable) the write still answers: it is done."""
        try:
            return await self.history.run_summary(job_id)
        except Exception as exc:
            log.warning("job %s: answering without its runs (history: %r)", job_id, exc)
            return RunSummary()
