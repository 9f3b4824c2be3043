"""How the history writer hands values to the database drivers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from cronbus.logs.store import HistoryWriter, Sequenced, _same_text, _sqlite_utc_text
from cronbus.shared.events import LogChunk, run_id_for
from cronbus.shared.history.schema import UTCDateTime, log_chunks, output_sizes
from tests.logs.harness import T0, rows


def test_datetimes_are_stored_on_sqlite_as_sqlalchemy_stores_them():
    dialect = sqlite.dialect()
    process = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    # The writer's own formatting is used only while it agrees with SQLAlchemy's.
    assert _same_text(process)
    for value in (
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 10, 25, 2, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=2))),
        datetime(2026, 10, 25, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-11))),
    ):
        assert _sqlite_utc_text(value) == process(value)
    assert _sqlite_utc_text(None) is None
    with pytest.raises(ValueError):
        _sqlite_utc_text(datetime(2026, 1, 1))


async def test_a_batch_with_more_output_than_one_statement_holds_is_stored_whole(history: AsyncEngine):
    """Output rows go in as multi-row INSERTs of at most 500 rows; a batch of 1,200 spans three."""
    writer = HistoryWriter(history)
    run_id = run_id_for("job-1", T0)
    chunks = [
        LogChunk(run_id=run_id, job_id="job-1", slot=T0, seq=seq, data=b"x" * (seq % 7), occurred_at=T0)
        for seq in range(1200)
    ]
    # Repeated: the second time nothing is inserted, so nothing is added.
    for _ in range(2):
        await writer.apply("test", [Sequenced(i, c) for i, c in enumerate(chunks, start=1)], 0)
    stored = await rows(history, log_chunks)
    assert [(c["seq"], c["data"], c["at"]) for c in stored] == [(c.seq, c.data, T0) for c in chunks]
    assert await rows(history, output_sizes) == [
        {"run_id": run_id, "bytes": sum(len(c.data) for c in chunks)}
    ]
