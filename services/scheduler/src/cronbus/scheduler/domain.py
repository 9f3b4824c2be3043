"""The scheduler's pure core: the job table, the heap of next fire times, catch-up decisions,
the watermark and the lease fence. No I/O and no clock reads: `now` is always passed in
(seconds since the epoch for wall time, monotonic seconds for the fence).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import sys
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any, TypeVar

import msgspec

from cronbus.shared.events import (
    CatchupPolicy,
    HttpExecutor,
    JobCreated,
    JobDeleted,
    JobEvents,
    JobPaused,
    JobResumed,
    JobSpec,
    JobUpdated,
    ShellExecutor,
    Trigger,
    scheduled_msg_id,
)
from cronbus.shared.schedule import Schedule, ScheduleError, jitter_for

log = logging.getLogger(__name__)

# Slots at most this late are ordinary dispatches (they cover a failover); older ones were missed
# and follow the job's catch-up policy.
DEFAULT_GRACE = 5.0
# A job with policy `all` never dispatches more than this many missed slots at once.
MAX_CATCHUP_SLOTS = 10_000
# A takeover reads DISPATCH from this long before the watermark (clock differences between
# replicas), and settles the resumes that happened since then.
HISTORY_MARGIN = 10.0

_T = TypeVar("_T")

_spec_encoder = msgspec.json.Encoder()
_spec_decoder = msgspec.json.Decoder(JobSpec)
# Specs are kept compressed against a dictionary of typical specs: a spec that differs from the
# defaults in name, schedule and command packs into ~50 bytes instead of ~400 (at 100k jobs,
# the difference between fitting the memory target or not). Never persisted: only this
# process reads what it packed.
_SPEC_DICTIONARY = b"".join(
    _spec_encoder.encode(JobSpec(name="", schedule="* * * * *", executor=executor))
    for executor in (HttpExecutor(url="https://"), ShellExecutor(command=""))
)
_MISSING = object()


def pack_spec(spec: JobSpec) -> bytes:
    # A 4 KiB window reaches the dictionary from a spec of up to 3 KiB (almost all of them)
    # and is quicker to set up than the default 32 KiB; `unpack_spec_json` reads either.
    packer = zlib.compressobj(1, zlib.DEFLATED, -12, 1, zdict=_SPEC_DICTIONARY)
    return packer.compress(_spec_encoder.encode(spec)) + packer.flush()


def unpack_spec_json(packed: bytes) -> bytes:
    """The spec's JSON as `pack_spec` received it."""
    unpacker = zlib.decompressobj(-15, zdict=_SPEC_DICTIONARY)
    return unpacker.decompress(packed) + unpacker.flush()


def unpack_spec(packed: bytes) -> JobSpec:
    return _spec_decoder.decode(unpack_spec_json(packed))


def to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def to_ms(instant: datetime) -> int:
    return round(instant.timestamp() * 1000)


def msg_id_of(job_id: str, slot_ms: int) -> str:
    """The dispatch message id of a slot kept in milliseconds, as the timetable keeps them:
    `events.scheduled_run`, where every run identity is made."""
    return scheduled_msg_id(job_id, slot_ms)


@dataclass(slots=True)
class Job:
    """One state of a job: its definition and whether it is paused, in effect from `since`.

    Every JOBS event that changes a job makes a new state and links the one it replaces as
    `earlier`. A slot belongs to the state in effect at its nominal time, so a takeover or a
    resume can settle slots that an older state owed. The spec is kept packed (see
    `pack_spec`): at 100k jobs a decoded JobSpec (several Structs and dicts each) costs ten
    times as much memory."""

    job_id: str
    revision: int
    packed_spec: bytes
    schedule: Schedule | None
    error: str
    pool: str
    jitter: float
    catchup: CatchupPolicy
    catchup_window: float
    start_at: datetime | None
    end_at: datetime | None
    # When the job was paused (None: it is not).
    paused_at: float | None = None
    # When this state took effect (the event's time): it decides the slots after it.
    since: float = 0.0
    # Slots at or before `cursor` are handled (dispatched, queued, skipped or before the job
    # existed).
    cursor: float = 0.0
    # Bumped on every change, so heap entries planned under an older state are ignored.
    generation: int = 0
    # The state before `since`, kept while slots it decided may still be owed (see `owed`).
    earlier: Job | None = None

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def spec(self) -> JobSpec:
        return unpack_spec(self.packed_spec)

    @property
    def spec_json(self) -> bytes:
        """The spec as JSON, ready to embed in an event without decoding it."""
        return unpack_spec_json(self.packed_spec)

    def in_bounds(self, slot: datetime) -> bool:
        if self.start_at is not None and slot < self.start_at:
            return False
        return self.end_at is None or slot <= self.end_at

    def history(self) -> list[Job]:
        """This state and the earlier ones still kept, oldest first."""
        states: list[Job] = []
        state: Job | None = self
        while state is not None:
            states.append(state)
            state = state.earlier
        states.reverse()
        return states

    def forget_before(self, horizon: float) -> None:
        """Drop the states that ended at or before `horizon` (no slot of theirs can be owed)."""
        state = self
        while state.earlier is not None:
            if state.since <= horizon:
                state.earlier = None
                return
            state = state.earlier


