"""How the history writer hands values to the database drivers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from cronbus.logs.store import _same_text, _sqlite_utc_text
from cronbus.shared.history.schema import UTCDateTime


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
