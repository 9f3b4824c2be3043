"""The term of primacy (`lease.Term`) and the takeover's grace after a failover
(`watermark.failover_grace`): pure logic, no server."""

from __future__ import annotations

from datetime import UTC, datetime

from cronbus.scheduler.domain import Fence, Timetable, to_ms
from cronbus.scheduler.history import dedupe_covers
from cronbus.scheduler.lease import Term
from cronbus.scheduler.watermark import FAILOVER_LIMIT, Start, failover_grace
from cronbus.shared.events import Catchup, JobCreated
from tests.scheduler.support import spec


def _fence(renewed_at: float) -> Fence:
    fence = Fence(ttl=2.0, margin=0.5)
    fence.renewed(renewed_at)
    return fence


def test_a_term_publishes_while_the_fence_is_open_on_its_own_connection() -> None:
    epoch: list[int | None] = [3]
    term = Term(_fence(100.0), lambda: epoch[0], revision=7)
    assert term.may_publish(101.0)
    assert not term.may_publish(101.5)  # ttl - margin after the renewal
    assert term.ended and "fence" in term.why


def test_a_term_ends_for_good_when_its_connection_drops_or_is_replaced() -> None:
    epoch: list[int | None] = [0]
    term = Term(_fence(100.0), lambda: epoch[0], revision=1)
    epoch[0] = None
    assert not term.may_publish(100.1)
    epoch[0] = 0  # the same count again cannot reopen it
    assert not term.may_publish(100.2)
    replaced = Term(_fence(100.0), lambda: epoch[0], revision=1)
    epoch[0] = 1
    assert not replaced.may_publish(100.1)
    assert "connection" in replaced.why


def test_a_revoked_fence_ends_the_term() -> None:
    fence = _fence(100.0)
    term = Term(fence, lambda: 0, revision=1)
    fence.revoke()  # what losing or releasing the lease does
    assert not term.may_publish(100.1)


def test_the_grace_stretches_over_a_failover_not_over_downtime() -> None:
    now = 1_000.0
    assert failover_grace(Start(at=990.0, written=None), now, 5.0) == 5.0
    assert failover_grace(Start(at=985.0, written=988.0), now, 5.0) == 17.0
    assert failover_grace(Start(at=985.0, written=988.0, stopped=True), now, 5.0) == 5.0
    long_ago = now - FAILOVER_LIMIT - 1
    assert failover_grace(Start(at=long_ago, written=long_ago), now, 5.0) == 5.0


def test_a_takeover_after_a_failover_dispatches_the_slots_of_a_latest_job_as_scheduled() -> None:
    """A NATS election kept every replica from leading for 12 s: the slots of that time are
    late, not missed, so `latest` dispatches each of them, not only the newest."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    table = Timetable(grace=5.0)
    latest = spec("* * * * * *", catchup=Catchup(policy="latest", window=3600.0))
    created = JobCreated(
        job_id="j", revision=1, spec=latest, occurred_at=datetime.fromtimestamp(t0 - 60, UTC)
    )
    table.apply(created, t0 - 60)
    start = Start(at=t0, written=t0 + 0.5)
    now = t0 + 12.5
    table.lead(start.at, now, set(), grace=failover_grace(start, now, table.grace))
    slots = sorted(d.slot_ms for d in table.pop_due(now))
    assert slots == [to_ms(datetime.fromtimestamp(t0 + s, UTC)) for s in range(1, 13)]
    # Without the failover, the same gap is downtime: one run stands for the missed slots.
    table.follow()
    table.lead(start.at, now, set())
    assert len(table.pop_due(now)) == 1 + 5  # the newest missed one and the 5 s of grace


def test_a_takeover_goes_on_without_history_only_inside_the_dedupe_window() -> None:
    """Reading DISPATCH fails while the cluster elects a meta leader; skipping the read is safe
    only while every slot since the watermark is still deduplicated by JetStream."""
    assert dedupe_covers(since=1_000.0, now=1_030.0, window=600.0, margin=10.0)
    assert not dedupe_covers(since=1_000.0, now=1_595.0, window=600.0, margin=10.0)
    assert not dedupe_covers(since=1_000.0, now=1_000.5, window=1.0, margin=10.0)
