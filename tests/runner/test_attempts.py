"""Retries, redelivery of finished runs, malformed dispatches, and the pure attempt rules."""

from __future__ import annotations

import msgspec
import pytest

from cronbus.runner.attempts import HANDED_BACK, after_attempt, plan_delivery
from cronbus.runner.overlap import RunningRecord
from cronbus.runner.runs import EventPublisher
from cronbus.shared.bus import MSG_ID, Bus
from cronbus.shared.events import (
    Event,
    Retries,
    RunFinished,
    RunStarted,
    RunStatus,
    ShellExecutor,
    encode,
    utcnow,
)
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, new_slot, output_of, run_events, running
from tests.support import wait_for

SLOT = utcnow()


def _started(attempt: int) -> RunStarted:
    return RunStarted(run_id="r", job_id="j", slot=SLOT, attempt=attempt, runner="a")


def _finished(attempt: int, *, final: bool, status: RunStatus = "failed", error: str = "") -> RunFinished:
    return RunFinished(
        run_id="r", job_id="j", slot=SLOT, attempt=attempt, status=status, final=final, error=error
    )


def _handed_back(attempt: int) -> RunFinished:
    event = _finished(attempt, final=False, status="lost", error="the runner stopped; handed back")
    event.handed_back = True
    return event


def test_delivery_plans():
    retries = Retries(max_attempts=3)
    first = plan_delivery([], retries)
    assert (first.run, first.attempt, first.counted) == (True, 1, 0)
    finished = plan_delivery([_started(1), _finished(1, final=True)], retries)
    assert finished.finished
    assert not finished.run
    retry = plan_delivery([_started(1), _finished(1, final=False)], retries)
    assert (retry.run, retry.attempt, retry.counted) == (True, 2, 1)
    lost = plan_delivery([_started(1)], retries)
    assert (lost.lost_attempt, lost.lost_is_final, lost.run, lost.attempt, lost.counted) == (
        1,
        False,
        True,
        2,
        1,
    )
    history = [_started(1), _finished(1, final=False), _started(2), _finished(2, final=False), _started(3)]
    last = plan_delivery(history, retries)
    assert (last.lost_attempt, last.lost_is_final, last.run) == (3, True, False)


def test_only_attempts_that_started_get_a_number_and_hand_backs_do_not_count():
    retries = Retries(max_attempts=2)
    # However often a message was delivered and nak'ed before it started, nothing is on RUNS.
    assert plan_delivery([], retries).attempt == 1
    # A hand-back has its own attempt number but leaves the budget alone.
    plan = plan_delivery([_started(1), _handed_back(1)], retries)
    assert (plan.attempt, plan.counted, plan.run) == (2, 0, True)
    plan = plan_delivery([_started(1), _handed_back(1), _started(2), _finished(2, final=False)], retries)
    assert (plan.attempt, plan.counted) == (3, 1)
    assert not after_attempt("failed", plan.counted + 1, retries).retry_delay
    # A lost attempt (its runner died) counts.
    plan = plan_delivery([_started(1), _handed_back(1), _started(2)], retries)
    assert (plan.lost_attempt, plan.attempt, plan.counted, plan.lost_is_final) == (2, 3, 1, False)


def test_a_hand_back_is_read_from_its_field_and_from_the_text_of_older_events():
    retries = Retries(max_attempts=1)
    # The field decides, whatever the error text says.
    plan = plan_delivery([_started(1), _handed_back(1)], retries)
    assert (plan.attempt, plan.counted) == (2, 0)
    # A `lost` with the same text but no field, as a runner wrote it before the field existed.
    legacy = msgspec.json.decode(
        b'{"type": "run.finished", "run_id": "r", "job_id": "j", "slot": "2026-01-01T00:00:00Z", '
        b'"attempt": 1, "status": "lost", "final": false, "error": "' + HANDED_BACK.encode() + b'"}',
        type=RunFinished,
    )
    assert not legacy.handed_back
    plan = plan_delivery([_started(1), legacy], retries)
    assert (plan.attempt, plan.counted) == (2, 0)
    # A `lost` whose runner died counts, whatever its text.
    died = _finished(1, final=False, status="lost", error="attempt 1 started on runner a, which stopped")
    assert plan_delivery([_started(1), died], retries).counted == 1


