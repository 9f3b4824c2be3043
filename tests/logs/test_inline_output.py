"""A short attempt's output carried inline by its run.finished: stored like log.chunk events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.api.history import History
from cronbus.logs.store import HistoryWriter, Sequenced
from cronbus.shared.bus import Bus
from cronbus.shared.events import AnyEvent, OutputPart, RunDispatched, RunFinished, RunStarted, run_id_for
from cronbus.shared.history.schema import log_chunks, output_sizes
from cronbus.shared.settings import Settings
from tests.logs.harness import T0, publish, rows, running_logs, spec, wait_rows

PARTS = [
    OutputPart(seq=0, data=b"hello\n"),
    OutputPart(seq=1, stream="stderr", data=b"warning: low disk\n"),
    OutputPart(seq=2, data=b"done\n"),
]


def inline_run(
    job_id: str, slot: datetime, *, attempt: int = 1, parts: list[OutputPart] = PARTS
) -> list[AnyEvent]:
    """Dispatched, started, and finished with its whole output inline (no log.chunk)."""
    ids: dict[str, Any] = {"run_id": run_id_for(job_id, slot), "job_id": job_id, "slot": slot}
    started = slot + timedelta(seconds=1)
    return [
        RunDispatched(**ids, pool="default", spec=spec(), occurred_at=slot),
        RunStarted(**ids, attempt=attempt, runner="runner-1", occurred_at=started),
        RunFinished(
            **ids, attempt=attempt, status="succeeded", runner="runner-1", exit_code=0,
            output_bytes=sum(len(p.data) for p in parts), output=parts,
            occurred_at=started + timedelta(seconds=1),
        ),
    ]  # fmt: skip


async def test_inline_output_is_projected_and_read_back_through_the_api(
    history_settings: Settings, bus: Bus, history: AsyncEngine
):
    events = inline_run("job-1", T0)
    await publish(bus, history_settings, *events)
    run_id = run_id_for("job-1", T0)

    async with running_logs(history_settings):
        chunks = await wait_rows(history, log_chunks, 3)

    finished_at = T0 + timedelta(seconds=2)
    assert [(c["run_id"], c["attempt"], c["seq"], c["stream"], c["data"], c["at"]) for c in chunks] == [
        (run_id, 1, 0, "stdout", b"hello\n", finished_at),
        (run_id, 1, 1, "stderr", b"warning: low disk\n", finished_at),
        (run_id, 1, 2, "stdout", b"done\n", finished_at),
    ]
    assert {r["run_id"]: r["bytes"] for r in await rows(history, output_sizes)} == {run_id: 29}
    api = History(history)
    assert await api.latest_log_attempt(run_id) == 1
    assert await api.log(run_id, 1) == b"hello\nwarning: low disk\ndone\n"


async def test_a_repeated_batch_adds_no_inline_output(history: AsyncEngine):
    """Redelivered run.finished events (in one batch, and again in another) store each part once."""
    writer = HistoryWriter(history)
    first = inline_run("job-1", T0)
    second = inline_run("job-1", T0 + timedelta(minutes=1), parts=[OutputPart(seq=0, data=b"x" * 100)])
    batch = [*first, *second, first[-1], second[-1]]
    # Position 0 is never moved (last_seq 0), so the second apply replays the whole batch.
    for _ in range(2):
        await writer.apply("test", [Sequenced(i, e) for i, e in enumerate(batch, start=1)], 0)

    assert {r["run_id"]: r["bytes"] for r in await rows(history, output_sizes)} == {
        run_id_for("job-1", T0): 29,
        run_id_for("job-1", T0 + timedelta(minutes=1)): 100,
    }
    assert len(await rows(history, log_chunks)) == 4


async def test_a_finished_event_without_output_stores_none(history: AsyncEngine):
    writer = HistoryWriter(history)
    events = inline_run("job-1", T0, parts=[])
    await writer.apply("test", [Sequenced(i, e) for i, e in enumerate(events, start=1)], 3)
    assert await rows(history, log_chunks) == []
    assert await rows(history, output_sizes) == []
