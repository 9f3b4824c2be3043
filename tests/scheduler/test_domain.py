"""The scheduler's pure core: heap, catch-up decisions, watermark and fencing arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cronbus.scheduler.domain import Fence, Timetable, catchup_slots, to_ms, watermark_of
from cronbus.shared.events import Catchup, JobCreated, JobDeleted, JobPaused, JobResumed, JobUpdated
from cronbus.shared.schedule import Schedule, jitter_for
from tests.scheduler.support import spec

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def slots_of(due: list) -> list[float]:  # type: ignore[type-arg]
    return [d.slot_ms / 1000 - T0 for d in due]


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


def test_standby_keeps_no_heap_but_knows_every_job() -> None:
    table = Timetable()
    table.apply(created("a"), T0)
    assert table.next_fire_at() is None
    assert table.pop_due(T0 + 100) == []
    assert set(table.jobs) == {"a"}


def test_takeover_skips_what_is_already_in_dispatch() -> None:
    table = Timetable()
    table.apply(created("a", when=-100), T0)
    table.lead(T0 - 3.5, T0, {f"a:{to_ms(at(-3))}", f"a:{to_ms(at(-1))}"})
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