@pytest.mark.parametrize(
    ("status", "counted", "final", "delay"),
    [
        ("succeeded", 1, True, None),
        ("cancelled", 1, True, None),
        ("failed", 1, False, 10.0),
        ("timed_out", 2, False, 20.0),
        ("failed", 3, True, None),
    ],
)
def test_after_attempt(status, counted, final, delay):
    result = after_attempt(status, counted, Retries(max_attempts=3, backoff=10, multiplier=2))
    assert (result.final, result.retry_delay) == (final, delay)


async def _settled(bus: Bus, settings: Settings) -> bool:
    info = await bus.js.consumer_info(
        settings.names.dispatch_stream, settings.names.runner_consumer("default")
    )
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_failing_run_is_retried_with_backoff_until_it_succeeds(settings: Settings, tmp_path):
    bus = await Bus.open(settings, "test")
    counter = tmp_path / "count"
    command = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        "echo try $n; [ $n -ge 2 ]"
    )
    try:
        async with running(settings):
            flaky = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command=command),
                retries=Retries(max_attempts=3, backoff=0.3),
            )
            doomed = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command="exit 1"),
                retries=Retries(max_attempts=2, backoff=0.1),
            )
            result = await final_outcome(bus.js, settings, flaky.run_id)
            assert (result.status, result.attempt) == ("succeeded", 2)
            events = await run_events(bus.js, settings, flaky.run_id)
            first = next(e for e in events if isinstance(e, RunFinished))
            assert (first.status, first.attempt, first.final) == ("failed", 1, False)
            assert first.retry_at is not None
            started = [e for e in events if isinstance(e, RunStarted)]
            assert [s.attempt for s in started] == [1, 2]
            # The backoff held: attempt 2 started no earlier than the retry time (clock skew aside).
            assert (started[1].occurred_at - first.occurred_at).total_seconds() >= 0.25
            assert await output_of(bus.js, settings, flaky.run_id, attempt=2) == b"try 2\n"

            result = await final_outcome(bus.js, settings, doomed.run_id)
            assert (result.status, result.attempt, result.final) == ("failed", 2, True)
            finishes = [
                e for e in await run_events(bus.js, settings, doomed.run_id) if isinstance(e, RunFinished)
            ]
            assert [(f.attempt, f.final) for f in finishes] == [(1, False), (2, True)]
    finally:
        await bus.close()


async def test_a_redelivered_finished_run_is_acked_not_run_again(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command="echo once"))
            await final_outcome(bus.js, settings, d.run_id)
            # The same run dispatched again (a different message id defeats the dedupe window).
            await bus.js.publish(
                settings.names.dispatch_subject("default", d.job_id), encode(d), headers={MSG_ID: "again"}
            )
            await wait_for(lambda: _settled(bus, settings), what="dispatch consumer settled")
            events = await run_events(bus.js, settings, d.run_id)
            assert len([e for e in events if isinstance(e, RunStarted)]) == 1
            assert await output_of(bus.js, settings, d.run_id) == b"once\n"
    finally:
        await bus.close()


async def test_a_first_start_whose_puback_was_lost_is_recognised_as_this_runners_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """A first delivery stores run.started only as the run's first event, without reading
    the run first. When that store went through but its answer did not come back, the runner
    finds its own run.started on reading: it runs attempt 1, not a `lost` attempt and a 2nd."""
    publish_first = EventPublisher.publish_first
    tries: list[str] = []

    async def answer_lost(self: EventPublisher, subject: str, event: Event, msg_id: str) -> bool:
        tries.append(msg_id)
        assert await publish_first(self, subject, event, msg_id)
        return False

    monkeypatch.setattr(EventPublisher, "publish_first", answer_lost)
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command="echo once"))
            outcome = await final_outcome(bus.js, settings, d.run_id)
        events = await run_events(bus.js, settings, d.run_id)
    finally:
        await bus.close()
    assert tries == [f"{d.run_id}:1:started"]
    assert (outcome.status, outcome.attempt) == ("succeeded", 1)
    assert [(type(e).__name__, e.attempt) for e in events] == [("RunStarted", 1), ("RunFinished", 1)]


