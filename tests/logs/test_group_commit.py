"""SQLite's group commit: batches of several feeds that wait for the writer go in one
transaction, a run's events from DISPATCH and RUNS become one row, and a batch that cannot be
written fails alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.poison import is_poison
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.events import (
    JobPaused,
    JobUpdated,
    LogChunk,
    RunDispatched,
    RunFinished,
    decode_run_event,
    run_id_for,
)
from cronbus.shared.history.schema import jobs, runs
from cronbus.shared.history.store import create_engine, migrate
from tests.logs.harness import T0, job_created, positions, rows, run_events, spec


async def _sqlite(tmp_path: Path) -> tuple[AsyncEngine, list[int]]:
    """A migrated SQLite history and the list its commits are counted in."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    await migrate(engine)
    commits: list[int] = []
    event.listen(engine.sync_engine, "commit", lambda _conn: commits.append(1))
    return engine, commits


async def test_batches_waiting_together_are_one_transaction_and_a_run_is_one_row(tmp_path: Path):
    engine, commits = await _sqlite(tmp_path)
    writer = HistoryWriter(engine)
    dispatched, started, _, finished = run_events("job-g", T0, attempts=1)
    try:
        # The first takes the writer at once; the other two wait for it and go together.
        applied = await asyncio.gather(
            writer.apply("logs-jobs", [Sequenced(1, job_created("job-g"))], 1),
            writer.apply("logs-dispatch", [Sequenced(1, dispatched)], 1),
            writer.apply("logs-runs", [Sequenced(1, started), Sequenced(2, finished)], 2),
        )
        [run] = await rows(engine, runs)
        stored = await positions(engine)
    finally:
        await engine.dispose()
    assert applied == [1, 1, 2]
    assert len(commits) == 2
    assert (run["id"], run["status"], run["pool"], run["runner"]) == (
        run_id_for("job-g", T0), "succeeded", "default", "runner-1",
    )  # fmt: skip
    assert run["dispatched_at"] is not None and run["finished_at"] is not None
    assert stored == {"logs-jobs": 1, "logs-dispatch": 1, "logs-runs": 2}


async def test_a_batch_that_cannot_be_written_fails_alone_and_the_rest_of_its_group_is_written(
    tmp_path: Path,
):
    engine, commits = await _sqlite(tmp_path)
    writer = HistoryWriter(engine)
    good = [e for e in run_events("job-ok", T0, attempts=1) if not isinstance(e, LogChunk)]
    [_, _, finished] = [e for e in run_events("job-bad", T0, attempts=1) if not isinstance(e, LogChunk)][:3]
    assert isinstance(finished, RunFinished)
    # An exit code no INTEGER column holds: the database refuses the batch that carries it.
    huge: dict[str, Any] = msgspec.to_builtins(finished) | {"exit_code": 10**30}
    bad = decode_run_event(msgspec.json.encode(huge))
    try:
        outcomes = await asyncio.gather(
            writer.apply("logs-jobs", [Sequenced(1, job_created("job-ok"))], 1),
            writer.apply("logs-runs", [Sequenced(1, bad)], 1),
            writer.apply("logs-dispatch", [Sequenced(1, good[0])], 1),
            return_exceptions=True,
        )
        found = {r["id"]: r for r in await rows(engine, runs)}
        stored = await positions(engine)
    finally:
        await engine.dispose()
    assert outcomes[0] == 1 and outcomes[2] == 1
    assert isinstance(outcomes[1], Exception) and is_poison(outcomes[1])
    assert isinstance(good[0], RunDispatched)
    assert list(found) == [good[0].run_id] and found[good[0].run_id]["status"] == "dispatched"
    assert stored == {"logs-jobs": 1, "logs-dispatch": 1}
    # The first alone, the group of two (rolled back), then its good batch alone.
    assert len(commits) == 2


async def test_job_events_apply_in_stream_order_with_creations_together(tmp_path: Path):
    """Consecutive job.created go in one statement; an update between them still lands after
    the creation it follows, and a creation delivered again never rolls a job back."""
    engine, _ = await _sqlite(tmp_path)
    writer = HistoryWriter(engine)
    renamed = JobUpdated(job_id="a", revision=2, spec=spec("renamed"), occurred_at=T0)
    batch = [job_created("a"), job_created("b"), renamed, job_created("c"), JobPaused(job_id="b", revision=2)]
    try:
        await writer.apply("logs-jobs", [Sequenced(i, e) for i, e in enumerate(batch, start=1)], len(batch))
        # Another consumer position, so the stale creation is not skipped by the position.
        await writer.apply("logs-jobs-again", [Sequenced(1, job_created("a"))], 1)
        found = {j["id"]: (j["name"], j["revision"], j["paused"]) for j in await rows(engine, jobs)}
    finally:
        await engine.dispose()
    assert found == {"a": ("renamed", 2, False), "b": ("backup", 2, True), "c": ("backup", 1, False)}