@dataclass(frozen=True, slots=True)
class Due:
    """One slot to dispatch now, with the job state that decided it (None: look the job up)."""

    job_id: str
    slot_ms: int
    fire_at: float
    trigger: Trigger = "schedule"
    job: Job | None = None

    @property
    def slot(self) -> datetime:
        return datetime.fromtimestamp(self.slot_ms / 1000, UTC)


def triage(
    slots: list[tuple[float, _T]], now: float, *, policy: CatchupPolicy, window: float, grace: float
) -> list[tuple[_T, Trigger]]:
    """Which of `slots` ((timestamp, payload) in slot order) to dispatch at `now`.

    The timestamp is when the slot was due: its fire time (slot + jitter) for ordinary slots.
    Slots due after `now` are not late at all and slots due within `grace` of `now` only a
    little (a failover, a slow loop): both are dispatched as scheduled, at their fire time.
    Older slots were missed: `skip` drops them, `all` dispatches every one inside `window`,
    `latest` dispatches the newest one inside `window` (one run stands for the missed period).
    """
    recent_from = now - grace
    oldest = now - window
    recent = [payload for t, payload in slots if t > recent_from]
    missed = [payload for t, payload in slots if oldest < t <= recent_from]
    out: list[tuple[_T, Trigger]] = []
    if policy == "all":
        out.extend((payload, "catchup") for payload in missed)
    elif policy == "latest" and missed:
        out.append((missed[-1], "catchup"))
    out.extend((payload, "schedule") for payload in recent)
    return out


def fire_time(job_id: str, slot: datetime, jitter: float) -> float:
    """When `slot` of `job_id` is due: the slot plus its jitter (the same on every leader)."""
    return (slot + jitter_for(job_id, slot, jitter)).timestamp()


def candidate_slots(
    schedule: Schedule,
    after: float,
    now: float,
    *,
    window: float,
    grace: float = DEFAULT_GRACE,
    jitter: float = 0.0,
    limit: int = MAX_CATCHUP_SLOTS,
    until: float | None = None,
) -> list[datetime]:
    """The slots in (after, until] (`until` defaults to `now`) whose fire time can still be
    inside `window` or `grace` of `now` (at most `limit`, the newest)."""
    end = now if until is None else min(until, now)
    lower = max(after, now - max(window, grace) - jitter)
    if lower >= end:
        return []
    slots: deque[datetime] = deque(maxlen=limit)
    slots.extend(schedule.slots_between(to_datetime(lower), to_datetime(end)))
    return list(slots)


def catchup_slots(
    schedule: Schedule,
    after: float,
    now: float,
    *,
    policy: CatchupPolicy,
    window: float,
    grace: float = DEFAULT_GRACE,
    limit: int = MAX_CATCHUP_SLOTS,
    until: float | None = None,
    job_id: str = "",
    jitter: float = 0.0,
) -> list[tuple[datetime, Trigger]]:
    """The slots in (after, until] (`until` defaults to `now`) to dispatch at `now`, with their
    trigger: see `triage`. Lateness counts from each slot's fire time (`job_id`'s `jitter`), so
    a slot whose fire time is still ahead is scheduled at it, however far back the slot is."""
    slots = candidate_slots(
        schedule, after, now, window=window, grace=grace, jitter=jitter, limit=limit, until=until
    )
    return triage(
        [(fire_time(job_id, s, jitter), s) for s in slots], now, policy=policy, window=window, grace=grace
    )


