"""The runner across its own stop, a NATS restart or outage, and with more than one pool."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from nats.js.api import DiscardPolicy

from cronbus.runner import runs
from cronbus.shared.bus import Bus
from cronbus.shared.events import RunFinished, RunStarted, ShellExecutor
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, hold_until, output_of, run_events, running
from tests.support import wait_for


async def _started(bus: Bus, settings: Settings, run_id: str) -> bool:
    return any(isinstance(e, RunStarted) for e in await run_events(bus.js, settings, run_id))


async def test_a_graceful_stop_lets_a_run_finish_within_the_grace_period(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, grace_period=10.0) as service:
            d = await dispatch(bus.js, settings, ShellExecutor(command="sleep 1; echo finished"))
            await wait_for(lambda: _started(bus, settings, d.run_id), what="run started")
            assert service.running == 1
        # The block's end stopped the runner; the run was not cut short.
        result = await final_outcome(bus.js, settings, d.run_id, timeout=1)
        assert (result.status, result.attempt) == ("succeeded", 1)
        assert await output_of(bus.js, settings, d.run_id) == b"finished\n"
    finally:
        await bus.close()


async def test_a_run_survives_a_nats_restart(tmp_path: Path, settings: Settings):
    first = EmbeddedNats(tmp_path / "restartable", log_file=tmp_path / "restartable.log")
    await first.start()
    settings = replace(settings, nats_url=first.url)
    second: EmbeddedNats | None = None
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command="echo before; sleep 2; echo after"))
            await wait_for(lambda: _started(bus, settings, d.run_id), what="run started")
            await first.stop()
            second = EmbeddedNats(tmp_path / "restartable", port=first.port, log_file=tmp_path / "again.log")
            await second.start()
            result = await final_outcome(bus.js, settings, d.run_id, timeout=30)
            assert (result.status, result.attempt) == ("succeeded", 1)
            assert await output_of(bus.js, settings, d.run_id) == b"before\nafter\n"
            # And it keeps taking work.
            later = await dispatch(bus.js, settings, ShellExecutor(command="echo later"))
            assert (await final_outcome(bus.js, settings, later.run_id, timeout=20)).status == "succeeded"
    finally:
        await bus.close()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_never_more_runs_in_flight_than_the_concurrency_limit(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, concurrency=2):
            runs = [await dispatch(bus.js, settings, ShellExecutor(command="sleep 0.3")) for _ in range(6)]
            for d in runs:
                await final_outcome(bus.js, settings, d.run_id)
            edges: list[tuple[datetime, int]] = []
            for d in runs:
                for e in await run_events(bus.js, settings, d.run_id):
                    if isinstance(e, RunStarted):
                        edges.append((e.occurred_at, 1))
                    elif isinstance(e, RunFinished):
                        edges.append((e.occurred_at, -1))
            in_flight = peak = 0
            for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
                in_flight += step
                peak = max(peak, in_flight)
            assert peak == 2
    finally:
        await bus.close()


async def test_a_runner_of_two_pools_takes_work_from_the_second_while_the_first_is_idle(settings: Settings):
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings, pools=("default", "gpu")):
            gpu = await dispatch(bus.js, settings, ShellExecutor(command="echo gpu"), pool="gpu")
            result = await final_outcome(bus.js, settings, gpu.run_id, timeout=20)
            assert result.status == "succeeded"
            # And the first pool is still served.
            cpu = await dispatch(bus.js, settings, ShellExecutor(command="echo cpu"))
            assert (await final_outcome(bus.js, settings, cpu.run_id, timeout=20)).status == "succeeded"
    finally:
        await bus.close()


async def test_a_run_that_completes_while_being_handed_back_reports_its_outcome(
    settings: Settings, tmp_path: Path
):
    bus = await Bus.open(settings, "test")
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    try:
        async with running(settings, grace_period=0.1):
            # The command exits at once, leaving a process that ignores SIGTERM: the runner
            # spends its 5 s SIGTERM->SIGKILL grace ending it, and the stop lands in between.
            ready = tmp_path / "ignoring-sigterm"
            command = (
                f"(trap '' TERM; touch {ready}; exec sleep {marker}) & "
                f"i=0; while [ ! -e {ready} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo done"
            )
            d = await dispatch(bus.js, settings, ShellExecutor(command=command))

            async def ending_leftovers() -> bool:
                return b"left running" in await output_of(bus.js, settings, d.run_id)

            await wait_for(ending_leftovers, what="runner ending the leftover process")
        # The stop handed back what was in flight; the command had finished successfully by then.
        events = await run_events(bus.js, settings, d.run_id)
        summary = [(type(e).__name__, e.attempt, getattr(e, "status", "")) for e in events]
        assert summary == [("RunStarted", 1, ""), ("RunFinished", 1, "succeeded")]
        assert isinstance(events[-1], RunFinished)
        assert events[-1].final
        await wait_for(lambda: _settled(bus, settings), what="dispatch acked")
    finally:
        for proc in psutil.process_iter(["cmdline"]):
            if marker in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        await bus.close()


async def test_a_finished_run_whose_outcome_cannot_be_stored_for_long_is_not_run_again(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    # Publishes give up after max(ack_wait, floor) = 2 s here instead of 10 s.
    monkeypatch.setattr(runs, "PUBLISH_PATIENCE_FLOOR", 1.0)
    settings = replace(settings, ack_wait=2.0, heartbeat=0.5)
    bus = await Bus.open(settings, "test")
    release = tmp_path / "release"
    count = tmp_path / "count"
    n = settings.names
    try:
        async with running(settings, concurrency=1):
            d = await dispatch(
                bus.js, settings, ShellExecutor(command=f"echo ran >> {count}; {hold_until(release)}")
            )
            await wait_for(lambda: _started(bus, settings, d.run_id), what="run started")
            # RUNS stops accepting events (as when JetStream is unavailable), then the run ends.
            info = await bus.js.stream_info(n.runs_stream)
            await bus.js.update_stream(
                replace(info.config, max_msgs=info.state.messages, discard=DiscardPolicy.NEW)
            )
            release.touch()

            def gave_up_once() -> bool:
                return any(r.name == runs.__name__ and r.levelno >= logging.ERROR for r in caplog.records)

            await wait_for(gave_up_once, timeout=30, what="runner failing to store the outcome")
            await bus.js.update_stream(replace(info.config, max_msgs=-1, discard=DiscardPolicy.OLD))

            result = await final_outcome(bus.js, settings, d.run_id, timeout=30)
            assert (result.status, result.attempt) == ("succeeded", 1)
            await wait_for(lambda: _settled(bus, settings), what="dispatch acked")
            events = await run_events(bus.js, settings, d.run_id)
            assert [(type(e).__name__, e.attempt) for e in events] == [("RunStarted", 1), ("RunFinished", 1)]
            assert count.read_text() == "ran\n"
    finally:
        release.touch()
        await bus.close()


async def _settled(bus: Bus, settings: Settings) -> bool:
    info = await bus.js.consumer_info(
        settings.names.dispatch_stream, settings.names.runner_consumer("default")
    )
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_run_longer_than_ack_wait_is_delivered_once(settings: Settings):
    # The heartbeats keep the delivery: without them JetStream would hand the run to the next
    # fetch after ack_wait, which would record this attempt lost and run it again.
    settings = replace(settings, ack_wait=1.0, heartbeat=0.3)
    bus = await Bus.open(settings, "test")
    try:
        async with running(settings):
            d = await dispatch(bus.js, settings, ShellExecutor(command="sleep 3"))
            result = await final_outcome(bus.js, settings, d.run_id)
            assert (result.status, result.attempt) == ("succeeded", 1)
            events = await run_events(bus.js, settings, d.run_id)
            assert [type(e).__name__ for e in events] == ["RunStarted", "RunFinished"]
    finally:
        await bus.close()
