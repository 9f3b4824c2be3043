"""The api's pure domain: folding job events, cursors, and the spec <-> input round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronbus.api.domain import (
    Cursor,
    InvalidInput,
    check_id,
    evolve,
    input_from_spec,
    next_fires,
    patched_spec,
    spec_from_input,
)
from cronbus.api.schemas import JobIn, JobPatch
from cronbus.shared.events import (
    JobCreated,
    JobDeleted,
    JobPaused,
    JobResumed,
    JobSpec,
    JobUpdated,
    ShellExecutor,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = JobSpec(name="a", schedule="0 * * * *", executor=ShellExecutor(command="true"))


def test_evolve_folds_a_job_history() -> None:
    events = [
        JobCreated(job_id="j", revision=1, spec=SPEC, occurred_at=T0),
        JobPaused(job_id="j", revision=2, occurred_at=T0 + timedelta(minutes=1)),
        JobUpdated(job_id="j", revision=3, spec=msgspec.structs.replace(SPEC, name="b"), occurred_at=T0),
        JobResumed(job_id="j", revision=4, occurred_at=T0),
        JobDeleted(job_id="j", revision=5, occurred_at=T0 + timedelta(minutes=9)),
    ]
    state = None
    for event in events:
        state = evolve(state, event)
    assert state is not None
    assert (state.revision, state.spec.name, state.paused, state.deleted) == (5, "b", False, True)
    assert state.created_at == T0
    assert state.updated_at == T0 + timedelta(minutes=9)
    assert evolve(None, JobPaused(job_id="x", revision=2)) is None


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(at=T0, id="abc")
    assert Cursor.decode(cursor.encode()) == cursor
    for garbage in ("", "!!", "e30", Cursor(at=T0, id="x").encode()[:-3]):
        with pytest.raises(InvalidInput):
            Cursor.decode(garbage)


def test_ids_must_be_uuids() -> None:
    assert check_id("job", "6F1C8A3E-3B7D-5C2A-9E41-0C7B2D8F4A10") == "6f1c8a3e-3b7d-5c2a-9e41-0c7b2d8f4a10"
    for bad in ("x", "a.b", "*", ">", ""):
        with pytest.raises(InvalidInput):
            check_id("job", bad)


# Up to a day: within every duration's maximum (validation.py).
millis = st.integers(min_value=0, max_value=86_400_000).map(lambda ms: ms / 1000)


@given(timeout=millis.filter(lambda s: s > 0), window=millis, backoff=millis, jitter=millis)
def test_a_spec_survives_the_input_round_trip(
    timeout: float, window: float, backoff: float, jitter: float
) -> None:
    """What PATCH relies on: spec -> input (duration strings) -> spec changes nothing."""
    spec = msgspec.structs.replace(
        SPEC,
        timeout=timeout,
        jitter=jitter,
        catchup=msgspec.structs.replace(SPEC.catchup, window=window),
        retries=msgspec.structs.replace(SPEC.retries, backoff=backoff),
        start_at=T0,
    )
    again = spec_from_input(msgspec.convert(msgspec.to_builtins(input_from_spec(spec)), JobIn))
    assert again == spec
    assert patched_spec(spec, JobPatch()) == spec


def test_next_fires_respects_start_and_end() -> None:
    spec = msgspec.structs.replace(
        SPEC, start_at=T0 + timedelta(days=1), end_at=T0 + timedelta(days=1, hours=2)
    )
    assert next_fires(spec, T0) == [T0 + timedelta(days=1, hours=1), T0 + timedelta(days=1, hours=2)]
