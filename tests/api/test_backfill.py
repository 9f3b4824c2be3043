"""`POST /v1/jobs/{id}/backfill`: every slot of a past range dispatched exactly once, with the
scheduled run ids, when repeated, past JetStream's dedupe window, and across a scheduler
failover (real `cronbus scheduler` processes, the leader killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronbus.shared.events import scheduled_run, slot_ms
from cronbus.shared.settings import Settings
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create
from tests.scheduler.replicas import Replicas
from tests.scheduler.support import read_dispatches
from tests.support import wait_for

# DISPATCH drops a repeated message id for one second only: a repeat after that is refused by
# the backfill's own reading of DISPATCH, not by JetStream.
DEDUPE_WINDOW = 1.0
EVERY_SECOND = {**BACKUP, "schedule": "* * * * * *", "timezone": "UTC", "overlap": "allow"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, dedupe_window=DEDUPE_WINDOW)


def whole_second(at: datetime) -> datetime:
    return at.replace(microsecond=0)


async def backfill(api: Api, job_id: str, start: datetime, end: datetime, key: str | None = None) -> Any:
    response = await api.client.post(
        f"/v1/jobs/{job_id}/backfill",
        json={"from": start.isoformat(), "to": end.isoformat()},
        headers=api.auth(key) if key else api.auth(),
    )
    assert response.status_code == 200, response.text
    return response.json()


async def dispatch_counts(api: Api, job_id: str) -> Counter[datetime]:
    dispatches = await read_dispatches(api.bus.js, api.settings.names)
    return Counter(d.event.slot for d in dispatches if d.event.job_id == job_id)


async def test_backfill_dispatches_each_slot_once_with_the_scheduled_ids(api: Api) -> None:
    job = await create(api, EVERY_SECOND)
    end = whole_second(datetime.now(UTC)) - timedelta(seconds=5)
    start = end - timedelta(seconds=10)

    first = await backfill(api, job["id"], start, end, key=await api.add_key("operator"))

    slots = [start + timedelta(seconds=i) for i in range(10)]
    assert first["slots"] == 10
    assert first["already"] == []
    assert [datetime.fromisoformat(d["slot"]) for d in first["dispatched"]] == slots
    expected_ids = [scheduled_run(job["id"], slot_ms(s)).run_id for s in slots]
    assert [d["run_id"] for d in first["dispatched"]] == expected_ids
    dispatches = [
        d for d in await read_dispatches(api.bus.js, api.settings.names) if d.event.job_id == job["id"]
    ]
    assert sorted(d.event.slot for d in dispatches) == slots
    assert {d.msg_id for d in dispatches} == {scheduled_run(job["id"], slot_ms(s)).msg_id for s in slots}
    assert {d.event.trigger for d in dispatches} == {"catchup"}
    assert {d.event.attempt for d in dispatches} == {1}

    # Repeated at once (inside the dedupe window), and again once the window has passed: the
    # second refusal comes from reading DISPATCH, not from JetStream.
    again = await backfill(api, job["id"], start, end)
    assert again["dispatched"] == []
    assert [a["run_id"] for a in again["already"]] == expected_ids
    await asyncio.sleep(DEDUPE_WINDOW + 0.5)  # the window's length is what is tested, not a sync
    wider = await backfill(api, job["id"], start - timedelta(seconds=2), end)
    assert [datetime.fromisoformat(d["slot"]) for d in wider["dispatched"]] == [
        start - timedelta(seconds=2),
        start - timedelta(seconds=1),
    ]
    assert len(wider["already"]) == 10
    counts = await dispatch_counts(api, job["id"])
    assert len(counts) == 12
    assert set(counts.values()) == {1}


async def test_backfill_refuses_bad_ranges_paused_and_deleted_jobs(api: Api) -> None:
    job = await create(api, EVERY_SECOND)
    now = whole_second(datetime.now(UTC))
    url = f"/v1/jobs/{job['id']}/backfill"

    async def post(body: Any, key: str | None = None) -> Any:
        return await api.client.post(url, json=body, headers=api.auth(key) if key else api.auth())

    hour = timedelta(hours=1)
    cases = {
        "reversed": ({"from": now.isoformat(), "to": (now - hour).isoformat()}, "must be after from"),
        "empty": ({"from": now.isoformat(), "to": now.isoformat()}, "must be after from"),
        "too large": ({"from": (now - 4 * hour).isoformat(), "to": now.isoformat()}, "more than 10000 slots"),
        "future": ({"from": (now - hour).isoformat(), "to": (now + hour).isoformat()}, "in the future"),
        "no zone": ({"from": "2026-01-01T00:00:00", "to": "2026-01-01T00:01:00"}, "UTC offset"),
        "typo": ({"from": (now - hour).isoformat(), "till": now.isoformat()}, "till"),
    }
    for name, (body, words) in cases.items():
        response = await post(body)
        assert response.status_code in (400, 422), (name, response.text)
        assert words in response.text, (name, response.text)
    assert await dispatch_counts(api, job["id"]) == Counter()

    viewer = await post(
        {"from": (now - hour).isoformat(), "to": now.isoformat()}, await api.add_key("viewer")
    )
    assert viewer.status_code == 403

    await api.client.post(f"/v1/jobs/{job['id']}/pause", headers=api.auth())
    paused = await post({"from": (now - timedelta(seconds=5)).isoformat(), "to": now.isoformat()})
    assert paused.status_code == 409
    assert "paused" in paused.json()["detail"]

    await api.client.delete(f"/v1/jobs/{job['id']}", headers=api.auth())
    gone = await post({"from": (now - timedelta(seconds=5)).isoformat(), "to": now.isoformat()})
    assert gone.status_code == 404
    assert await dispatch_counts(api, job["id"]) == Counter()


@pytest.mark.slow
async def test_backfill_across_a_scheduler_failover_dispatches_each_slot_once(
    api: Api, tmp_path: Path
) -> None:
    """Two schedulers dispatch an every-second job (catch-up `all`); the leader is killed and,
    while the other takes over, the range the schedulers dispatched (and the failover's) is
    backfilled twice. Every slot of the range is in DISPATCH exactly once."""
    job = await create(api, {**EVERY_SECOND, "catchup": {"policy": "all", "window": "1h"}})
    replicas = Replicas(
        api.settings.nats_url,
        api.settings.prefix,
        tmp_path,
        env={"CRONBUS_DEDUPE_WINDOW": str(DEDUPE_WINDOW)},
    )
    try:
        for _ in range(2):
            replicas.spawn()
        started = whole_second(datetime.now(UTC))

        async def dispatched_up_to(at: datetime) -> datetime | None:
            """The newest slot dispatched, once it is `at` or later."""
            counts = await dispatch_counts(api, job["id"])
            return max(counts) if counts and max(counts) >= at else None

        await wait_for(
            lambda: dispatched_up_to(started + timedelta(seconds=3)), timeout=30, what="dispatches"
        )
        leaders = {d.event.scheduler for d in await read_dispatches(api.bus.js, api.settings.names)}
        assert len(leaders) == 1
        leader = leaders.pop()
        replicas.signal(leader, signal.SIGKILL)
        await replicas.wait_exit(leader)
        killed = datetime.now(UTC)

        # Backfill what the dead leader dispatched and what falls due while nobody leads.
        range_end = whole_second(killed) + timedelta(seconds=1)
        await wait_for(lambda: datetime.now(UTC) > range_end, timeout=5, interval=0.05, what="range end")
        first = await backfill(api, job["id"], started, range_end)
        second = await backfill(api, job["id"], started, range_end)
        assert second["dispatched"] == []
        assert first["slots"] == second["slots"] == len(second["already"])

        newest = await wait_for(
            lambda: dispatched_up_to(range_end + timedelta(seconds=3)), timeout=30, what="the new leader"
        )
        assert newest is not None
        counts = await dispatch_counts(api, job["id"])
        in_range = {slot: n for slot, n in counts.items() if started <= slot < range_end}
        expected = [started + timedelta(seconds=i) for i in range(int((range_end - started).total_seconds()))]
        assert sorted(in_range) == expected
        assert set(in_range.values()) == {1}, {s: n for s, n in in_range.items() if n != 1}
        assert set(counts.values()) == {1}
    finally:
        replicas.kill_all()
