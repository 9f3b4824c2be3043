"""The schedule preview's daylight saving time notes (pure: no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cronbus.api.domain import InvalidInput
from cronbus.api.preview import MAX_PREVIEW, preview


def test_a_time_that_does_not_exist_fires_at_the_first_valid_instant_with_a_note() -> None:
    fires = preview("30 2 * * *", "Europe/Berlin", datetime(2027, 3, 27, tzinfo=UTC), 3)
    assert [f.local.isoformat() for f in fires] == [
        "2027-03-27T02:30:00+01:00",
        "2027-03-28T03:00:00+02:00",
        "2027-03-29T02:30:00+02:00",
    ]
    assert [f.note for f in fires] == [
        None,
        "02:30 does not exist on 2027-03-28 (clocks go forward), fires at 03:00",
        None,
    ]
    assert fires[1].at == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)


def test_a_time_that_exists_at_the_transition_has_no_note() -> None:
    # 03:00 exists on the day clocks go forward: it is not moved, so nothing to say.
    fires = preview("0 3 * * *", "Europe/Berlin", datetime(2027, 3, 27, 12, tzinfo=UTC), 1)
    assert fires[0].local.isoformat() == "2027-03-28T03:00:00+02:00"
    assert fires[0].note is None


def test_a_time_that_occurs_twice_fires_once_with_a_note() -> None:
    fires = preview("30 1 * * *", "America/New_York", datetime(2027, 11, 6, 12, tzinfo=UTC), 2)
    assert [f.local.isoformat() for f in fires] == [
        "2027-11-07T01:30:00-04:00",
        "2027-11-08T01:30:00-05:00",
    ]
    assert (
        fires[0].note
        == "01:30 occurs twice on 2027-11-07 (clocks go back), fires once, at the first (UTC-0400)"
    )
    assert fires[1].note is None


def test_intervals_and_utc_have_no_notes() -> None:
    every = preview("@every 90s", "Europe/Berlin", datetime(2027, 3, 28, 0, 59, tzinfo=UTC), 3)
    assert all(f.note is None for f in every)
    assert (every[1].at - every[0].at).total_seconds() == 90
    assert all(f.note is None for f in preview("*/30 * * * *", "UTC", datetime(2027, 3, 28, tzinfo=UTC), 10))


def test_bad_input_names_the_field() -> None:
    with pytest.raises(InvalidInput) as caught:
        preview("61 * * * *", "UTC", datetime(2027, 1, 1, tzinfo=UTC), MAX_PREVIEW + 1)
    assert {e.field for e in caught.value.errors} == {"count", "schedule"}
    with pytest.raises(InvalidInput) as caught:
        preview("0 3 * * *", "Mars/Olympus", datetime(2027, 1, 1, tzinfo=UTC), 10)
    assert [e.field for e in caught.value.errors] == ["timezone"]
