"""Folding a batch's run events per row before writing changes nothing: property test on SQLite.

The writer merges the rows a batch writes for one run (or one attempt) in Python, with the
upserts' rules (precedence.merge_run, merge_attempt), and writes the merged row once. For
any events, whatever was written before, that must leave exactly the rows that writing the
events one at a time leaves.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.events import RunDispatched, RunEvents, RunFinished, RunStarted
from cronbus.shared.history.schema import run_attempts, runs
from cronbus.shared.history.store import create_engine, migrate
from tests.logs.harness import T0, spec

RUN_IDS = ("a", "b")
times = st.integers(0, 4).map(lambda s: T0 + timedelta(seconds=s))
runners = st.sampled_from(["r1", "r2", ""])
common = {"run": st.sampled_from(RUN_IDS), "attempt": st.integers(1, 3), "at": times}

dispatched = st.fixed_dictionaries(
    {
        **common,
        "kind": st.just("dispatched"),
        "pool": st.sampled_from(["default", "gpu"]),
        "trigger": st.sampled_from(["schedule", "manual"]),
        "dispatched_at": times,
        "lateness_ms": st.sampled_from([0.0, 7.5]),
    }
)
started = st.fixed_dictionaries({**common, "kind": st.just("started"), "runner": runners})
finished = st.fixed_dictionaries(
    {
        **common,
        "kind": st.just("finished"),
        "runner": runners,
        "status": st.sampled_from(["succeeded", "failed", "lost"]),
        "final": st.booleans(),
        "exit_code": st.sampled_from([None, 0, 1]),
        "duration_ms": st.sampled_from([0.0, 12.5]),
        "error": st.sampled_from(["", "boom"]),
        "cpu_ms": st.sampled_from([None, 3.0]),
        "peak_rss_bytes": st.sampled_from([None, 4096]),
        "output_bytes": st.integers(0, 3),
        "truncated": st.booleans(),
    }
)
events = st.lists(st.one_of(dispatched, started, finished), min_size=1, max_size=10)


def build(spec_: dict[str, Any], prefix: str) -> RunEvents:
    """The event a drawn description stands for, for run `prefix` + its run letter."""
    d = dict(spec_)
    kind = d.pop("kind")
    ids = {"run_id": prefix + d.pop("run"), "job_id": "job", "slot": T0, "occurred_at": d.pop("at")}
    if kind == "dispatched":
        return RunDispatched(**ids, **d, spec=spec())
    if kind == "started":
        return RunStarted(**ids, **d)
    return RunFinished(**ids, **d)


async def _engine(path: Path) -> AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    return engine


async def _rows(engine: AsyncEngine, prefix: str) -> dict[str, list[dict[str, Any]]]:
    async with engine.connect() as conn:
        got = {}
        for table, key in ((runs, runs.c.id), (run_attempts, run_attempts.c.run_id)):
            query = select(table).where(key.like(prefix + "%")).order_by(*table.primary_key.columns)
            got[table.name] = [dict(r._mapping) for r in await conn.execute(query)]
        return got


def test_a_folded_batch_writes_what_its_events_write_one_by_one(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    one_by_one = loop.run_until_complete(_engine(tmp_path / "one.db"))
    folded = loop.run_until_complete(_engine(tmp_path / "folded.db"))
    writers = HistoryWriter(one_by_one), HistoryWriter(folded)
    prefixes: Iterator[str] = (f"{n}-" for n in itertools.count())

    async def write(before: list[RunEvents], batch: list[RunEvents]) -> None:
        # What was written before the batch: the same rows in both databases.
        for writer in writers:
            for event in before:
                await writer.apply("test", [Sequenced(1, event)], 0)
        for event in batch:
            await writers[0].apply("test", [Sequenced(1, event)], 0)
        await writers[1].apply("test", [Sequenced(i, e) for i, e in enumerate(batch, start=1)], 0)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(before=st.lists(st.one_of(dispatched, started, finished), max_size=3), batch=events)
    def check(before: list[dict[str, Any]], batch: list[dict[str, Any]]) -> None:
        prefix = next(prefixes)
        loop.run_until_complete(write([build(e, prefix) for e in before], [build(e, prefix) for e in batch]))
        expected = loop.run_until_complete(_rows(one_by_one, prefix))
        assert loop.run_until_complete(_rows(folded, prefix)) == expected

    try:
        check()
    finally:
        for engine in (one_by_one, folded):
            loop.run_until_complete(engine.dispose())
        loop.close()
