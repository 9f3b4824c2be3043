"""`cronbus check`: SQL made to disagree with the streams is reported, `--repair` fixes it."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs import consistency, precedence
from cronbus.logs.consistency import compare
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.bus import Bus
from cronbus.shared.cli import main
from cronbus.shared.events import Event, JobUpdated, LogChunk, RunStarted, run_id_for
from cronbus.shared.history.schema import jobs, run_attempts, runs
from cronbus.shared.settings import Settings
from tests.logs.harness import (
    T0,
    job_created,
    publish,
    rows,
    run_events,
    running_logs,
    snapshot,
    spec,
    wait_positions,
)
from tests.support import wait_for


def _history() -> list[Event]:
    events: list[Event] = [job_created(f"job-{j}") for j in range(3)]
    events.append(JobUpdated(job_id="job-0", revision=2, spec=spec("renamed"), occurred_at=T0))
    for r in range(6):
        events += [
            e for e in run_events(f"job-{r % 3}", T0 + timedelta(minutes=r)) if not isinstance(e, LogChunk)
        ]
    return events


async def _projected(history_settings: Settings, bus: Bus, history: AsyncEngine) -> None:
    n = history_settings.names
    want = {
        "logs-jobs": (await bus.js.stream_info(n.jobs_stream)).state.last_seq,
        "logs-runs": (await bus.js.stream_info(n.runs_stream)).state.last_seq,
        "logs-dispatch": (await bus.js.stream_info(n.dispatch_stream)).state.last_seq,
    }

    async with running_logs(history_settings):
        await wait_positions(history, want, timeout=20)


def _cli(settings: Settings, *extra: str) -> list[str]:
    return [
        "check",
        "--nats-url", settings.nats_url,
        "--database-url", settings.database_url,
        "--prefix", settings.prefix,
        *extra,
    ]  # fmt: skip


async def test_check_reports_differences_and_repair_fixes_them(
    history_settings: Settings, bus: Bus, history: AsyncEngine, capsys: pytest.CaptureFixture[str]
):
    s = history_settings
    await publish(bus, s, *_history())
    await _projected(s, bus, history)
    before = await snapshot(history)

    report = await compare(s.nats_url, s.database_url, s.prefix)
    assert report.ok, report.table()
    assert report.compared == {"jobs": 3, "runs": 6}
    assert report.streams["runs"] > 0

    # Make SQL disagree: a job gone, a job at an older revision, a run gone, a run (and its
    # attempts) back at `dispatched`, a run's exit code changed.
    gone_run = run_id_for("job-1", T0 + timedelta(minutes=1))
    stuck_run = run_id_for("job-2", T0 + timedelta(minutes=2))
    changed_run = run_id_for("job-0", T0 + timedelta(minutes=3))
    async with history.begin() as conn:
        await conn.execute(delete(jobs).where(jobs.c.id == "job-1"))
        await conn.execute(update(jobs).where(jobs.c.id == "job-0").values(revision=1, name="backup"))
        await conn.execute(delete(runs).where(runs.c.id == gone_run))
        await conn.execute(delete(run_attempts).where(run_attempts.c.run_id == gone_run))
        await conn.execute(
            update(runs)
            .where(runs.c.id == stuck_run)
            .values(status="dispatched", attempt=1, finished_at=None)
        )
        await conn.execute(delete(run_attempts).where(run_attempts.c.run_id == stuck_run))
        await conn.execute(update(runs).where(runs.c.id == changed_run).values(exit_code=99))

    report = await compare(s.nats_url, s.database_url, s.prefix)
    assert not report.ok
    assert report.counts == {
        "job_revision": 1,
        "job_missing": 1,
        "run_missing": 1,
        "run_status": 1,
        "run_differs": 1,
    }
    found = {(d.kind, d.key) for d in report.differences}
    assert found == {
        ("job_revision", "job-0"),
        ("job_missing", "job-1"),
        ("run_missing", gone_run),
        ("run_status", stuck_run),
        ("run_differs", changed_run),
    }
    stuck = next(d for d in report.differences if d.key == stuck_run)
    assert (stuck.streams, stuck.sql) == ("succeeded (attempt 2)", "dispatched (attempt 1)")

    # The command: exit 1 and a JSON report naming the differences.
    code = await asyncio.to_thread(main, _cli(s, "--json"))
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["ok"] is False
    assert out["total"] == 5
    assert {d["key"] for d in out["differences"]} == {k for _, k in found}

    # --repair rewrites the rows from the streams; the check then finds SQL equal to them.
    code = await asyncio.to_thread(main, _cli(s, "--repair"))
    text = capsys.readouterr().out
    assert code == 0, text
    assert "SQL agrees with the streams." in text
    assert "repaired 5 row(s)" in text
    assert await snapshot(history) == before
    code = await asyncio.to_thread(main, _cli(s))
    assert code == 0
    assert "SQL agrees with the streams." in capsys.readouterr().out


async def test_a_run_sql_has_seen_further_than_the_snapshot_is_not_a_difference(
    history_settings: Settings, bus: Bus, history: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    """An event published and projected after the check read RUNS puts SQL ahead of the
    snapshot for good reason; SQL ahead without such an event is a difference."""
    s = history_settings
    events = [e for e in run_events("job-a", T0, attempts=1) if not isinstance(e, LogChunk)]
    await publish(bus, s, job_created("job-a"), *events)
    await _projected(s, bus, history)
    run_id = run_id_for("job-a", T0)
    writer = HistoryWriter(history)
    read = consistency._read

    async def read_then_a_new_attempt_starts(js, feed, last):  # type: ignore[no-untyped-def]
        async for batch in read(js, feed, last):
            yield batch
        if feed.kind == "runs":
            later = RunStarted(run_id=run_id, job_id="job-a", slot=T0, attempt=2, runner="r9")
            [seq] = await publish(bus, s, later)
            await writer.apply("logs-runs", [Sequenced(seq, later)], seq)

    monkeypatch.setattr(consistency, "_read", read_then_a_new_attempt_starts)
    report = await compare(s.nats_url, s.database_url, s.prefix)
    assert report.ok, report.table()
    [row] = await rows(history, runs)
    assert (row["status"], row["attempt"]) == ("running", 2)

    # The same row with nothing in RUNS after the snapshot to explain it: a difference.
    monkeypatch.setattr(consistency, "_read", read)
    async with history.begin() as conn:
        await conn.execute(update(runs).where(runs.c.id == run_id).values(attempt=5))
    report = await compare(s.nats_url, s.database_url, s.prefix)
    assert report.counts == {"run_status": 1}, report.table()


async def test_check_cannot_reach_nats_exits_2(settings: Settings, capsys: pytest.CaptureFixture[str]):
    argv = _cli(settings)
    argv[argv.index("--nats-url") + 1] = "nats://127.0.0.1:1"
    code = await asyncio.to_thread(main, argv)
    assert code == 2
    assert "cronbus check:" in capsys.readouterr().err


async def test_the_check_does_not_share_a_wrong_precedence_rule_with_the_projection(
    history_settings: Settings, bus: Bus, history: AsyncEngine, monkeypatch: pytest.MonkeyPatch
):
    """RUNS decides a run's status whenever it has events for it. With the rule that let a
    dispatch published on a later try out-rank the run's outcome (restored here), SQL and
    a projection of the streams by the same code agree with each other, and the check still
    reports the run, as its RUNS events say."""
    s = history_settings
    monkeypatch.setattr(precedence, "DISPATCH_ATTEMPT", 3)
    events = [e for e in run_events("job-a", T0, attempts=1) if not isinstance(e, LogChunk)]
    await publish(bus, s, job_created("job-a"), *events)
    await _projected(s, bus, history)
    [row] = await rows(history, runs)
    assert (row["status"], row["attempt"]) == ("dispatched", 3)

    report = await compare(s.nats_url, s.database_url, s.prefix)
    assert report.counts == {"run_status": 1}, report.table()
    [diff] = report.differences
    assert (diff.streams, diff.sql) == ("succeeded (attempt 1)", "dispatched (attempt 3)")
    report = await compare(s.nats_url, s.database_url, s.prefix, repair=True)
    assert report.ok, report.table()
    [row] = await rows(history, runs)
    assert (row["status"], row["attempt"], row["exit_code"]) == ("succeeded", 1, 0)


async def test_a_fetch_rides_out_a_consumer_no_server_answers_for_yet(
    history_settings: Settings, bus: Bus, caplog: pytest.LogCaptureFixture
):
    """In a cluster the check's consumer, just created or moving off a dead node, is briefly
    served by no one: a fetch gets 503 (no responders). The check asks again instead of
    failing; here the consumer is made to appear only after the first 503 was seen."""
    n = history_settings.names
    await bus.js.publish(n.job_subject("j"), b"{}", stream=n.jobs_stream)
    name = "check-later"
    sub = await bus.js.pull_subscribe_bind(durable=name, stream=n.jobs_stream)
    caplog.set_level(logging.DEBUG, logger=consistency.__name__)
    fetching = asyncio.create_task(consistency.fetch_when_served(sub, 10, timeout=5.0, consumer=name))
    try:
        await wait_for(lambda: "no server answers for consumer check-later" in caplog.text, what="a 503")
        config = ConsumerConfig(name=name, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        await bus.js.add_consumer(n.jobs_stream, config)
        msgs = await asyncio.wait_for(fetching, timeout=10)
    finally:
        fetching.cancel()
    assert [m.subject for m in msgs] == [n.job_subject("j")]


async def test_a_fetch_nobody_ever_serves_gives_up_after_its_patience(history_settings: Settings, bus: Bus):
    n = history_settings.names
    sub = await bus.js.pull_subscribe_bind(durable="never-made", stream=n.jobs_stream)
    with pytest.raises(ServiceUnavailableError):
        await consistency.fetch_when_served(sub, 10, timeout=1.0, consumer="never-made", patience=0.5)
