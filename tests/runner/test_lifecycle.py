"""The runner across its own stop and a NATS restart."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from cronbus.shared.bus import Bus
from cronbus.shared.events import RunStarted, ShellExecutor
from cronbus.shared.natsd import EmbeddedNats
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, output_of, run_events, running
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
    from cronbus.shared.events import RunFinished

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
