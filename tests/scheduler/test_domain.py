"""The scheduler's pure core: heap, catch-up decisions, watermark and fencing arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cronbus.scheduler.domain import Due, Fence, Timetable, catchup_slots, fire_time, to_ms, watermark_of
from cronbus.shared.events import (
    Catchup,
    JobCreated,
    JobDeleted,
    JobPaused,
    JobResumed,
    JobUpdated,
    dispatch_msg_id,
)
from cronbus.shared.schedule import Schedule, jitter_for
from tests.scheduler.support import spec

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def slots_of(due: list[Due]) -> list[float]:
    return [d.slot_ms / 1000 - T0 for d in due]


def triggered(due: list[Due]) -> list[tuple[float, str]]:
    return [(d.slot_ms / 1000 - T0, d.trigger) for d in due]


EVERY_SECOND = Schedule.parse("* * * * * *")


# --- catch-up ----------------------------------------------------------------------------------


def plan(
    policy: str, after: float, now: float, window: float = 3600, grace: float = 5
) -> list[tuple[float, str]]:
    return [
        (s.timestamp() - T0, trigger)
        for s, trigger in catchup_slots(
            EVERY_SECOND,
            T0 + after,
            T0 + now,
            policy=policy,
            window=window,
            grace=grace,  # type: ignore[arg-type]
        )
    ]


def test_slots_within_grace_are_dispatched_whatever_the_policy() -> None:
    for policy in ("skip", "latest", "all"):
        assert plan(policy, after=100, now=103) == [(101, "schedule"), (102, "schedule"), (103, "schedule")]


def test_missed_slots_follow_the_policy() -> None:
    recent = [
        (96.0, "schedule"),
        (97.0, "schedule"),
        (98.0, "schedule"),
        (99.0, "schedule"),
        (100.0, "schedule"),
    ]
    assert plan("skip", after=80, now=100) == recent
    assert plan("latest", after=80, now=100) == [(95.0, "catchup"), *recent]
    assert plan("all", after=80, now=100) == [(float(s), "catchup") for s in range(81, 96)] + recent


def test_the_window_bounds_catch_up() -> None:
    assert plan("all", after=0, now=100, window=10) == [(float(s), "catchup") for s in range(91, 96)] + [
        (float(s), "schedule") for s in range(96, 101)
    ]
    assert plan("latest", after=0, now=100, window=3)[0] == (96.0, "schedule")


def test_nothing_after_now() -> None:
    assert plan("all", after=100, now=100) == []
    assert plan("all", after=200, now=100) == []


# --- fence and watermark ------------------------------------------------------------------------


def test_fence_closes_ttl_minus_margin_after_the_renewal_was_sent() -> None:
    fence = Fence(ttl=2.0, margin=0.5)
    assert not fence.allows(0.0)
    fence.renewed(10.0)
    assert fence.deadline == 11.5
    assert fence.allows(11.49)
    assert not fence.allows(11.5)
    # A late answer to an older request never moves the fence back.
    fence.renewed(9.0)
    assert fence.deadline == 11.5
    fence.renewed(11.0)
    assert fence.allows(12.0)
    fence.revoke()
    assert not fence.allows(11.1)


def test_watermark_stays_below_unconfirmed_slots_and_jitter() -> None:
    assert watermark_of(100.0, [], 0.0) == 100.0
    assert watermark_of(100.0, [], 3.0) == 97.0
    assert watermark_of(100.0, [98_000, 99_000], 0.0) == pytest.approx(97.999)


# --- timetable -------------------------------------------------------------------------------


def created(
    job_id: str, schedule: str = "* * * * * *", revision: int = 1, when: float = 0.0, **fields: object
) -> JobCreated:
    return JobCreated(job_id=job_id, revision=revision, spec=spec(schedule, **fields), occurred_at=at(when))


def test_leader_pops_each_slot_once_in_order() -> None:
    table = Timetable()
    table.apply(created("a", when=0.2), T0 + 0.2)
    table.apply(created("b", "*/2 * * * * *", when=0.2), T0 + 0.2)
    assert table.lead(T0 + 0.2, T0 + 0.2, set()) == 0
    assert table.next_fire_at() == T0 + 1
    assert table.pop_due(T0 + 0.9) == []
    popped = []
    for second in range(1, 7):
        popped += [(d.job_id, d.slot_ms / 1000 - T0) for d in table.pop_due(T0 + second)]
    assert popped == [
        ("a", 1),
        ("a", 2),
        ("b", 2),
        ("a", 3),
        ("a", 4),
        ("b", 4),
        ("a", 5),
        ("a", 6),
        ("b", 6),
    ]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.sampled_from(["* * * * * *", "*/2 * * * * *", "*/3 * * * * *", "@at 2026-01-01T00:00:04Z"]),
        max_size=30,
    ),
    st.integers(0, 6),
)
def test_peeking_shows_what_popping_would_take_first(schedules: list[str], seconds: int) -> None:
    table = Timetable()
    for i, schedule in enumerate(schedules):
        table.apply(created(f"j{i}", schedule, when=-3.5), T0)
    # Some slots owed from before the takeover (queued as catch-up), the rest planned ahead.
    table.lead(T0 - 3, T0, set())
    until = T0 + seconds
    peeked = table.peek_due(until, limit=10_000)
    limited = table.peek_due(until, limit=3)
    popped = table.pop_due(until)
    key = lambda d: (d.job_id, d.slot_ms, d.fire_at, d.trigger)  # noqa: E731
    assert len(set(map(key, peeked))) == len(peeked)
    assert set(map(key, peeked)) <= set(map(key, popped))
    # What popping took beyond them it planned while popping: a later slot of the same job.
    for d in popped:
        if key(d) not in set(map(key, peeked)):
            assert any(p.job_id == d.job_id and p.slot_ms < d.slot_ms for p in peeked)
    assert len(limited) == min(3, len(peeked)) and set(map(key, limited)) <= set(map(key, peeked))
    # Each slot with the job state that decided it.
    decided = {key(d): d.job for d in popped}
    assert all(d.job is decided[key(d)] for d in peeked)


def test_standby_keeps_no_heap_but_knows_every_job() -> None:
    table = Timetable()
    table.apply(created("a"), T0)
    assert table.next_fire_at() is None
    assert table.pop_due(T0 + 100) == []
    assert set(table.jobs) == {"a"}


def test_takeover_skips_what_is_already_in_dispatch() -> None:
    table = Timetable()
    table.apply(created("a", when=-100), T0)
    table.lead(T0 - 3.5, T0, {dispatch_msg_id("a", at(-3)), dispatch_msg_id("a", at(-1))})
    assert slots_of(table.pop_due(T0)) == [-2, 0]
    assert slots_of(table.pop_due(T0 + 1)) == [1]


def test_takeover_applies_catch_up_policy_from_the_watermark() -> None:
    table = Timetable()
    table.apply(created("all", when=-1000), T0)
    table.apply(created("latest", when=-1000, catchup=Catchup(policy="latest")), T0)
    table.apply(created("skip", when=-1000, catchup=Catchup(policy="skip")), T0)
    table.apply(created("young", when=-7, catchup=Catchup(policy="all")), T0)
    table.lead(T0 - 20, T0, set())
    due = table.pop_due(T0)
    by_job = {
        j: sorted(d.slot_ms / 1000 - T0 for d in due if d.job_id == j)
        for j in ("all", "latest", "skip", "young")
    }
    assert by_job["all"] == [float(s) for s in range(-19, 1)]
    assert by_job["latest"] == [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0]
    assert by_job["skip"] == [-4.0, -3.0, -2.0, -1.0, 0.0]
    # No slot from before the job existed.
    assert by_job["young"] == [float(s) for s in range(-6, 1)]
    assert {d.trigger for d in due if d.job_id == "latest" and d.slot_ms / 1000 - T0 == -5} == {"catchup"}


def test_update_pause_resume_delete() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("a", catchup=Catchup(policy="all")), T0)
    assert slots_of(table.pop_due(T0 + 1)) == [1]

    table.apply(JobUpdated(job_id="a", revision=2, spec=spec("*/5 * * * * *"), occurred_at=at(1.5)), T0 + 1.5)
    assert slots_of(table.pop_due(T0 + 5)) == [5]
    # An older revision (a replay) changes nothing.
    table.apply(JobUpdated(job_id="a", revision=2, spec=spec("* * * * * *"), occurred_at=at(5.5)), T0 + 5.5)
    assert table.jobs["a"].schedule == Schedule.parse("*/5 * * * * *")

    table.apply(JobPaused(job_id="a", revision=3, occurred_at=at(6)), T0 + 6)
    assert table.pop_due(T0 + 30) == []
    table.apply(JobResumed(job_id="a", revision=4, occurred_at=at(31)), T0 + 31)
    # Policy `all`: every slot of the pause, then the schedule goes on.
    assert slots_of(table.pop_due(T0 + 31)) == [10, 15, 20, 25, 30]
    assert slots_of(table.pop_due(T0 + 35)) == [35]

    table.apply(JobDeleted(job_id="a", revision=5, occurred_at=at(36)), T0 + 36)
    assert table.pop_due(T0 + 100) == []
    assert table.jobs == {}


def test_bounds_one_off_jitter_and_errors() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("bounded", start_at=at(3), end_at=at(5)), T0)
    table.apply(created("once", "@at 2026-01-01T00:00:02Z"), T0)
    table.apply(created("jittered", "*/10 * * * * *", jitter=5.0), T0)
    table.apply(created("never", "0 0 30 2 *"), T0)
    due = table.pop_due(T0 + 20)
    assert sorted(slots_of([d for d in due if d.job_id == "bounded"])) == [3, 4, 5]
    assert slots_of([d for d in due if d.job_id == "once"]) == [2]
    jittered = [d for d in due if d.job_id == "jittered"]
    for d in jittered:
        assert d.fire_at == (d.slot + jitter_for("jittered", d.slot, 5.0)).timestamp()
    assert "never fire" in table.schedule_errors["never"]
    assert table.pop_due(T0 + 1000) != [] and all(d.job_id == "jittered" for d in table.pop_due(T0 + 2000))


def test_schedules_are_shared_between_jobs() -> None:
    table = Timetable()
    for i in range(100):
        table.apply(created(f"j{i}", "0 3 * * *"), T0)
    assert len({id(job.schedule) for job in table.jobs.values()}) == 1


def test_a_follower_drops_its_heap() -> None:
    table = Timetable()
    table.apply(created("a"), T0)
    table.lead(T0, T0, set())
    assert table.next_fire_at() is not None
    table.follow()
    assert table.next_fire_at() is None
    assert table.pop_due(T0 + 10) == []


def test_job_to_spec_round_trip() -> None:
    table = Timetable()
    table.apply(created("a", pool="gpu", timeout=30.0), T0)
    assert table.jobs["a"].spec == spec("* * * * * *", pool="gpu", timeout=30.0)
    assert table.jobs["a"].pool == "gpu"


def test_created_in_the_past_does_not_replay_old_slots_live() -> None:
    """A creation event read late (clock skew, a slow feed) counts from at most `grace` ago."""
    table = Timetable(grace=5.0)
    table.lead(T0, T0, set())
    table.apply(created("a", when=-3600), T0)
    assert slots_of(table.pop_due(T0)) == [-4, -3, -2, -1, 0]


# --- changes never lose an owed slot ------------------------------------------------------------


def updated(job_id: str, revision: int, when: float, schedule: str = "*/5 * * * * *") -> JobUpdated:
    return JobUpdated(job_id=job_id, revision=revision, spec=spec(schedule), occurred_at=at(when))


def test_a_slot_due_before_an_update_is_dispatched_as_the_old_definition_said() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("a"), T0)
    assert slots_of(table.pop_due(T0 + 1)) == [1]
    # Slot 2 is due, but the loop has not popped it yet when the update arrives.
    table.apply(updated("a", 2, when=2.0003), T0 + 2.0005)
    due = table.pop_due(T0 + 2.001)
    assert slots_of(due) == [2]
    assert due[0].job is not None and due[0].job.revision == 1
    assert due[0].job.schedule == EVERY_SECOND
    # From then on the new definition decides.
    assert table.pop_due(T0 + 4.9) == []
    due = table.pop_due(T0 + 5)
    assert slots_of(due) == [5] and due[0].job is not None and due[0].job.revision == 2


def test_a_jittered_slot_whose_fire_time_is_after_the_update_is_kept() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("a", "*/10 * * * * *", jitter=5.0), T0)
    fire_at = (at(10) + jitter_for("a", at(10), 5.0)).timestamp()
    assert fire_at > T0 + 10.001
    table.apply(updated("a", 2, when=10.001, schedule="0 0 * * *"), T0 + 10.001)
    assert table.pop_due(fire_at - 0.0001) == []
    assert slots_of(table.pop_due(fire_at)) == [10]
    assert table.pop_due(T0 + 100) == []


def test_a_slot_due_before_a_pause_is_dispatched_and_none_after() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("a", catchup=Catchup(policy="skip")), T0)
    assert slots_of(table.pop_due(T0 + 1)) == [1]
    table.apply(JobPaused(job_id="a", revision=2, occurred_at=at(2.0003)), T0 + 2.0005)
    assert slots_of(table.pop_due(T0 + 2.001)) == [2]
    assert table.pop_due(T0 + 30) == []


def test_queued_catch_up_survives_an_update_but_not_a_delete() -> None:
    table = Timetable()
    table.apply(created("a", when=-1000), T0)
    table.apply(created("b", when=-1000), T0)
    assert table.lead(T0 - 20, T0, set()) == 40
    table.apply(updated("a", 2, when=0.0001), T0 + 0.0002)
    table.apply(JobDeleted(job_id="b", revision=2, occurred_at=at(0.0001)), T0 + 0.0002)
    due = table.pop_due(T0 + 0.001)
    assert slots_of(due) == [float(s) for s in range(-19, 1)]
    assert {d.job_id for d in due} == {"a"}


def test_takeover_dispatches_what_the_old_definition_still_owed() -> None:
    table = Timetable()
    table.apply(created("a", when=-100), T0 - 100)
    table.apply(updated("a", 2, when=-2.5, schedule="*/10 * * * * *"), T0 - 2.5)
    # The old leader's watermark is -5: slots -4 and -3 (every second) were never dispatched.
    table.lead(T0 - 5, T0, set())
    due = table.pop_due(T0)
    assert [(s, d.job.revision if d.job else None) for s, d in zip(slots_of(due), due, strict=True)] == [
        (-4, 1),
        (-3, 1),
        (0, 2),
    ]


def test_takeover_dispatches_what_was_owed_before_a_pause() -> None:
    table = Timetable()
    table.apply(created("a", when=-100), T0 - 100)
    table.apply(JobPaused(job_id="a", revision=2, occurred_at=at(-2.5)), T0 - 2.5)
    table.lead(T0 - 5, T0, set())
    assert slots_of(table.pop_due(T0 + 10)) == [-4, -3]


# --- pause and resume: the same answer live and at takeover ----------------------------------


def paused_and_resumed(
    policy: str, paused: float, resumed: float, window: float = 3600
) -> list[JobCreated | JobPaused | JobResumed]:
    return [
        created("a", when=-1000, catchup=Catchup(policy=policy, window=window)),  # type: ignore[arg-type]
        JobPaused(job_id="a", revision=2, occurred_at=at(paused)),
        JobResumed(job_id="a", revision=3, occurred_at=at(resumed)),
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", []),
        ("latest", [(-2.0, "catchup")]),
        ("all", [(float(s), "catchup") for s in range(-19, -1)]),
    ],
)
def test_a_takeover_after_a_resume_settles_the_pause_as_the_resuming_leader_did(
    policy: str, expected: list[tuple[float, str]]
) -> None:
    """Pause at -20, resume at -1.5, leader gone with watermark -4: the new leader must not take
    the paused slots -3 and -2 for ordinary late slots (they are inside its grace)."""
    events = paused_and_resumed(policy, paused=-20, resumed=-1.5)
    live = Timetable()
    live.lead(T0 - 1000, T0 - 1000, set())
    live.apply(events[0], T0 - 1000)
    assert len(live.pop_due(T0 - 20)) == 980
    for event in events[1:]:
        live.apply(event, event.occurred_at.timestamp())
    assert triggered(live.pop_due(T0 - 1.5)) == expected

    standby = Timetable()
    for event in events:
        standby.apply(event, event.occurred_at.timestamp())
    standby.lead(T0 - 4, T0, set())
    assert triggered(standby.pop_due(T0)) == [
        *expected,
        (-1.0, "schedule"),
        (0.0, "schedule"),
    ]
    # What the resuming leader already dispatched is skipped, so nothing goes out twice.
    again = Timetable()
    for event in events:
        again.apply(event, event.occurred_at.timestamp())
    again.lead(T0 - 4, T0, {f"a:{to_ms(at(s))}" for s, _ in expected})
    assert slots_of(again.pop_due(T0)) == [-1.0, 0.0]


def test_a_resume_the_old_leader_settled_long_before_is_not_revisited() -> None:
    table = Timetable()
    for event in paused_and_resumed("all", paused=-60, resumed=-30):
        table.apply(event, event.occurred_at.timestamp())
    table.lead(T0 - 4, T0, set())
    assert slots_of(table.pop_due(T0)) == [-3, -2, -1, 0]


def test_a_job_still_paused_at_takeover_owes_nothing_from_the_pause() -> None:
    table = Timetable()
    events = paused_and_resumed("all", paused=-20, resumed=0)[:2]
    for event in events:
        table.apply(event, event.occurred_at.timestamp())
    table.lead(T0 - 30, T0, set())
    # Slots up to the pause were owed (the leader was down from -30); none of the pause.
    assert slots_of(table.pop_due(T0 + 100)) == [float(s) for s in range(-29, -19)]


def test_a_schedule_that_fails_at_run_time_is_reported_and_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    real_next_after = Schedule.next_after

    def failing(self: Schedule, after: datetime) -> datetime | None:
        if self.expression == "*/3 * * * * *":
            raise OverflowError("date value out of range")
        return real_next_after(self, after)

    monkeypatch.setattr(Schedule, "next_after", failing)
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("bad", "*/3 * * * * *"), T0)
    table.apply(created("good"), T0)
    due = table.pop_due(T0 + 3)
    assert slots_of(due) == [1, 2, 3] and {d.job_id for d in due} == {"good"}
    assert "failed at run time" in table.schedule_errors["bad"]
    assert "date value out of range" in table.schedule_errors["bad"]


def test_a_queued_slot_of_an_earlier_state_holds_the_watermark_back() -> None:
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(created("a", "*/10 * * * * *", jitter=5.0), T0)
    fire_at = (at(10) + jitter_for("a", at(10), 5.0)).timestamp()
    # The update drops the jitter: the largest jitter left is 0, but slot 10 still waits.
    table.apply(updated("a", 2, when=10.001, schedule="0 0 * * *"), T0 + 10.001)
    assert table.max_jitter == 0.0
    assert table.oldest_queued_slot_ms == to_ms(at(10))
    processed_until = fire_at - 0.001
    w = watermark_of(processed_until, [table.oldest_queued_slot_ms], table.max_jitter)
    assert w < T0 + 10
    table.pop_due(fire_at)
    assert table.oldest_queued_slot_ms is None


# --- jitter across a failover ------------------------------------------------------------------


def _failover(job: JobCreated, *, died: float, took_over: float, until: float) -> tuple[list[Due], list[Due]]:
    """A leader that leads from the job's creation and dies at `died` (having written the
    watermark then), and its successor that takes over at `took_over` and runs until `until`:
    what each of them dispatched."""
    since = job.occurred_at.timestamp()
    first = Timetable()
    first.apply(job, since)
    first.lead(since, since, set())
    before = first.pop_due(T0 + died)
    watermark = watermark_of(T0 + died, [], first.max_jitter)
    second = Timetable()
    second.apply(job, since)
    second.lead(watermark, T0 + took_over, {dispatch_msg_id(d.job_id, d.slot) for d in before})
    return before, second.pop_due(T0 + until)


def _job_jittered_past(slot: datetime, jitter: float, at_least: float) -> str:
    """A job id whose `slot` fires more than `at_least` seconds late (jitter is a hash)."""
    for i in range(10_000):
        job_id = f"job{i}"
        if jitter_for(job_id, slot, jitter).total_seconds() > at_least:
            return job_id
    raise AssertionError("no such job id")


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_a_slot_jittered_past_a_failover_is_dispatched_at_its_fire_time(policy: str) -> None:
    """`* * * * *` with jitter 30: slot 3600 fires after 3615; the leader dies at 3610 and its
    successor takes over at 3612.5, more than the grace after the slot but before it is due."""
    slot = at(3600)
    job_id = _job_jittered_past(slot, 30.0, 15.0)
    fire_at = fire_time(job_id, slot, 30.0)
    job = created(job_id, "* * * * *", when=3500, jitter=30.0, catchup=Catchup(policy=policy))  # type: ignore[arg-type]
    before, after = _failover(job, died=3610, took_over=3612.5, until=3700)
    assert to_ms(slot) not in [d.slot_ms for d in before]
    assert [(d.slot_ms, d.fire_at, d.trigger) for d in after if d.slot_ms == to_ms(slot)] == [
        (to_ms(slot), fire_at, "schedule")
    ]
    assert {d.trigger for d in after} == {"schedule"}


def test_a_slot_jittered_past_the_grace_of_a_change_is_still_owed() -> None:
    """The same on a live update: the old definition's slot fires after the change."""
    slot = at(3600)
    job_id = _job_jittered_past(slot, 30.0, 15.0)
    table = Timetable()
    table.lead(T0, T0, set())
    table.apply(
        created(job_id, "* * * * *", when=3500, jitter=30.0, catchup=Catchup(policy="skip")), T0 + 3500
    )
    table.pop_due(T0 + 3610)
    table.apply(updated(job_id, 2, when=3610, schedule="0 0 * * *"), T0 + 3610)
    due = table.pop_due(T0 + 3700)
    assert [(d.slot_ms, d.trigger) for d in due] == [(to_ms(slot), "schedule")]
    assert due[0].job is not None and due[0].job.revision == 1


