"""Overlap policies across two runners, cancel requests, and the pure admission rules."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import msgspec
import psutil

from cronbus.runner.app import RunnerService
from cronbus.runner.overlap import Holder, RunningRecord, admit
from cronbus.shared.bus import Bus
from cronbus.shared.events import RunEvents, RunStarted, ShellExecutor, utcnow
from cronbus.shared.settings import Settings
from tests.runner.support import (
    InProcessRunner,
    dispatch,
    final_outcome,
    hold_until,
    run_events,
    running,
)
from tests.support import wait_for

NOW = utcnow()


def _holder(runner: str) -> Holder:
    return Holder(runner=runner, attempt=1, since=NOW)


def test_admission_rules():
    busy = RunningRecord(runs={"r1": _holder("a")})
    live = {"a", "b"}
    for policy in ("allow", "skip", "queue", "replace"):
        verdict = admit(RunningRecord(), run_id="r2", holder=_holder("b"), policy=policy, live_runners=live)
        assert verdict.verdict == "run"
        assert set(verdict.record.runs) == {"r2"}
    assert admit(busy, run_id="r2", holder=_holder("b"), policy="allow", live_runners=live).verdict == "run"
    skipped = admit(busy, run_id="r2", holder=_holder("b"), policy="skip", live_runners=live)
    assert skipped.verdict == "skip"
    assert "r1" in skipped.reason
    replaced = admit(busy, run_id="r2", holder=_holder("b"), policy="replace", live_runners=live)
    assert (replaced.verdict, replaced.cancel) == ("run", ["r1"])
    queued = admit(busy, run_id="r2", holder=_holder("b"), policy="queue", live_runners=live)
    assert (queued.verdict, queued.record.queued) == ("wait", "r2")
    third = admit(queued.record, run_id="r3", holder=_holder("b"), policy="queue", live_runners=live)
    assert third.verdict == "skip"
    # A holder whose runner is gone does not count.
    assert admit(busy, run_id="r2", holder=_holder("b"), policy="skip", live_runners={"b"}).verdict == "run"


@contextlib.asynccontextmanager
async def two_runners(settings: Settings) -> AsyncIterator[tuple[RunnerService, RunnerService]]:
    async with (
        running(settings, instance_id="runner-a") as a,
        running(settings, instance_id="runner-b") as b,
    ):
        yield a, b


async def _events(bus: Bus, settings: Settings, run_id: str) -> list[RunEvents]:
    return await run_events(bus.js, settings, run_id)


async def _started_at(bus: Bus, settings: Settings, run_id: str) -> datetime:
    async def started() -> datetime | None:
        for e in await _events(bus, settings, run_id):
            if isinstance(e, RunStarted):
                return e.occurred_at
        return None

    result = await wait_for(started, what=f"run {run_id} started")
    assert isinstance(result, datetime)
    return result


async def test_skip_policy_records_a_skipped_run_with_the_reason(settings: Settings, tmp_path: Path):
    bus = await Bus.open(settings, "test")
    release = tmp_path / "release"
    try:
        async with two_runners(settings):
            # The first run lasts until the test lets it end.
            first = await dispatch(
                bus.js, settings, ShellExecutor(command=hold_until(release)), overlap="skip"
            )
            await _started_at(bus, settings, first.run_id)
            second = await dispatch(
                bus.js, settings, ShellExecutor(command="echo no"), job_id=first.job_id, overlap="skip"
            )
            skipped = await final_outcome(bus.js, settings, second.run_id)
            assert skipped.status == "skipped"
            assert first.run_id in skipped.error
            release.touch()
            assert (await final_outcome(bus.js, settings, first.run_id)).status == "succeeded"
            # Once the first is over, the job runs again.
            third = await dispatch(
                bus.js, settings, ShellExecutor(command="true"), job_id=first.job_id, overlap="skip"
            )
            assert (await final_outcome(bus.js, settings, third.run_id)).status == "succeeded"
    finally:
        await bus.close()


async def test_queue_policy_buffers_one_run_and_skips_the_next(settings: Settings, tmp_path: Path):
    bus = await Bus.open(settings, "test")
    release = tmp_path / "release"
    try:
        async with two_runners(settings):
            first = await dispatch(
                bus.js, settings, ShellExecutor(command=hold_until(release)), overlap="queue"
            )
            await _started_at(bus, settings, first.run_id)
            second = await dispatch(
                bus.js, settings, ShellExecutor(command="true"), job_id=first.job_id, overlap="queue"
            )
            kv = await bus.js.key_value(settings.names.running_bucket)

            async def queued() -> bool:
                entry = await kv.get(first.job_id)
                return msgspec.json.decode(entry.value or b"{}", type=RunningRecord).queued == second.run_id

            await wait_for(queued, what="second run queued")
            third = await dispatch(
                bus.js, settings, ShellExecutor(command="true"), job_id=first.job_id, overlap="queue"
            )
            skipped = await final_outcome(bus.js, settings, third.run_id)
            assert skipped.status == "skipped"
            assert second.run_id in skipped.error
            # Still waiting: nothing of the second run has started while the first holds the job.
            assert not [e for e in await _events(bus, settings, second.run_id) if isinstance(e, RunStarted)]
            release.touch()
            one = await final_outcome(bus.js, settings, first.run_id)
            two = await final_outcome(bus.js, settings, second.run_id)
            assert (one.status, two.status) == ("succeeded", "succeeded")
            # The queued run started only after the first finished.
            assert await _started_at(bus, settings, second.run_id) >= one.occurred_at
            await wait_for(
                lambda: _record_empty(kv, first.job_id), what="running record cleaned up after the runs"
            )
    finally:
        await bus.close()


async def _record_empty(kv, job_id: str) -> bool:
    entry = await kv.get(job_id)
    record = msgspec.json.decode(entry.value or b"{}", type=RunningRecord)
    return not record.runs and record.queued is None


async def test_replace_policy_cancels_the_running_one(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with two_runners(settings):
            first = await dispatch(bus.js, settings, ShellExecutor(command="sleep 60"), overlap="replace")
            await _started_at(bus, settings, first.run_id)
            second = await dispatch(
                bus.js, settings, ShellExecutor(command="echo new"), job_id=first.job_id, overlap="replace"
            )
            replaced = await final_outcome(bus.js, settings, first.run_id)
            assert replaced.status == "cancelled"
            assert (await final_outcome(bus.js, settings, second.run_id)).status == "succeeded"
    finally:
        await bus.close()


async def test_allow_policy_runs_overlapping_slots_together(settings: Settings, tmp_path: Path):
    bus = await Bus.open(settings, "test")
    release = tmp_path / "release"
    try:
        async with two_runners(settings):
            hold = ShellExecutor(command=hold_until(release))
            first = await dispatch(bus.js, settings, hold)
            await _started_at(bus, settings, first.run_id)
            second = await dispatch(bus.js, settings, hold, job_id=first.job_id)
            started_second = await _started_at(bus, settings, second.run_id)
            release.touch()
            one = await final_outcome(bus.js, settings, first.run_id)
            assert started_second < one.occurred_at
            assert (await final_outcome(bus.js, settings, second.run_id)).status == "succeeded"
    finally:
        await bus.close()


async def test_a_record_left_by_a_dead_runner_does_not_block_the_job(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        kv = await bus.js.key_value(settings.names.running_bucket)
        stale = RunningRecord(runs={"ghost-run": _holder("runner-that-died")})
        async with running(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command="true"), overlap="skip")
            await kv.create(d.job_id, msgspec.json.encode(stale))
            assert (await final_outcome(bus.js, settings, d.run_id)).status == "succeeded"
    finally:
        await bus.close()


async def test_cancel_kills_the_run_on_whichever_runner_holds_it(settings: Settings):
    bus = await Bus.open(settings, "test")
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    try:
        async with two_runners(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command=f"sleep {marker} & wait"))
            await _started_at(bus, settings, d.run_id)
            await bus.nc.publish(settings.names.cancel_subject(d.run_id), b"")
            result = await final_outcome(bus.js, settings, d.run_id)
            assert result.status == "cancelled"
            assert result.final
            leftovers = [
                p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])
            ]
            assert leftovers == []
    finally:
        await bus.close()


async def test_presence_is_kept_while_running_and_withdrawn_on_stop(settings: Settings):
    from cronbus.shared.status import decode_runner_presence

    bus = await Bus.open(settings, "test")
    try:
        kv = await bus.js.key_value(settings.names.runners_bucket)
        async with running(replace(settings, concurrency=3, http_concurrency=20), instance_id="present"):
            entry = await kv.get("present")
            presence = decode_runner_presence(entry.value or b"")
            assert (presence.id, presence.pools) == ("present", ["default"])
            # What it may run at once: its slots and, for HTTP runs, its HTTP slots.
            assert (presence.capacity, presence.slots, presence.http_slots) == (23, 3, 20)
            first_update = presence.updated_at
            await wait_for(lambda: _updated_after(kv, first_update), timeout=5, what="presence refreshed")
        assert "present" not in await _keys(kv)
    finally:
        await bus.close()


async def _updated_after(kv, when: datetime) -> bool:
    from cronbus.shared.status import decode_runner_presence

    entry = await kv.get("present")
    return decode_runner_presence(entry.value or b"").updated_at > when


async def _keys(kv) -> list[str]:
    try:
        return list(await kv.keys())
    except Exception:  # nats-py raises NoKeysError for an empty bucket
        return []


async def test_a_stopping_runner_stays_present_while_its_runs_finish(settings: Settings, tmp_path: Path):
    """Its grace period outlasts the presence TTL: the overlap policy must still see its runs."""
    from cronbus.shared.status import decode_runner_presence

    bus = await Bus.open(settings, "test")
    release = tmp_path / "release"
    ttl = max(3 * settings.heartbeat, 5.0)
    a = InProcessRunner(replace(settings, instance_id="runner-a", grace_period=ttl + 30.0))
    try:
        kv = await bus.js.key_value(settings.names.runners_bucket)
        await a.start()
        first = await dispatch(bus.js, settings, ShellExecutor(command=hold_until(release)), overlap="skip")
        await _started_at(bus, settings, first.run_id)
        async with running(settings, instance_id="runner-b"):
            a.stop()
            stop_requested = utcnow()

            async def refreshed_past_ttl() -> bool:
                try:
                    entry = await kv.get("runner-a")
                except Exception:  # KeyNotFoundError once the key is gone
                    return False
                presence = decode_runner_presence(entry.value or b"")
                return presence.updated_at > stop_requested + timedelta(seconds=ttl)

            await wait_for(
                refreshed_past_ttl, timeout=ttl + 15, what="stopping runner-a still present after the TTL"
            )
            # runner-a no longer fetches, so runner-b takes this one, and sees the first still running.
            second = await dispatch(
                bus.js, settings, ShellExecutor(command="echo no"), job_id=first.job_id, overlap="skip"
            )
            skipped = await final_outcome(bus.js, settings, second.run_id)
            assert (skipped.status, skipped.runner) == ("skipped", "runner-b")
            assert first.run_id in skipped.error
            release.touch()
            result = await final_outcome(bus.js, settings, first.run_id)
            assert (result.status, result.runner) == ("succeeded", "runner-a")
            await a.stopped()
            assert "runner-a" not in await _keys(kv)
    finally:
        release.touch()
        await a.stopped()
        await bus.close()
