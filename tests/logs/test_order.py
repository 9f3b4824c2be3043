"""Order independence: however a run's events interleave, the projected run is the same."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.bus import Bus
from cronbus.shared.events import LogChunk, RunDispatched, run_id_for
from cronbus.shared.history.schema import run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, publish, rows, run_events, running_logs
from tests.support import wait_for


def _without_ids(row: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k not in ("id", "run_id", "slot")}


async def _every_order(
    history: AsyncEngine, job_id: str, keep: int
) -> tuple[dict[str, Any], set[tuple[Any, ...]]]:
    """Apply the first `keep` of a two-attempt run's events (no output) in every order, one
    run per order and one transaction per event; the one row they all projected (times made
    relative to the slot) and the set of distinct attempt rows."""
    writer = HistoryWriter(history)
    orders = list(itertools.permutations(range(keep)))
    for n, order in enumerate(orders):
        slot = T0 + timedelta(minutes=n)
        # The runner that started an attempt is the one shown, whatever run.finished says.
        events = run_events(job_id, slot, attempts=2, finisher="a-stranger")
        events = [e for e in events if not isinstance(e, LogChunk)][:keep]
        for seq, index in enumerate(order, start=1):
            await writer.apply(f"{job_id}-{n}", [Sequenced(seq, events[index])], seq)
    projected = [r for r in await rows(history, runs) if r["job_id"] == job_id]
    assert len(projected) == len(orders)
    distinct = []
    for row in projected:
        relative = {
            k: (v - row["slot"] if k.endswith("_at") and v is not None else v)
            for k, v in _without_ids(row).items()
        }
        if relative not in distinct:
            distinct.append(relative)
    assert len(distinct) == 1, distinct
    ids = {r["id"] for r in projected}
    attempts = {
        (a["attempt"], a["status"], a["runner"], a["exit_code"], a["error"], a["duration_ms"])
        for a in await rows(history, run_attempts)
        if a["run_id"] in ids
    }
    return distinct[0], attempts


async def test_every_order_of_a_finished_runs_events_projects_the_same_row(history: AsyncEngine):
    """All 120 orders of dispatched, started 1, failed-retrying 1, started 2, succeeded 2."""
    row, attempts = await _every_order(history, "job-done", keep=5)
    assert row == {
        "job_id": "job-done", "attempt": 2, "status": "succeeded", "trigger": "schedule", "pool": "default",
        "runner": "runner-2", "dispatched_at": timedelta(milliseconds=5), "started_at": timedelta(seconds=20),
        "finished_at": timedelta(seconds=21), "exit_code": 0, "duration_ms": 2000.0, "lateness_ms": 5.0,
        "error": None, "cpu_ms": 3.0, "peak_rss_bytes": 4096, "output_bytes": 10, "truncated": False,
    }  # fmt: skip
    assert attempts == {
        (1, "failed", "runner-1", 1, "exit status 1", 1000.0),
        (2, "succeeded", "runner-2", 0, None, 2000.0),
    }


async def test_every_order_of_a_retried_runs_events_shows_the_new_attempt(history: AsyncEngine):
    """All 24 orders of dispatched, started 1, failed-retrying 1, started 2: attempt 2 is running,
    and nothing of attempt 1's end shows on the run."""
    row, attempts = await _every_order(history, "job-retry", keep=4)
    assert row == {
        "job_id": "job-retry", "attempt": 2, "status": "running", "trigger": "schedule", "pool": "default",
        "runner": "runner-2", "dispatched_at": timedelta(milliseconds=5), "started_at": timedelta(seconds=20),
        "finished_at": None, "exit_code": None, "duration_ms": None, "lateness_ms": 5.0,
        "error": None, "cpu_ms": None, "peak_rss_bytes": None, "output_bytes": 0, "truncated": False,
    }  # fmt: skip
    assert attempts == {
        (1, "failed", "runner-1", 1, "exit status 1", 1000.0),
        (2, "running", "runner-2", None, None, None),
    }


async def test_dispatch_projected_after_the_run_finished_keeps_the_outcome(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    """DISPATCH and RUNS are separate consumers: the runner's events can land first."""
    dispatched, *rest = (e for e in run_events("job-late", T0, attempts=1) if not isinstance(e, LogChunk))
    run_id = run_id_for("job-late", T0)

    async def run_row() -> dict[str, object] | None:
        found = [r for r in await rows(history, runs) if r["id"] == run_id]
        return found[0] if found else None

    async with running_logs(history_settings):
        await publish(bus, history_settings, *rest)
        row = await wait_for(run_row, timeout=15, what="run projected")
        await wait_for(lambda: _status(run_row, "succeeded"), timeout=15, what="succeeded")
        assert row["dispatched_at"] is None
        await publish(bus, history_settings, dispatched)
        row = await wait_for(lambda: _dispatched(run_row), timeout=15, what="dispatch applied")
    assert row["status"] == "succeeded"
    assert row["runner"] == "runner-1"
    assert row["lateness_ms"] == 5.0


async def _status(fetch, status: str) -> bool:  # type: ignore[no-untyped-def]
    row = await fetch()
    return bool(row and row["status"] == status)


async def _dispatched(fetch):  # type: ignore[no-untyped-def]
    row = await fetch()
    return row if row and row["dispatched_at"] is not None else None


async def test_a_dispatch_published_on_a_later_try_does_not_outrank_the_runs_outcome(history: AsyncEngine):
    """The scheduler retries a publish the DISPATCH leader did not confirm (a node died) and
    has counted those tries in `run.dispatched`'s `attempt`. Attempts are the runner's: the
    run that succeeded on attempt 1 shows `succeeded`, whichever event is projected first."""
    writer = HistoryWriter(history)
    for n, dispatch_first in enumerate((True, False)):
        slot = T0 + timedelta(minutes=n)
        dispatched, started, _, finished = run_events("job-try", slot, attempts=1)
        assert isinstance(dispatched, RunDispatched)
        dispatched.attempt = 3
        order = [dispatched, started, finished] if dispatch_first else [started, finished, dispatched]
        for seq, event in enumerate(order, start=1):
            await writer.apply(f"try-{n}", [Sequenced(seq, event)], seq)
        [row] = [r for r in await rows(history, runs) if r["id"] == run_id_for("job-try", slot)]
        assert (row["status"], row["attempt"]) == ("succeeded", 1), dispatch_first
        assert row["dispatched_at"] is not None