async def test_malformed_and_unknown_dispatches_are_terminated_without_blocking(settings: Settings):
    bus = await Bus.open(settings, "test")
    n = settings.names
    try:
        async with running(settings):
            await bus.js.publish(n.dispatch_subject("default", "junk"), b"\x00not json")
            slot = new_slot()
            unknown = {
                "type": "run.dispatched",
                "run_id": "run-unknown",
                "job_id": "job-unknown",
                "slot": slot.isoformat(),
                "pool": "default",
                "spec": {"name": "x", "schedule": "@daily", "executor": {"type": "ssh", "host": "h"}},
            }
            await bus.js.publish(n.dispatch_subject("default", "job-unknown"), msgspec.json.encode(unknown))
            after = await dispatch(bus.js, settings, ShellExecutor(command="echo still working"))
            result = await final_outcome(bus.js, settings, after.run_id)
            assert result.status == "succeeded"
            failed = await final_outcome(bus.js, settings, "run-unknown")
            assert failed.status == "failed"
            assert "cannot run the dispatch" in failed.error
            assert "ssh" in failed.error
            await wait_for(lambda: _settled(bus, settings), what="dispatch consumer settled")
    finally:
        await bus.close()


async def test_hand_backs_and_naks_before_a_start_do_not_use_up_attempts(settings: Settings, tmp_path):
    """A run handed back on a stop, and one queued (nak'ed) behind it, keep their retry budget."""
    bus = await Bus.open(settings, "test")
    counter = tmp_path / "count"
    queued_ran = tmp_path / "queued-ran"
    # Execution 1 runs until the runner stops (and is handed back), 2 fails, 3 succeeds.
    command = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        "echo try $n; if [ $n -eq 1 ]; then sleep 60; elif [ $n -eq 2 ]; then exit 1; fi"
    )
    try:
        async with running(settings, grace_period=0.5):
            d = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command=command),
                overlap="queue",
                retries=Retries(max_attempts=2, backoff=0.1),
            )
            await wait_for(lambda: _has_started(bus, settings, d.run_id), what="first attempt started")
            queued = await dispatch(
                bus.js,
                settings,
                ShellExecutor(command=f"touch {queued_ran}"),
                job_id=d.job_id,
                overlap="queue",
            )
            kv = await bus.js.key_value(settings.names.running_bucket)

            async def is_queued() -> bool:
                entry = await kv.get(d.job_id)
                record = msgspec.json.decode(entry.value or b"{}", type=RunningRecord)
                return record.queued == queued.run_id

            await wait_for(is_queued, what="second run queued")
        # The stop handed back the running attempt and the queued delivery; another runner
        # takes both up.
        async with running(settings, instance_id="runner-next"):
            result = await final_outcome(bus.js, settings, d.run_id, timeout=30)
            finishes = [e for e in await run_events(bus.js, settings, d.run_id) if isinstance(e, RunFinished)]
            assert [(f.attempt, f.status, f.final) for f in finishes] == [
                (1, "lost", False),
                (2, "failed", False),
                (3, "succeeded", True),
            ]
            assert result.runner == "runner-next"
            other = await final_outcome(bus.js, settings, queued.run_id, timeout=30)
            assert (other.status, other.attempt) == ("succeeded", 1)
            started = [
                e for e in await run_events(bus.js, settings, queued.run_id) if isinstance(e, RunStarted)
            ]
            assert [s.attempt for s in started] == [1]
            assert queued_ran.exists()
    finally:
        await bus.close()


async def _has_started(bus: Bus, settings: Settings, run_id: str) -> bool:
    return any(isinstance(e, RunStarted) for e in await run_events(bus.js, settings, run_id))
