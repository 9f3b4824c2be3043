"""`@every` grids: each job's slots lie on the grid through its anchor, so jobs created at
different moments do not all fire in the same second; jobs without an anchor keep the epoch grid."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from cronbus.scheduler.domain import Timetable
from cronbus.shared.events import JobCreated, JobSpec, JobUpdated, decode_job_event, encode
from cronbus.shared.schedule import Schedule
from tests.scheduler.support import spec

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def ms(d: datetime) -> int:
    return (d - EPOCH) // timedelta(milliseconds=1)


@settings(max_examples=300, deadline=None)
@given(
    interval_s=st.integers(min_value=1, max_value=7 * 86400),
    anchor_ms=st.integers(min_value=0, max_value=4_000_000_000_000),
    after_ms=st.integers(min_value=0, max_value=4_000_000_000_000),
)
def test_slots_lie_on_the_anchor_grid_and_strictly_increase(
    interval_s: int, anchor_ms: int, after_ms: int
) -> None:
    anchor = EPOCH + timedelta(milliseconds=anchor_ms)
    after = EPOCH + timedelta(milliseconds=after_ms)
    schedule = Schedule.parse(f"@every {interval_s}s", anchor=anchor)
    fires = schedule.next_fires(after, 3)
    assert fires[0] > after
    assert fires[0] - after <= timedelta(seconds=interval_s)
    for a, b in itertools.pairwise(fires):
        assert b - a == timedelta(seconds=interval_s)
    assert all((ms(f) - anchor_ms) % (interval_s * 1000) == 0 for f in fires)


def test_the_anchor_itself_is_a_slot_and_no_anchor_means_the_epoch_grid() -> None:
    anchor = datetime(2026, 12, 1, 18, 0, 17, 250_000, tzinfo=UTC)
    anchored = Schedule.parse("@every 1m", anchor=anchor)
    assert anchored.next_after(anchor - timedelta(milliseconds=1)) == anchor
    assert anchored.next_after(anchor) == anchor + timedelta(minutes=1)
    plain = Schedule.parse("@every 1m")
    assert plain.next_after(anchor) == datetime(2026, 12, 1, 18, 1, tzinfo=UTC)
    # Cron and one-off schedules ignore an anchor: "0 * * * *" still means on the hour.
    assert Schedule.parse("0 * * * *", anchor=anchor).next_after(anchor) == datetime(
        2026, 12, 1, 19, tzinfo=UTC
    )


def test_a_spec_without_anchor_reads_as_before() -> None:
    """Jobs stored before anchors existed decode with anchor None and keep the epoch grid."""
    old = JobCreated(job_id="old", revision=1, spec=spec("@every 1m"))
    raw = encode(old).replace(b',"anchor":null', b"")
    assert b"anchor" not in raw
    decoded = decode_job_event(raw)
    assert isinstance(decoded, JobCreated) and decoded.spec.anchor is None


def _every_minute(anchor: datetime | None) -> JobSpec:
    return spec("@every 1m", anchor=anchor)


def test_jobs_created_apart_fire_apart_and_an_unanchored_job_keeps_its_slots() -> None:
    table = Timetable()
    table.apply(JobCreated(job_id="legacy", revision=1, spec=_every_minute(None), occurred_at=at(0)), T0)
    for i in range(1, 4):
        job = JobCreated(job_id=f"j{i}", revision=1, spec=_every_minute(at(i * 10)), occurred_at=at(i * 10))
        table.apply(job, T0 + 40)
    table.lead(T0 + 40, T0 + 40, set())
    fired = {(d.job_id, round(d.slot_ms / 1000 - T0)) for d in table.pop_due(T0 + 100)}
    assert fired == {("legacy", 60), ("j1", 70), ("j2", 80), ("j3", 90)}


def test_jobs_at_the_same_phase_share_one_grid() -> None:
    table = Timetable()
    for i in range(50):
        anchor = at(7 + 60 * i)  # different anchors, same phase of the minute
        table.apply(JobCreated(job_id=f"j{i}", revision=1, spec=_every_minute(anchor)), T0)
    assert len({id(job.schedule) for job in table.jobs.values()}) == 1


def test_an_update_that_keeps_the_anchor_keeps_the_grid() -> None:
    table = Timetable()
    table.apply(JobCreated(job_id="a", revision=1, spec=_every_minute(at(13)), occurred_at=at(13)), T0 + 13)
    table.apply(
        JobUpdated(
            job_id="a", revision=2, spec=spec("@every 1m", anchor=at(13), name="renamed"), occurred_at=at(20)
        ),
        T0 + 20,
    )
    table.lead(T0 + 20, T0 + 20, set())
    assert [round(d.slot_ms / 1000 - T0) for d in table.pop_due(T0 + 140)] == [73, 133]