def watermark_of(processed_until: float, unfinished_slots_ms: list[int], max_jitter: float) -> float:
    """The newest W such that every slot at or before W is dispatched.

    The dispatcher has popped every heap entry whose fire time (slot + jitter) is at or before
    `processed_until`, so slots up to `processed_until - max_jitter` are popped; popped slots
    whose publish is not confirmed yet hold W just below them.
    """
    w = processed_until - max_jitter
    if unfinished_slots_ms:
        w = min(w, min(unfinished_slots_ms) / 1000 - 0.001)
    return w


@dataclass(slots=True)
class Fence:
    """Self-fencing arithmetic. The server expires the lease `ttl` after it stored the last
    renewal, which is after we sent it: counting from the send keeps us on the safe side, and
    `margin` covers publishes still on the wire and clock-rate differences."""

    ttl: float
    margin: float
    renewal_sent_at: float | None = None

    def renewed(self, sent_at: float) -> None:
        if self.renewal_sent_at is None or sent_at > self.renewal_sent_at:
            self.renewal_sent_at = sent_at

    def revoke(self) -> None:
        self.renewal_sent_at = None

    @property
    def deadline(self) -> float | None:
        """Monotonic time from which we must not publish (None: we hold nothing)."""
        if self.renewal_sent_at is None:
            return None
        return self.renewal_sent_at + self.ttl - self.margin

    def allows(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now < deadline


@dataclass(slots=True)
class Timetable:
    """Every job the scheduler knows and, while leading, the heap of each job's next slot.

    Schedules are interned by (expression, zone): 100k jobs on a handful of expressions share
    a handful of parsed schedules.
    """

    grace: float = DEFAULT_GRACE
    jobs: dict[str, Job] = field(default_factory=dict)
    leading: bool = False
    # (fire_at, slot_ms, job_id, generation): each job's planned next slot, one entry per job.
    _heap: list[tuple[float, int, str, int]] = field(default_factory=list)
    # Owed slots queued by a takeover or a change, each with the job state that decided it
    # (fire_at, slot_ms, job_id, sequence, trigger, state); popping them plans nothing after them.
    # Deleting a job removes its entries; other changes leave them (they were owed before).
    _catchup: list[tuple[float, int, str, int, Trigger, Job | None]] = field(default_factory=list)
    _queued: count[int] = field(default_factory=count)
    # Equal floats from different jobs (jitter, windows) share one object.
    _floats: dict[float, float] = field(default_factory=dict)
    # Bumped on every change to a job; summaries over all jobs are recomputed only then.
    _changes: int = 0
    _summary: tuple[int, float, dict[str, str]] = (-1, 0.0, {})
    _schedules: dict[tuple[str, str], Schedule | ScheduleError] = field(default_factory=dict)
    _grids: dict[tuple[str, str, int], Schedule] = field(default_factory=dict)
    # Jobs sharing a schedule ask for the same next slot after the same instant (all of them at
    # takeover, a burst of them each time they fire together): compute it once.
    _next_slots: dict[tuple[int, datetime], tuple[datetime, int, float] | None] = field(default_factory=dict)
    _catchups: dict[tuple[int, float, float, str, float, float, float], list[tuple[datetime, Trigger]]] = (
        field(default_factory=dict)
    )
    _candidates: dict[tuple[int, float, float, str, float, float, float], list[datetime]] = field(
        default_factory=dict
    )

    # --- evolving from JOBS ---------------------------------------------------------------------

    def schedule_for(
        self, expression: str, timezone: str, anchor: datetime | None = None
    ) -> Schedule | ScheduleError:
        key = (expression, timezone)
        found = self._schedules.get(key)
        if found is None:
            try:
                found = Schedule.parse(expression, timezone)
            except ScheduleError as exc:
                found = exc
            self._schedules[key] = found
        if anchor is None or isinstance(found, ScheduleError) or found.kind != "every":
            return found
        # Jobs whose anchors sit at the same phase of the same interval share one grid.
        grid = found.anchored(anchor)
        return self._grids.setdefault((expression, timezone, grid.phase_ms), grid)

    def _job_from(self, job_id: str, revision: int, spec: JobSpec) -> Job:
        schedule = self.schedule_for(spec.schedule, spec.timezone, spec.anchor)
        return Job(
            job_id=job_id,
            revision=revision,
            packed_spec=pack_spec(spec),
            schedule=schedule if isinstance(schedule, Schedule) else None,
            error=str(schedule) if isinstance(schedule, ScheduleError) else "",
            pool=sys.intern(spec.pool),
            jitter=self._floats.setdefault(spec.jitter, spec.jitter),
            catchup=sys.intern(spec.catchup.policy),  # type: ignore[arg-type]
            catchup_window=self._floats.setdefault(spec.catchup.window, spec.catchup.window),
            start_at=spec.start_at.astimezone(UTC) if spec.start_at else None,
            end_at=spec.end_at.astimezone(UTC) if spec.end_at else None,
        )

    def _since(self, occurred_at: datetime, now: float) -> float:
        """Where a change made at `occurred_at` starts counting, clamped against clock skew."""
        return min(now, max(occurred_at.timestamp(), now - self.grace))

    def apply(self, event: JobEvents, now: float) -> None:
        """Evolve the table by one JOBS event; while leading, plan the job and queue the slots
        the change leaves owed: those the old state decided that are not dispatched yet, and
        after a resume the missed slots of the pause its catch-up policy asks for."""
        current = self.jobs.get(event.job_id)
        if current is not None and event.revision <= current.revision:
            return
        self._changes += 1
        match event:
            case JobCreated(spec=spec, paused=paused):
                if current is not None:
                    self._forget_queued(event.job_id)
                job = self._job_from(event.job_id, event.revision, spec)
                job.since = event.occurred_at.timestamp()
                job.paused_at = job.since if paused else None
                job.cursor = self._since(event.occurred_at, now)
                if current is not None:
                    job.generation = current.generation + 1
                self.jobs[event.job_id] = job
                self._plan(job)
            case JobUpdated(spec=spec) if current is not None:
                job = self._job_from(event.job_id, event.revision, spec)
                job.paused_at = current.paused_at
                self._succeed(current, job, event.occurred_at, now)
            case JobPaused() if current is not None:
                paused_at = current.paused_at or event.occurred_at.timestamp()
                self._succeed(
                    current,
                    replace(current, revision=event.revision, paused_at=paused_at),
                    event.occurred_at,
                    now,
                )
            case JobResumed() if current is not None:
                self._succeed(
                    current, replace(current, revision=event.revision, paused_at=None), event.occurred_at, now
                )
            case JobDeleted() if current is not None:
                del self.jobs[event.job_id]
                self._forget_queued(event.job_id)
            case _:
                log.warning(
                    "%s for unknown job %s (revision %s): ignored",
                    type(event).__name__,
                    event.job_id,
                    event.revision,
                )

    def _succeed(self, current: Job, job: Job, occurred_at: datetime, now: float) -> None:
        """Replace `current` by its successor state `job`, which took effect at `occurred_at`.

        The slots `current` decided up to the change and nobody handled yet stay owed and are
        queued; the successor's own slots start after the change (and never before what was
        already handled)."""
        job.since = occurred_at.timestamp()
        job.earlier = current
        job.generation = current.generation + 1
        job.cursor = max(current.cursor, self._since(occurred_at, now))
        job.forget_before(now - max(job.catchup_window, self.grace) - HISTORY_MARGIN)
        self.jobs[job.job_id] = job
        if self.leading:
            self._queue(
                self.owed(
                    job,
                    after=current.cursor,
                    until=min(job.since, now),
                    now=now,
                    # Only a pause ending with this very change is new; earlier ones are settled.
                    settled_before=current.since,
                )
            )
        self._plan(job)

    # --- leading ------------------------------------------------------------------------------

    def _plan(self, job: Job) -> None:
        """Push the job's next slot after its cursor onto the heap (while leading)."""
        if not self.leading or job.paused or job.schedule is None:
            return
        try:
            after = to_datetime(job.cursor)
            if job.start_at is not None and job.start_at > after:
                after = job.start_at - timedelta(milliseconds=1)
            found = self._next_slot(job.schedule, after)
        except Exception as exc:  # a schedule that fails at run time must not stall the others
            log.exception("job %s: schedule %r failed", job.job_id, job.schedule.expression)
            job.error = f"schedule failed at run time: {exc}"
            self._changes += 1
            return
        if found is None or not job.in_bounds(found[0]):
            return
        slot, slot_ms, at = found
        # Without jitter the fire time is the slot's own instant (`fire_time` adds nothing).
        fire_at = at if job.jitter <= 0 else fire_time(job.job_id, slot, job.jitter)
        heapq.heappush(self._heap, (fire_at, slot_ms, job.job_id, job.generation))

    def _next_slot(self, schedule: Schedule, after: datetime) -> tuple[datetime, int, float] | None:
        """`schedule`'s next slot after `after`, with its milliseconds and its timestamp."""
        key = (id(schedule), after)
        found = self._next_slots.get(key, _MISSING)
        if found is _MISSING:
            if len(self._next_slots) >= 4096:
                self._next_slots.clear()
            slot = schedule.next_after(after)
            found = self._next_slots[key] = None if slot is None else (slot, to_ms(slot), slot.timestamp())
        return found  # type: ignore[return-value]

    def _queue(self, due: list[Due]) -> None:
        for d in due:
            heapq.heappush(
                self._catchup, (d.fire_at, d.slot_ms, d.job_id, next(self._queued), d.trigger, d.job)
            )

    def _forget_queued(self, job_id: str) -> None:
        if any(entry[2] == job_id for entry in self._catchup):
            self._catchup = [entry for entry in self._catchup if entry[2] != job_id]
            heapq.heapify(self._catchup)

    def _due(self, job: Job, slot: datetime, trigger: Trigger) -> Due:
        return Due(job.job_id, to_ms(slot), fire_time(job.job_id, slot, job.jitter), trigger, job)

    def _catch_up(self, job: Job, after: float, now: float, *, grace: float) -> list[Due]:
        """`catchup_slots` for a job with one active state in (after, now], cached: at takeover
        thousands of jobs share a schedule and ask the same question. Jittered jobs share the
        candidate slots; each job's fire times decide its own answer."""
        if job.schedule is None:
            return []
        key = (id(job.schedule), after, now, job.catchup, job.catchup_window, grace, job.jitter)
        try:
            if job.jitter <= 0:
                planned = self._catchups.get(key)
                if planned is None:
                    if len(self._catchups) >= 4096:
                        self._catchups.clear()
                    planned = self._catchups[key] = catchup_slots(
                        job.schedule,
                        after,
                        now,
                        policy=job.catchup,
                        window=job.catchup_window,
                        grace=grace,
                    )
                return [self._due(job, slot, trigger) for slot, trigger in planned if job.in_bounds(slot)]
            candidates = self._candidates.get(key)
            if candidates is None:
                if len(self._candidates) >= 4096:
                    self._candidates.clear()
                candidates = self._candidates[key] = candidate_slots(
                    job.schedule, after, now, window=job.catchup_window, grace=grace, jitter=job.jitter
                )
        except Exception as exc:
            log.exception("job %s: catch-up over schedule %r failed", job.job_id, job.schedule.expression)
            job.error = f"schedule failed at run time: {exc}"
            self._changes += 1
            return []
        if not candidates:
            return []
        timed = self._fire_times(job, candidates, now, grace=grace)
        return [
            Due(job.job_id, to_ms(slot), fire_at, trigger, job)
            for (fire_at, slot), trigger in triage(
                [(fire_at, (fire_at, slot)) for fire_at, slot in timed],
                now,
                policy=job.catchup,
                window=job.catchup_window,
                grace=grace,
            )
        ]

    def _fire_times(
        self, job: Job, candidates: list[datetime], now: float, *, grace: float
    ) -> list[tuple[float, datetime]]:
        """The candidates (in bounds) `triage` needs to see, with their fire times. Slots at or
        before `now - grace - jitter` were missed whatever their jitter: unless the policy is
        `all`, only the newest of them in the window can matter (for `latest`), so a long
        window does not cost a fire time per slot per job at takeover."""

        def timed(slots: list[datetime]) -> list[tuple[float, datetime]]:
            return [(fire_time(job.job_id, slot, job.jitter), slot) for slot in slots if job.in_bounds(slot)]

        if job.catchup == "all":
            return timed(candidates)
        split = bisect.bisect_right(candidates, to_datetime(now - grace - job.jitter))
        out = timed(candidates[split:])
        if job.catchup == "latest" and all(t > now - grace for t, _ in out):
            oldest = now - job.catchup_window
            for slot in reversed(candidates[:split]):
                if slot.timestamp() + job.jitter <= oldest:
                    break
                for t, found in timed([slot]):
                    if t > oldest:
                        return [(t, found), *out]
        return out

    def _slots_of(
        self, state: Job, after: float, until: float, *, by_fire_time: bool = False
    ) -> list[tuple[float, tuple[Job, datetime]]]:
        """The slots of one state in (after, until], at most MAX_CATCHUP_SLOTS (the newest), each
        with its nominal time or, `by_fire_time`, its fire time."""
        if state.schedule is None or after >= until:
            return []
        found: deque[tuple[float, tuple[Job, datetime]]] = deque(maxlen=MAX_CATCHUP_SLOTS)
        try:
            for slot in state.schedule.slots_between(to_datetime(after), to_datetime(until)):
                if state.in_bounds(slot):
                    when = fire_time(state.job_id, slot, state.jitter) if by_fire_time else slot.timestamp()
                    found.append((when, (state, slot)))
        except Exception as exc:
            log.exception("job %s: schedule %r failed", state.job_id, state.schedule.expression)
            state.error = f"schedule failed at run time: {exc}"
            self._changes += 1
        return list(found)

    def owed(
        self,
        job: Job,
        *,
        after: float,
        until: float,
        now: float,
        settled_before: float,
        grace: float | None = None,
    ) -> list[Due]:
        """The slots of `job`'s kept states in (after, until] that are still owed at `now`, each
        decided by the state in effect at its nominal time.

        * Slots of active states: those whose fire time is ahead or within the grace are
          ordinary (late) slots, older ones were missed (a leader was down) and are left to
          the newest state's catch-up policy.
        * Slots of a pause that ended with a resume at `r`: the resumed state's policy decides
          over them, with no grace and its window counted back from `r` — the same answer
          whether the leader that saw the resume or its successor computes it. Resumes at or
          before `settled_before` were settled by an earlier leader.
        * Slots of a pause still going on: none (the resume decides).

        `grace` (default: the table's) is how late a slot may be and still count as ordinary.
        """
        grace = self.grace if grace is None else grace
        states = job.history()
        lower = now - max(job.catchup_window, grace)
        late: list[tuple[float, tuple[Job, datetime]]] = []
        out: list[Due] = []
        i = 0
        while i < len(states):
            state = states[i]
            end = min(states[i + 1].since, until) if i + 1 < len(states) else until
            if not state.paused:
                late += self._slots_of(
                    state, max(after, min(state.since, now), lower - state.jitter), end, by_fire_time=True
                )
                i += 1
                continue
            j = i
            while j < len(states) and states[j].paused:
                j += 1
            if j == len(states):
                break
            resumed = states[j]
            resumed_at = resumed.since
            if resumed_at > settled_before:
                missed: list[tuple[float, tuple[Job, datetime]]] = []
                for k in range(i, j):
                    missed += self._slots_of(
                        states[k],
                        max(states[k].since, resumed_at - resumed.catchup_window),
                        min(states[k + 1].since, until, resumed_at),
                    )
                for (state_of, slot), trigger in triage(
                    missed, resumed_at, policy=resumed.catchup, window=resumed.catchup_window, grace=0.0
                ):
                    out.append(self._due(state_of, slot, trigger))
            i = j
        for (state_of, slot), trigger in triage(
            late, now, policy=job.catchup, window=job.catchup_window, grace=grace
        ):
            out.append(self._due(state_of, slot, trigger))
        return out

    def lead(
        self,
        watermark: float,
        now: float,
        dispatched: set[str],
        *,
        settled_before: float | None = None,
        grace: float | None = None,
    ) -> int:
        """Take over: queue every job's slots after `watermark` that are still owed (see `owed`),
        minus those already in DISPATCH (`dispatched` holds their `Nats-Msg-Id`s), and plan each
        job's next slot after `now`. Resumes at or before `settled_before` (default: the
        watermark less HISTORY_MARGIN) were settled by the previous leader. `grace` (default:
        the table's) is how late a slot may be and still be dispatched as scheduled: a takeover
        after a failover stretches it over the failover. Returns how many slots were queued."""
        grace = self.grace if grace is None else grace
        if settled_before is None:
            settled_before = watermark - HISTORY_MARGIN
        self.leading = True
        self._heap.clear()
        self._catchup.clear()
        due: list[Due] = []
        for job in self.jobs.values():
            job.generation += 1
            if job.earlier is not None:
                job.forget_before(now - max(job.catchup_window, grace) - HISTORY_MARGIN)
            if job.earlier is None and job.paused_at is None:
                owed = self._catch_up(job, max(watermark, min(job.since, now)), now, grace=grace)
            else:
                owed = self.owed(
                    job, after=watermark, until=now, now=now, settled_before=settled_before, grace=grace
                )
            # A plain loop: a generator per job, allocated between the heap entries that stay,
            # fragmented the allocator's pools by ~1.3 MiB of RSS per 100k jobs.
            for d in owed:
                if msg_id_of(job.job_id, d.slot_ms) not in dispatched:
                    due.append(d)
            job.cursor = now
            self._plan(job)
        self._queue(due)
        return len(due)

    def follow(self) -> None:
        """Stop leading: the heap is rebuilt from the watermark at the next takeover."""
        self.leading = False
        self._heap.clear()
        self._catchup.clear()

    def _live(self, job_id: str, generation: int) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.generation == generation else None

    def next_fire_at(self) -> float | None:
        while self._heap and self._live(self._heap[0][2], self._heap[0][3]) is None:
            heapq.heappop(self._heap)
        times = [q[0][0] for q in (self._heap, self._catchup) if q]
        return min(times) if times else None

    def pop_due(self, now: float, limit: int = 10_000) -> list[Due]:
        """Slots whose fire time is at or before `now` (at most `limit`), each job's next slot
        planned behind it."""
        out: list[Due] = []
        while self._catchup and self._catchup[0][0] <= now and len(out) < limit:
            fire_at, slot, job_id, _, trigger, state = heapq.heappop(self._catchup)
            out.append(Due(job_id, slot, fire_at, trigger, state))
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            fire_at, slot, job_id, generation = heapq.heappop(self._heap)
            job = self._live(job_id, generation)
            if job is None:
                continue
            out.append(Due(job_id, slot, fire_at, "schedule", job))
            job.cursor = slot / 1000
            self._plan(job)
        return out

    def peek_due(self, until: float, limit: int) -> list[Due]:
        """Slots on the timetable whose fire time is at or before `until` (at most `limit`), in
        no particular order, without taking them off: each job's next slot and the owed slots
        queued, which `pop_due(until)` would return (and the slots it would plan behind them,
        not). For preparing their dispatches ahead of time."""
        out: list[Due] = []
        for i in _heap_top(self._catchup, until):
            fire_at, slot_ms, job_id, _, trigger, state = self._catchup[i]
            out.append(Due(job_id, slot_ms, fire_at, trigger, state))
            if len(out) >= limit:
                return out
        for i in _heap_top(self._heap, until):
            fire_at, slot_ms, job_id, generation = self._heap[i]
            if (job := self._live(job_id, generation)) is not None:
                out.append(Due(job_id, slot_ms, fire_at, "schedule", job))
                if len(out) >= limit:
                    break
        return out

    def _summarise(self) -> tuple[int, float, dict[str, str]]:
        if self._summary[0] != self._changes:
            self._summary = (
                self._changes,
                max((j.jitter for j in self.jobs.values()), default=0.0),
                {j.job_id: j.error for j in self.jobs.values() if j.error},
            )
        return self._summary

    @property
    def oldest_queued_slot_ms(self) -> int | None:
        """The oldest slot still queued as owed. It can be older than the watermark arithmetic
        assumes (a slot of an earlier state whose jitter was larger than any current one)."""
        return min((entry[1] for entry in self._catchup), default=None)

    @property
    def max_jitter(self) -> float:
        return self._summarise()[1]

    @property
    def schedule_errors(self) -> dict[str, str]:
        return self._summarise()[2]


def _heap_top(heap: Sequence[tuple[float, *tuple[Any, ...]]], until: float) -> Iterator[int]:
    """The indices of `heap`'s entries whose first item is at or before `until`: a subtree at
    its top, walked without touching the rest."""
    stack = [0] if heap else []
    while stack:
        i = stack.pop()
        if heap[i][0] > until:
            continue
        yield i
        stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
