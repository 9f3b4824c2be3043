"""`GET /v1/jobs/{id}/slots`: every slot in a range and what became of it, each outcome made by
a real scenario: real `cronbus scheduler` processes, paused and resumed, stopped for a while
(a leader gap), and an overlap `skip` job with a runner and the logs service."""

from __future__ import annotations

import dataclasses
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cronbus.api.domain import Interval, SlotFacts, explain_slot
from cronbus.api.schemas import LeaderGap
from cronbus.shared.events import Catchup, JobSpec, ShellExecutor, scheduled_run, slot_ms
from cronbus.shared.settings import Settings
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create
from tests.logs.harness import running_logs
from tests.runner.support import running
from tests.scheduler.replicas import Replicas
from tests.scheduler.support import read_dispatches
from tests.support import wait_for

EVERY_SECOND = {**BACKUP, "schedule": "* * * * * *", "timezone": "UTC", "overlap": "allow"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, dedupe_window=2.0)


def second(at: datetime) -> datetime:
    return at.replace(microsecond=0)


async def slots(api: Api, job_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
    response = await api.client.get(
        f"/v1/jobs/{job_id}/slots",
        params={"from": start.isoformat(), "to": end.isoformat()},
        headers=api.auth(await api.add_key("viewer")),
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def newest_dispatch(api: Api, job_id: str) -> datetime | None:
    found = [
        d.event.slot
        for d in await read_dispatches(api.bus.js, api.settings.names)
        if d.event.job_id == job_id
    ]
    return max(found) if found else None


async def dispatched_past(api: Api, job_id: str, at: datetime, timeout: float = 30) -> None:
    async def past() -> datetime | None:
        newest = await newest_dispatch(api, job_id)
        return newest if newest is not None and newest >= at else None

    found = await wait_for(past, timeout=timeout, what=f"a dispatch of a slot at or after {at}")
    assert found is not None


async def first_dispatch(api: Api, job_id: str) -> datetime:
    async def first() -> datetime | None:
        found = [
            d.event.slot
            for d in await read_dispatches(api.bus.js, api.settings.names)
            if d.event.job_id == job_id
        ]
        return min(found) if found else None

    slot = await wait_for(first, timeout=30, what="a first dispatch")
    assert slot is not None
    return slot


async def until(at: datetime) -> None:
    """Wait (bounded) until the clock passes `at`: the scenario needs time to pass."""
    passed = await wait_for(lambda: datetime.now(UTC) > at, timeout=30, interval=0.05, what=f"{at}")
    assert passed


def missed_inside(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i for i in items if i["outcome"] == "missed"]


def outcomes(items: list[dict[str, Any]]) -> Counter[str]:
    return Counter(i["outcome"] for i in items)


@pytest.mark.slow
async def test_a_paused_job_shows_its_slots_skipped_paused_and_future_slots_pending(
    api: Api, tmp_path: Path
) -> None:
    job = await create(api, {**EVERY_SECOND, "catchup": {"policy": "skip", "window": "1h"}})
    replicas = Replicas(api.settings.nats_url, api.settings.prefix, tmp_path)
    try:
        replicas.spawn()
        # From the first slot the scheduler dispatched (before it, none was leading yet).
        begun = await first_dispatch(api, job["id"])
        await dispatched_past(api, job["id"], begun + timedelta(seconds=2))
        paused = await api.client.post(f"/v1/jobs/{job['id']}/pause", headers=api.auth())
        assert paused.status_code == 200
        paused_at = datetime.now(UTC)
        await until(paused_at + timedelta(seconds=3))
        resumed = await api.client.post(f"/v1/jobs/{job['id']}/resume", headers=api.auth())
        assert resumed.status_code == 200
        resumed_at = datetime.now(UTC)
        await dispatched_past(api, job["id"], second(resumed_at) + timedelta(seconds=2))

        end = second(resumed_at) + timedelta(seconds=30)
        items = await slots(api, job["id"], begun, end)
    finally:
        replicas.kill_all()

    assert len(items) == (end - begun).total_seconds()
    by_slot = {datetime.fromisoformat(i["slot"]): i for i in items}
    for slot, item in by_slot.items():
        if begun <= slot < paused_at - timedelta(seconds=1):
            assert item["outcome"] == "dispatched", item
            assert item["run_id"] == scheduled_run(job["id"], slot_ms(slot)).run_id
            assert item["status"] == "dispatched"
        elif paused_at < slot < resumed_at:
            assert item == {"slot": item["slot"], "outcome": "skipped", "reason": "paused"}, item
        elif second(resumed_at) + timedelta(seconds=1) < slot <= second(resumed_at) + timedelta(seconds=2):
            assert item["outcome"] == "dispatched", item
        elif slot > datetime.now(UTC) + timedelta(seconds=1):
            assert item == {"slot": item["slot"], "outcome": "pending"}, item
    assert outcomes(items)["skipped"] >= 2


@pytest.mark.slow
async def test_a_leader_gap_shows_missed_slots_and_catch_up_skips(api: Api, tmp_path: Path) -> None:
    """The only scheduler stops for a while. The job that catches up nothing (`skip`) shows
    the slots of the gap skipped by its catch-up policy; the one that catches up only the last
    second (`latest`, window 1s) shows the older ones missed, with the gap."""
    skipping = await create(
        api, {**EVERY_SECOND, "name": "skip", "catchup": {"policy": "skip", "window": "1h"}}
    )
    latest = await create(
        api, {**EVERY_SECOND, "name": "latest", "catchup": {"policy": "latest", "window": "1s"}}
    )
    replicas = Replicas(api.settings.nats_url, api.settings.prefix, tmp_path)
    try:
        first = replicas.spawn()
        begun = await first_dispatch(api, latest["id"])
        await dispatched_past(api, latest["id"], begun + timedelta(seconds=2))
        replicas.signal(first, signal.SIGTERM)
        assert await replicas.wait_exit(first) == 0
        stopped_at = datetime.now(UTC)
        await until(stopped_at + timedelta(seconds=9))
        replicas.spawn()
        back_at = datetime.now(UTC)
        await dispatched_past(api, skipping["id"], second(back_at) + timedelta(seconds=2))

        async def gap_known() -> list[dict[str, Any]] | None:
            items = await slots(api, latest["id"], begun, second(back_at))
            return items if any(i["outcome"] == "missed" for i in items) else None

        items = await wait_for(gap_known, timeout=15, what="the leader gap in the slots")
        assert items is not None
        skipped_items = await slots(api, skipping["id"], begun, second(back_at))
    finally:
        replicas.kill_all()

    missed = [i for i in items if i["outcome"] == "missed"]
    gap = missed[0]["gap"]
    gap_from, gap_to = datetime.fromisoformat(gap["from"]), datetime.fromisoformat(gap["to"])
    assert stopped_at - timedelta(seconds=2) <= gap_from <= stopped_at
    assert back_at - timedelta(seconds=1) <= gap_to <= back_at + timedelta(seconds=10)
    # Every slot of the gap at least two seconds before its end is missed (older than the window).
    inside = [
        i for i in items if gap_from < datetime.fromisoformat(i["slot"]) <= gap_to - timedelta(seconds=2)
    ]
    # (The last slots the stopping scheduler dispatched can lie just after the watermark it left.)
    assert [i["outcome"] for i in inside if i["outcome"] != "dispatched"] == ["missed"] * len(
        missed_inside(inside)
    )
    assert len(missed_inside(inside)) >= 2
    assert all(i["gap"] == gap for i in missed_inside(inside))
    # Before the gap, everything ran.
    before = [i for i in items if begun < datetime.fromisoformat(i["slot"]) < gap_from - timedelta(seconds=1)]
    assert before and {i["outcome"] for i in before} == {"dispatched"}

    in_gap = [
        i
        for i in skipped_items
        if gap_from < datetime.fromisoformat(i["slot"]) <= gap_to - timedelta(seconds=2)
    ]
    not_run = [i for i in in_gap if i["outcome"] != "dispatched"]
    assert len(not_run) >= 3
    assert {i["outcome"] for i in not_run} == {"skipped"}
    assert all(i["reason"].startswith("catch-up policy 'skip'") for i in not_run), not_run


@pytest.mark.slow
async def test_an_overlap_skip_shows_the_slot_skipped_with_the_runners_reason(
    api: Api, tmp_path: Path
) -> None:
    job = await create(
        api,
        {
            **EVERY_SECOND,
            "overlap": "skip",
            "catchup": {"policy": "skip", "window": "1h"},
            "executor": {"type": "shell", "command": "sleep 3"},
        },
    )
    replicas = Replicas(api.settings.nats_url, api.settings.prefix, tmp_path)
    try:
        async with running(api.settings), running_logs(api.settings):
            replicas.spawn()
            begun = await first_dispatch(api, job["id"])

            async def skipped() -> list[dict[str, Any]] | None:
                end = max(begun + timedelta(seconds=1), second(datetime.now(UTC)))
                items = await slots(api, job["id"], begun, end)
                return items if any(i["outcome"] == "skipped" for i in items) else None

            items = await wait_for(skipped, timeout=30, interval=0.5, what="a slot skipped by overlap")
            assert items is not None
    finally:
        replicas.kill_all()

    skip = next(i for i in items if i["outcome"] == "skipped")
    assert skip["status"] == "skipped"
    assert skip["reason"].startswith("overlap policy 'skip'"), skip
    assert skip["run_id"] == scheduled_run(job["id"], slot_ms(datetime.fromisoformat(skip["slot"]))).run_id
    assert any(i["outcome"] == "dispatched" and i["status"] in ("running", "succeeded") for i in items)


async def test_slots_of_a_bad_range_or_unknown_job_are_refused(api: Api) -> None:
    job = await create(api, EVERY_SECOND)
    now = second(datetime.now(UTC))
    for start, end, words in (
        (now, now - timedelta(hours=1), "must be after from"),
        (now - timedelta(hours=4), now, "more than 10000 slots"),
    ):
        response = await api.client.get(
            f"/v1/jobs/{job['id']}/slots",
            params={"from": start.isoformat(), "to": end.isoformat()},
            headers=api.auth(),
        )
        assert response.status_code == 422, response.text
        assert words in response.text
    unknown = await api.client.get(
        "/v1/jobs/00000000-0000-4000-8000-000000000000/slots",
        params={"from": (now - timedelta(minutes=1)).isoformat(), "to": now.isoformat()},
        headers=api.auth(),
    )
    assert unknown.status_code == 404


# --- the rule alone (pure) ------------------------------------------------------------------------

T = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)


def explain(at: datetime, facts: SlotFacts, **spec_fields: Any) -> dict[str, Any]:
    spec = JobSpec(name="n", schedule="* * * * *", executor=ShellExecutor(command="true"), **spec_fields)
    out: dict[str, Any] = msgspec.to_builtins(
        explain_slot(at, spec, facts, T + timedelta(hours=2), settle=60)
    )
    out.pop("slot")
    return out


def test_each_outcome_follows_from_the_facts() -> None:
    gap = LeaderGap(from_=T + timedelta(minutes=10), to=T + timedelta(minutes=40))
    open_gap = LeaderGap(from_=T + timedelta(minutes=90), to=None)
    overlap = "overlap policy 'skip': run r1 of this job is still running"
    facts = SlotFacts(
        runs={
            T + timedelta(minutes=1): ("r1", "succeeded", None),
            T + timedelta(minutes=2): ("r2", "skipped", overlap),
        },
        created_at=T,
        paused=[Interval(T + timedelta(minutes=3), T + timedelta(minutes=5))],
        deleted_at=None,
        gaps=[gap, open_gap],
    )
    m = timedelta(minutes=1)
    assert explain(T + m, facts) == {"outcome": "dispatched", "run_id": "r1", "status": "succeeded"}
    assert explain(T + 2 * m, facts)["reason"].startswith("overlap policy 'skip'")
    assert explain(T + 4 * m, facts) == {"outcome": "skipped", "reason": "paused"}
    assert explain(T - m, facts) == {"outcome": "skipped", "reason": "before the job was created"}
    assert explain(T + 6 * m, facts, end_at=T + 5 * m) == {
        "outcome": "skipped",
        "reason": "outside start/end",
    }
    # In the gap: older than the catch-up window (10 minutes) when it ended -> missed.
    window = {"catchup": msgspec.convert({"policy": "skip", "window": 600.0}, type=Catchup)}
    assert explain(T + 20 * m, facts, **window)["outcome"] == "missed"
    late = explain(T + 35 * m, facts, **window)
    assert late["outcome"] == "skipped" and late["reason"].startswith("catch-up policy 'skip'")
    assert explain(T + 100 * m, facts)["gap"] == {"from": "2026-11-30T01:30:00Z", "to": None}
    assert explain(T + 50 * m, facts) == {
        "outcome": "pending",
        "reason": "no dispatch or decision recorded yet",
    }
    assert explain(T + 3 * 60 * m, facts) == {"outcome": "pending"}
    deleted = SlotFacts(runs={}, created_at=T, deleted_at=T + 30 * m)
    assert explain(T + 31 * m, deleted) == {"outcome": "skipped", "reason": "deleted"}
