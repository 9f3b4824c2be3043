"""Runs, their output and live tail, over rows in the real history database and the real bus."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from cronbus.api.domain import Principal, Role
from cronbus.api.history import History
from cronbus.api.jobs import Jobs
from cronbus.api.journal import Journal
from cronbus.shared.bus import MSG_ID
from cronbus.shared.events import (
    LogChunk,
    OutputPart,
    RunDispatched,
    RunFinished,
    RunStarted,
    decode_dispatch,
    encode,
    manual_run,
    scheduled_run,
    slot_ms,
)
from cronbus.shared.history.schema import log_chunks, rejected_events, run_attempts, runs
from cronbus.shared.status import RunnerPresence, SchedulerStatus, encode_status
from tests.api.conftest import Api
from tests.api.test_jobs import create
from tests.logs.harness import running_logs
from tests.runner.support import final_outcome, read_subject, run_events, running
from tests.support import wait_for

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


async def add_run(api: Api, job_id: str, slot: datetime, **values: Any) -> str:
    run_id = str(uuid.uuid4())
    row = {
        "id": run_id,
        "job_id": job_id,
        "slot": slot,
        "attempt": 1,
        "status": "succeeded",
        "trigger": "schedule",
        "pool": "default",
        "runner": "runner-1",
        "dispatched_at": slot,
        "started_at": slot + timedelta(milliseconds=20),
        "finished_at": slot + timedelta(seconds=2),
        "exit_code": 0,
        "duration_ms": 1980.0,
        "output_bytes": 0,
        "truncated": False,
    } | values
    async with api.engine.begin() as conn:
        await conn.execute(insert(runs).values(**row))
    return run_id


async def add_output(api: Api, run_id: str, attempt: int, parts: list[bytes]) -> None:
    async with api.engine.begin() as conn:
        # Inserted out of order: the API must order by seq.
        for seq in reversed(range(len(parts))):
            await conn.execute(
                insert(log_chunks).values(
                    run_id=run_id, attempt=attempt, seq=seq, stream="stdout", data=parts[seq], at=T0
                )
            )


async def test_runs_of_a_job_newest_first_paginated(api: Api) -> None:
    job = await create(api)
    await api.project_jobs()
    ids = [await add_run(api, job["id"], T0 + timedelta(hours=i)) for i in range(5)]

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await api.client.get(f"/v1/jobs/{job['id']}/runs", params=params, headers=api.auth())
        assert page.status_code == 200, page.text
        seen += page.json()["items"]
        cursor = page.json()["next"]
        if cursor is None:
            break
    assert [r["id"] for r in seen] == list(reversed(ids))
    assert seen[0]["slot"] == "2026-03-01T07:00:00Z"

    missing = await api.client.get(f"/v1/jobs/{uuid.uuid4()}/runs", headers=api.auth())
    assert missing.status_code == 404


async def test_get_run(api: Api) -> None:
    job_id = str(uuid.uuid4())
    run_id = await add_run(api, job_id, T0, attempt=2, status="failed", exit_code=3, error="exit status 3")
    async with api.engine.begin() as conn:
        for attempt in (1, 2):
            await conn.execute(
                insert(run_attempts).values(
                    run_id=run_id, attempt=attempt, status="failed", runner="runner-1", exit_code=3
                )
            )
    response = await api.client.get(f"/v1/runs/{run_id}", headers=api.auth())
    assert response.status_code == 200, response.text
    run = response.json()
    for key in ("id", "job_id", "slot", "attempt", "status", "runner", "dispatched_at", "started_at"):
        assert key in run
    assert run["id"] == run_id
    assert run["job_id"] == job_id
    assert run["slot"] == "2026-03-01T03:00:00Z"
    assert run["attempt"] == 2
    assert run["status"] == "failed"
    assert run["exit_code"] == 3
    assert run["duration_ms"] == 1980.0
    assert run["error"] == "exit status 3"
    assert [a["attempt"] for a in run["attempts"]] == [1, 2]

    assert (await api.client.get(f"/v1/runs/{uuid.uuid4()}", headers=api.auth())).status_code == 404


async def test_log_is_the_latest_attempt_in_order(api: Api) -> None:
    run_id = await add_run(api, str(uuid.uuid4()), T0, attempt=2)
    await add_output(api, run_id, 1, [b"first try\n", b"boom\n"])
    await add_output(api, run_id, 2, [b"hello ", b"w\xc3\xb6rld\n", b"done\n"])

    latest = await api.client.get(f"/v1/runs/{run_id}/log", headers=api.auth())
    assert latest.status_code == 200
    assert latest.headers["content-type"].startswith("text/plain")
    assert latest.content == "hello wörld\ndone\n".encode()

    first = await api.client.get(f"/v1/runs/{run_id}/log", params={"attempt": 1}, headers=api.auth())
    assert first.text == "first try\nboom\n"
    none = await api.client.get(f"/v1/runs/{run_id}/log", params={"attempt": 7}, headers=api.auth())
    assert none.status_code == 200
    assert none.text == ""
    assert (await api.client.get(f"/v1/runs/{uuid.uuid4()}/log", headers=api.auth())).status_code == 404


async def test_cancel_publishes_on_the_cancel_subject(lite_api: Api) -> None:
    api = lite_api
    run_id = await add_run(api, str(uuid.uuid4()), T0, status="running", finished_at=None)
    received: list[str] = []
    sub = await api.bus.nc.subscribe(api.settings.names.cancel_subject("*"))
    try:
        response = await api.client.post(f"/v1/runs/{run_id}/cancel", headers=api.auth())
        assert response.status_code == 202, response.text
        assert response.json() == {"id": run_id, "status": "cancel_requested"}
        msg = await sub.next_msg(timeout=5)
        received.append(msg.subject)
    finally:
        await sub.unsubscribe()
    assert received == [api.settings.names.cancel_subject(run_id)]


async def test_status_reads_the_scheduler_and_runner_buckets(lite_api: Api) -> None:
    api = lite_api
    empty = await api.client.get("/v1/status", headers=api.auth())
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "scheduler": None,
        "runners": [],
        "history": {"rejected_events": 0, "sanitized_events": 0, "last_rejected_at": None},
    }

    names = api.settings.names
    now = datetime.now(UTC)
    scheduler = await api.bus.js.key_value(names.scheduler_bucket)
    await scheduler.put(
        "status", encode_status(SchedulerStatus(leader="sched-a", lease_revision=4, jobs=2, updated_at=now))
    )
    runners = await api.bus.js.key_value(names.runners_bucket)
    presence = RunnerPresence(
        id="runner-1",
        host="h",
        pid=1,
        pools=["default"],
        running=1,
        capacity=8,
        version="0.1.0",
        started_at=now,
        updated_at=now,
        slots=3,
        http_slots=5,
    )
    await runners.put("runner-1", encode_status(presence))
    status = (await api.client.get("/v1/status", headers=api.auth())).json()
    assert status["scheduler"]["leader"] == "sched-a"
    assert status["scheduler"]["jobs"] == 2
    assert [r["id"] for r in status["runners"]] == ["runner-1"]
    [runner] = status["runners"]
    assert (runner["running"], runner["capacity"], runner["slots"], runner["http_slots"]) == (1, 8, 3, 5)

    # Events the logs service set aside are counted (see tests/logs/test_poison.py).
    async with api.engine.begin() as conn:
        await conn.execute(
            insert(rejected_events),
            [
                {"stream": "S", "stream_seq": seq, "consumer": "logs-runs", "subject": "s", "reason": "r",
                 "data": b"x", "sanitized": seq == 3, "rejected_at": now}
                for seq in (1, 2, 3)
            ],
        )  # fmt: skip
    history = (await api.client.get("/v1/status", headers=api.auth())).json()["history"]
    assert (history["rejected_events"], history["sanitized_events"]) == (2, 1)
    assert history["last_rejected_at"] is not None


async def test_live_log_replays_then_follows_until_the_run_finishes(lite_api: Api) -> None:
    api = lite_api
    names = api.settings.names
    job_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())

    async def chunk(seq: int, data: bytes) -> None:
        event = LogChunk(run_id=run_id, job_id=job_id, slot=T0, seq=seq, data=data)
        await api.bus.js.publish(names.log_subject(run_id), encode(event))

    await api.bus.js.publish(
        names.run_subject(job_id, run_id),
        encode(RunStarted(run_id=run_id, job_id=job_id, slot=T0, runner="runner-1")),
    )
    await chunk(0, b"before\n")

    lines: list[str] = []
    events: list[str] = []

    async def read() -> None:
        async with api.client.stream("GET", f"/v1/runs/{run_id}/log/stream", headers=api.auth()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    lines.append(line[len("data: ") :])
                elif line.startswith("event: "):
                    events.append(line[len("event: ") :])

    reader = asyncio.create_task(read())
    try:
        await wait_for(lambda: "before" in lines, what="replayed output")
        await chunk(1, b"live\n")
        await wait_for(lambda: "live" in lines, what="live output")
        assert not reader.done()
        await chunk(2, b"last\n")
        await api.bus.js.publish(
            names.run_subject(job_id, run_id),
            encode(RunFinished(run_id=run_id, job_id=job_id, slot=T0, status="succeeded", exit_code=0)),
        )
        await asyncio.wait_for(reader, timeout=10)
    finally:
        reader.cancel()
    assert [line for line in lines if line] == ["before", "live", "last"]
    assert events[-1] == "end"
    assert events.count("stdout") == 3


async def test_live_log_hands_over_output_carried_inline_in_run_finished(lite_api: Api) -> None:
    """Attempt 1 wrote to LOGS and failed; attempt 2 was short and carried its output in its
    run.finished. The tail gives both, in attempt order, with attempt:seq ids, then ends."""
    api = lite_api
    names = api.settings.names
    job_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    ids = {"run_id": run_id, "job_id": job_id, "slot": T0}
    subject = names.run_subject(job_id, run_id)
    await api.bus.js.publish(subject, encode(RunStarted(**ids, runner="runner-1")))
    await api.bus.js.publish(names.log_subject(run_id), encode(LogChunk(**ids, seq=0, data=b"first try\n")))
    await api.bus.js.publish(subject, encode(RunFinished(**ids, status="failed", final=False)))
    await api.bus.js.publish(subject, encode(RunStarted(**ids, attempt=2, runner="runner-1")))
    inline = [OutputPart(seq=0, data=b"second\n"), OutputPart(seq=1, stream="stderr", data=b"warn\n")]
    last = RunFinished(**ids, attempt=2, status="succeeded", output=inline)
    await api.bus.js.publish(subject, encode(last))

    async def read() -> list[str]:
        lines: list[str] = []
        async with api.client.stream("GET", f"/v1/runs/{run_id}/log/stream", headers=api.auth()) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith(("data: ", "event: ", "id: ")) and line.strip() not in ("data:",):
                    lines.append(line)
        return lines

    lines = await asyncio.wait_for(read(), timeout=10)
    assert [line for line in lines if not line.startswith("event: end")] == [
        "id: 1:0", "event: stdout", "data: first try",
        "id: 2:0", "event: stdout", "data: second",
        "id: 2:1", "event: stderr", "data: warn",
    ]  # fmt: skip
    assert lines[-1] == "event: end"


LONG: dict[str, Any] = {
    "name": "long",
    "schedule": "0 3 * * *",
    "executor": {"type": "shell", "command": "sleep 60"},
}


async def test_cancel_right_after_run_now_stops_a_run_the_history_has_not_seen(lite_api: Api) -> None:
    """No logs service runs here, so the history never has the run: cancel must ask the bus."""
    api = lite_api
    job = await create(api, LONG)
    accepted = await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=api.auth())
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["id"]

    cancelled = await api.client.post(f"/v1/runs/{run_id}/cancel", headers=api.auth())
    assert cancelled.status_code == 202, cancelled.text
    # No runner was up: the run waits in DISPATCH, and the runner that receives it later
    # finds it cancelled and does not run it.
    async with running(api.settings):
        outcome = await final_outcome(api.bus.js, api.settings, run_id, timeout=20)
        assert outcome.status == "cancelled", outcome
        assert not [
            e for e in await run_events(api.bus.js, api.settings, run_id) if isinstance(e, RunStarted)
        ]

    async def cancelled_in_history() -> dict[str, Any] | None:
        response = await api.client.get(f"/v1/runs/{run_id}", headers=api.auth())
        run: dict[str, Any] = response.json()
        return run if response.status_code == 200 and run["status"] == "cancelled" else None

    # And the history says so too once the logs service has projected it.
    async with running_logs(api.settings):
        run = await wait_for(cancelled_in_history, timeout=20, what="the run shown as cancelled")
        assert run["trigger"] == "manual", run
    unknown = await api.client.post(f"/v1/runs/{uuid.uuid4()}/cancel", headers=api.auth())
    assert unknown.status_code == 404, unknown.text


async def test_cancel_stops_a_run_a_runner_holds(lite_api: Api) -> None:
    api = lite_api
    job = await create(api, LONG)
    async with running(api.settings):
        accepted = await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=api.auth())
        run_id = accepted.json()["id"]
        cancelled = await api.client.post(f"/v1/runs/{run_id}/cancel", headers=api.auth())
        assert cancelled.status_code == 202, cancelled.text
        outcome = await final_outcome(api.bus.js, api.settings, run_id, timeout=20)
        assert outcome.status == "cancelled", outcome

        # And once it is running for sure.
        second = await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=api.auth())
        run_id = second.json()["id"]

        async def started() -> bool:
            return any(isinstance(e, RunStarted) for e in await run_events(api.bus.js, api.settings, run_id))

        await wait_for(started, timeout=15, what="the second run to start")
        cancelled = await api.client.post(f"/v1/runs/{run_id}/cancel", headers=api.auth())
        assert cancelled.status_code == 202, cancelled.text
        outcome = await final_outcome(api.bus.js, api.settings, run_id, timeout=20)
        assert outcome.status == "cancelled", outcome


async def test_a_manual_run_in_a_scheduled_slots_millisecond_is_dispatched_too(lite_api: Api) -> None:
    """A manual run asked for at the exact millisecond of a scheduled slot is a different run:
    JetStream must not drop either dispatch as a duplicate of the other."""
    api = lite_api
    names = api.settings.names
    job = await create(api, {"name": "every-minute", "schedule": "* * * * *", "executor": LONG["executor"]})
    slot = datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    spec = (await Journal(api.bus).head(job["id"])).state.spec  # type: ignore[union-attr]

    # The scheduled slot, as the scheduler publishes it.
    scheduled = scheduled_run(job["id"], slot_ms(slot))
    event = RunDispatched(run_id=scheduled.run_id, job_id=job["id"], slot=slot, pool="default", spec=spec)
    first = await api.bus.js.publish(
        names.dispatch_subject("default", job["id"]), encode(event), headers={MSG_ID: scheduled.msg_id}
    )
    assert not first.duplicate

    # A manual run whose clock reads that same millisecond, with and without a key.
    jobs = Jobs(Journal(api.bus), History(api.engine), clock=lambda: slot)
    operator = Principal(name="oncall", role=Role.operator)
    manual = await jobs.run_now(job["id"], operator, request_id=None)
    keyed = await jobs.run_now(job["id"], operator, request_id="deploy-42")
    again = await jobs.run_now(job["id"], operator, request_id="deploy-42")
    assert manual.slot == keyed.slot == slot
    assert again.id == keyed.id

    dispatched = [
        decode_dispatch(raw)
        for raw in await read_subject(
            api.bus.js, names.dispatch_stream, names.dispatch_subject("default", job["id"])
        )
    ]
    assert sorted(d.run_id for d in dispatched) == sorted([scheduled.run_id, manual.id, keyed.id])
    assert {d.trigger for d in dispatched if d.run_id != scheduled.run_id} == {"manual"}
    # Every kind of run gets its own ids, even for the same job and millisecond.
    ids = [
        scheduled,
        manual_run(job["id"], None),
        manual_run(job["id"], "k"),
    ]
    assert len({i.run_id for i in ids}) == len({i.msg_id for i in ids}) == len(ids)


async def test_log_attempt_out_of_range_is_a_4xx(api: Api) -> None:
    run_id = await add_run(api, str(uuid.uuid4()), T0)
    for attempt in ("0", "-1", str(2**31), str(10**30), "x"):
        response = await api.client.get(
            f"/v1/runs/{run_id}/log", params={"attempt": attempt}, headers=api.auth()
        )
        assert response.status_code in (400, 422), (attempt, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    ok = await api.client.get(f"/v1/runs/{run_id}/log", params={"attempt": 2**31 - 1}, headers=api.auth())
    assert ok.status_code == 200, ok.text


async def test_live_output_of_a_run_that_exists_nowhere_is_404(lite_api: Api) -> None:
    api = lite_api
    response = await asyncio.wait_for(
        api.client.get(f"/v1/runs/{uuid.uuid4()}/log/stream", headers=api.auth()), timeout=10
    )
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