@settings(max_examples=200, deadline=None)
@given(
    period=st.sampled_from([10, 15, 60]),
    share=st.floats(0.0, 0.99),
    policy=st.sampled_from(["skip", "latest", "all"]),
    died=st.floats(0.0, 300.0),
    gap=st.floats(0.0, 4.9),
)
def test_a_failover_within_the_grace_dispatches_every_slot_once_on_schedule(
    period: int, share: float, policy: str, died: float, gap: float
) -> None:
    """Whatever the jitter (up to the period, beyond the grace): a successor taking over within
    the grace of the leader's death dispatches every slot its predecessor had not, each once
    and as scheduled."""
    expression = "* * * * *" if period == 60 else f"*/{period} * * * * *"
    jitter = share * period
    job = created("j", expression, when=0.0, jitter=jitter, catchup=Catchup(policy=policy))  # type: ignore[arg-type]
    until = died + gap + 300.0
    before, after = _failover(job, died=died, took_over=died + gap, until=until)
    schedule = Schedule.parse(expression)
    expected = [
        s for s in schedule.slots_between(at(0), at(until)) if fire_time("j", s, jitter) <= T0 + until
    ]
    dispatched = sorted(d.slot_ms for d in before + after)
    assert dispatched == [to_ms(s) for s in expected]
    assert {d.trigger for d in before + after} <= {"schedule"}


