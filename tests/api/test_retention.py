"""A job's own retention limits through the API: accepted, validated, shown, carried in events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import insert

from cronbus.api.domain import InvalidInput, input_from_spec, patched_spec, spec_from_input
from cronbus.api.schemas import JobIn, JobPatch
from cronbus.shared.events import JobCreated, JobSpec, JobUpdated, Retention, ShellExecutor, decode_job_event
from cronbus.shared.history.schema import jobs
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create


async def last_event(api: Api, job_id: str) -> Any:
    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job_id))
    return decode_job_event(msg.data or b"")


async def test_create_accepts_retention_and_shows_it(api: Api) -> None:
    job = await create(api, {**BACKUP, "retention": {"runs": 500, "log_bytes": "50MB"}})

    assert job["retention"] == {"runs": 500, "log_bytes": 50_000_000}
    event = await last_event(api, job["id"])
    assert isinstance(event, JobCreated)
    assert event.spec.retention == Retention(runs=500, log_bytes=50_000_000)

    await api.project_jobs()
    got = await api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth())
    assert got.status_code == 200, got.text
    assert got.json()["retention"] == {"runs": 500, "log_bytes": 50_000_000}
    listed = await api.client.get("/v1/jobs", headers=api.auth())
    assert [j["retention"] for j in listed.json()["items"]] == [{"runs": 500, "log_bytes": 50_000_000}]


async def test_without_retention_the_defaults_apply(api: Api) -> None:
    job = await create(api)
    assert job["retention"] == {"runs": None, "log_bytes": None}
    event = await last_event(api, job["id"])
    assert event.spec.retention == Retention()


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (1_048_576, 1_048_576),
        ("1048576", 1_048_576),
        ("500KB", 500_000),
        ("512KiB", 524_288),
        ("1.5 GiB", 1_610_612_736),
        ("2gb", 2_000_000_000),
        ("10MiB", 10_485_760),
        (0, 0),
    ],
)
async def test_log_bytes_take_a_number_or_units(lite_api: Api, given: int | str, stored: int) -> None:
    job = await create(lite_api, {**BACKUP, "retention": {"log_bytes": given}})
    assert job["retention"] == {"runs": None, "log_bytes": stored}


async def test_patch_replaces_retention_and_other_changes_keep_it(api: Api) -> None:
    job = await create(api, {**BACKUP, "retention": {"runs": 20, "log_bytes": "1MB"}})
    url = f"/v1/jobs/{job['id']}"

    other = await api.client.patch(url, json={"schedule": "*/5 * * * *"}, headers=api.auth())
    assert other.status_code == 200, other.text
    assert other.json()["retention"] == {"runs": 20, "log_bytes": 1_000_000}

    # Like catchup and retries, a given `retention` replaces the whole object.
    changed = await api.client.patch(url, json={"retention": {"log_bytes": "1GiB"}}, headers=api.auth())
    assert changed.status_code == 200, changed.text
    assert changed.json()["retention"] == {"runs": None, "log_bytes": 1 << 30}
    event = await last_event(api, job["id"])
    assert isinstance(event, JobUpdated)
    assert event.spec.retention == Retention(runs=None, log_bytes=1 << 30)

    bad = await api.client.patch(url, json={"retention": {"runs": -1}}, headers=api.auth())
    assert bad.status_code == 422, bad.text
    assert [e["field"] for e in bad.json()["errors"]] == ["retention.runs"]
    assert (await last_event(api, job["id"])).revision == 3  # nothing appended


CASES: list[tuple[str, Any, str, str]] = [
    ("negative runs", {"runs": -5}, "retention.runs", "out of range"),
    ("runs not a number", {"runs": "many"}, "retention.runs", "Expected `int | null`"),
    ("unknown unit", {"log_bytes": "50 parsecs"}, "retention.log_bytes", "not a size"),
    ("negative bytes", {"log_bytes": -1}, "retention.log_bytes", "negative"),
    ("fractional number", {"log_bytes": 1.5}, "retention.log_bytes", "Expected `int | str | null`"),
    ("too large", {"log_bytes": "9000000000GiB"}, "retention.log_bytes", "too large"),
    ("unknown field", {"bytes": 5}, "retention.bytes", "unknown field"),
    ("not an object", 500, "retention", "Expected `object`"),
]


@pytest.mark.parametrize(("retention", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_retention_is_a_problem_naming_the_field(
    lite_api: Api, retention: Any, field: str, reason: str
) -> None:
    response = await lite_api.client.post(
        "/v1/jobs", json={**BACKUP, "retention": retention}, headers=lite_api.auth()
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    matching = [e for e in response.json()["errors"] if e["field"] == field]
    assert matching, response.json()
    assert reason in matching[0]["reason"], matching


async def test_a_job_projected_before_retention_existed_reads_with_the_defaults(api: Api) -> None:
    """`jobs.spec` rows written by an older logs service have no `retention` key."""
    old_spec = {"name": "old", "schedule": "0 3 * * *", "executor": {"type": "shell", "command": "true"}}
    job_id = "0b7a2c3e-1d4f-4e5a-9b6c-7d8e9f0a1b2c"
    now = datetime.now(UTC)
    async with api.engine.begin() as conn:
        await conn.execute(
            insert(jobs).values(
                id=job_id, name="old", spec=old_spec, revision=1, paused=False, deleted=False,
                created_at=now, updated_at=now,
            )
        )  # fmt: skip
    got = await api.client.get(f"/v1/jobs/{job_id}", headers=api.auth())
    assert got.status_code == 200, got.text
    assert got.json()["retention"] == {"runs": None, "log_bytes": None}


def test_retention_survives_the_input_round_trip() -> None:
    """What PATCH relies on: spec -> input -> spec keeps the limits, unset ones included."""
    base = JobSpec(name="a", schedule="0 * * * *", executor=ShellExecutor(command="true"))
    for retention in (Retention(), Retention(runs=0), Retention(runs=7, log_bytes=123_456_789)):
        spec = msgspec.structs.replace(base, retention=retention)
        again = spec_from_input(msgspec.convert(msgspec.to_builtins(input_from_spec(spec)), JobIn))
        assert again == spec
        assert patched_spec(spec, JobPatch()) == spec
    with pytest.raises(InvalidInput) as bad:
        patched_spec(base, msgspec.convert({"retention": {"log_bytes": "lots"}}, JobPatch))
    assert [e.field for e in bad.value.errors] == ["retention.log_bytes"]
