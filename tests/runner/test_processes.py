"""Runner processes that die or stop mid-run: the run is recorded honestly and finishes once."""

from __future__ import annotations

import signal
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from cronbus.shared.bus import Bus
from cronbus.shared.events import Retries, RunFinished, RunStarted, ShellExecutor
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, kill_process, output_of, run_events, spawn_runner
from tests.support import wait_for

pytestmark = pytest.mark.slow


async def _start_two(settings: Settings, tmp_path: Path, bus: Bus) -> dict[str, subprocess.Popen[bytes]]:
    runners = {
        name: spawn_runner(settings, name, tmp_path / f"{name}.log") for name in ("runner-a", "runner-b")
    }
    kv = await bus.js.key_value(settings.names.runners_bucket)

    async def both_present() -> bool:
        try:
            keys = await kv.keys()
        except Exception:
            return False
        return set(runners) <= set(keys)

    await wait_for(both_present, timeout=20, what="both runners present")
    return runners


async def _first_start(bus: Bus, settings: Settings, run_id: str) -> RunStarted:
    async def started() -> RunStarted | None:
        for event in await run_events(bus.js, settings, run_id):
            if isinstance(event, RunStarted):
                return event
        return None

    event = await wait_for(started, timeout=15, what="run started")
    assert isinstance(event, RunStarted)
    return event


async def test_a_run_whose_runner_is_killed_is_recorded_lost_and_finishes_once_elsewhere(
    settings: Settings, tmp_path: Path
):
    settings = replace(settings, ack_wait=2.0, heartbeat=0.5)
    bus = await Bus.open(settings, "test")
    runners: dict[str, subprocess.Popen[bytes]] = {}
    try:
        runners = await _start_two(settings, tmp_path, bus)
        d = await dispatch(
            bus.js,
            settings,
            ShellExecutor(command="echo start; sleep 2; echo done"),
            retries=Retries(max_attempts=2, backoff=0.1),
        )
        first = await _first_start(bus, settings, d.run_id)
        victim = runners[first.runner]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)

        result = await final_outcome(bus.js, settings, d.run_id, timeout=30)
        assert (result.status, result.attempt) == ("succeeded", 2)
        assert result.runner != first.runner
        events = await run_events(bus.js, settings, d.run_id)
        summary = [
            (type(e).__name__, e.attempt, getattr(e, "status", ""), getattr(e, "final", None)) for e in events
        ]
        assert summary == [
            ("RunStarted", 1, "", None),
            ("RunFinished", 1, "lost", False),
            ("RunStarted", 2, "", None),
            ("RunFinished", 2, "succeeded", True),
        ]
        lost = events[1]
        assert isinstance(lost, RunFinished)
        assert first.runner in lost.error
        assert lost.runner == first.runner
        assert await output_of(bus.js, settings, d.run_id, attempt=2) == b"start\ndone\n"
    finally:
        for proc in runners.values():
            kill_process(proc)
        await bus.close()


async def test_a_stopping_runner_hands_back_what_does_not_finish_in_its_grace_period(
    settings: Settings, tmp_path: Path
):
    settings = replace(settings, ack_wait=2.0, heartbeat=0.5, grace_period=0.5)
    bus = await Bus.open(settings, "test")
    marker = tmp_path / "first-attempt"
    runners: dict[str, subprocess.Popen[bytes]] = {}
    try:
        runners = await _start_two(settings, tmp_path, bus)
        d = await dispatch(
            bus.js,
            settings,
            ShellExecutor(command=f"if [ -e {marker} ]; then echo second; else touch {marker}; sleep 60; fi"),
        )
        first = await _first_start(bus, settings, d.run_id)
        stopping = runners[first.runner]
        stopping.send_signal(signal.SIGTERM)
        assert stopping.wait(timeout=20) == 0

        # Handed back, not failed: the only attempt allowed is run again by the other runner.
        result = await final_outcome(bus.js, settings, d.run_id, timeout=20)
        assert (result.status, result.attempt) == ("succeeded", 2)
        assert result.runner != first.runner
        finishes = [e for e in await run_events(bus.js, settings, d.run_id) if isinstance(e, RunFinished)]
        assert [(f.status, f.final) for f in finishes] == [("lost", False), ("succeeded", True)]
        assert "handed back" in finishes[0].error
        assert finishes[0].handed_back
        assert not finishes[1].handed_back
        assert await output_of(bus.js, settings, d.run_id, attempt=2) == b"second\n"
        kv = await bus.js.key_value(settings.names.runners_bucket)
        assert first.runner not in await kv.keys()
    finally:
        for proc in runners.values():
            kill_process(proc)
        await bus.close()


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def test_a_runner_killed_with_sigkill_leaves_no_process_of_its_runs(settings: Settings, tmp_path: Path):
    bus = await Bus.open(settings, "test")
    marker = f"1000.{uuid.uuid4().int % 10**6}"
    runner = spawn_runner(settings, "runner-doomed", tmp_path / "runner.log")
    try:
        d = await dispatch(
            bus.js,
            settings,
            # The command's children, and a grandchild started by a subshell that exits at once.
            ShellExecutor(
                command=f"sleep {marker} & sleep {marker} & (sleep {marker} &); echo started; wait"
            ),
        )
        await _first_start(bus, settings, d.run_id)
        await wait_for(lambda: len(_processes_with(marker)) >= 3, timeout=15, what="the run's processes")
        reapers = [p for p in psutil.Process(runner.pid).children() if "cronbus.runner.reaper" in p.cmdline()]
        assert len(reapers) == 1

        runner.send_signal(signal.SIGKILL)
        runner.wait(timeout=10)
        await wait_for(lambda: _processes_with(marker) == [], timeout=8, what="the run's processes ended")
        # The reaper has done its work and is gone too.
        await wait_for(lambda: not reapers[0].is_running(), timeout=8, what="the reaper exited")
    finally:
        kill_process(runner)
        for proc in _processes_with(marker):
            proc.kill()
        await bus.close()


async def test_a_runner_that_stops_normally_leaves_no_reaper_behind(settings: Settings, tmp_path: Path):
    runner = spawn_runner(settings, "runner-stops", tmp_path / "runner.log")
    try:

        def reapers() -> list[psutil.Process]:
            try:
                children = psutil.Process(runner.pid).children()
            except psutil.Error:
                return []
            return [p for p in children if "cronbus.runner.reaper" in " ".join(p.cmdline())]

        reaper = (await wait_for(reapers, timeout=15, what="the reaper started"))[0]
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=20) == 0
        assert not reaper.is_running()
    finally:
        kill_process(runner)