@settings(max_examples=200, deadline=None)
@given(
    period=st.sampled_from([10, 15, 60]),
    share=st.floats(0.0, 0.99),
    policy=st.sampled_from(["skip", "latest", "all"]),
    window=st.sampled_from([1.0, 30.0, 120.0, 3600.0]),
    downtime=st.floats(0.0, 400.0),
    now=st.floats(2000.0, 2060.0),
)
def test_takeover_catch_up_of_a_jittered_job_is_catchup_slots(
    period: int, share: float, policy: str, window: float, downtime: float, now: float
) -> None:
    """At takeover a jittered job's owed slots are what `catchup_slots` says for it (the
    timetable skips fire times that cannot change the answer)."""
    expression = "* * * * *" if period == 60 else f"*/{period} * * * * *"
    jitter = share * period
    catchup = Catchup(policy=policy, window=window)  # type: ignore[arg-type]
    table = Timetable()
    table.apply(created("j", expression, when=0.0, jitter=jitter, catchup=catchup), T0)
    table.lead(T0 + now - downtime, T0 + now, set())
    owed = [(d.slot_ms, d.trigger) for d in table.pop_due(T0 + now + period) if d.slot_ms <= to_ms(at(now))]
    expected = catchup_slots(
        Schedule.parse(expression),
        T0 + now - downtime,
        T0 + now,
        policy=policy,  # type: ignore[arg-type]
        window=window,
        job_id="j",
        jitter=jitter,
    )
    assert sorted(owed) == sorted((to_ms(slot), trigger) for slot, trigger in expected)
