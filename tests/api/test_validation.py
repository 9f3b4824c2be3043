"""Bad input gets a problem (RFC 9457) naming the field and what to do, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in BACKUP.items() if k != key}


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("bad cron", {**BACKUP, "schedule": "61 * * * *"}, "schedule", "'61'"),
    ("cron field count", {**BACKUP, "schedule": "* * *"}, "schedule", "cron takes 5"),
    ("never fires", {**BACKUP, "schedule": "0 0 30 2 *"}, "schedule", "can never fire"),
    ("bad time zone", {**BACKUP, "timezone": "Mars/Olympus"}, "timezone", "IANA time zone"),
    ("missing name", without("name"), "name", "missing"),
    ("missing schedule", without("schedule"), "schedule", "missing"),
    ("missing executor", without("executor"), "executor", "missing"),
    ("missing command", {**BACKUP, "executor": {"type": "shell"}}, "executor.command", "missing"),
    (
        "unknown executor",
        {**BACKUP, "executor": {"type": "ftp", "url": "x"}},
        "executor.type",
        "'shell' or 'http'",
    ),
    ("unknown field", {**BACKUP, "shedule": "* * * * *"}, "shedule", "unknown field"),
    ("unknown nested field", {**BACKUP, "retries": {"max_tries": 3}}, "retries.max_tries", "unknown field"),
    ("bad duration", {**BACKUP, "timeout": "ten minutes"}, "timeout", "not a duration"),
    ("zero timeout", {**BACKUP, "timeout": "0s"}, "timeout", "more than zero"),
    ("bad backoff", {**BACKUP, "retries": {"backoff": "10 parsecs"}}, "retries.backoff", "not a duration"),
    ("bad pool", {**BACKUP, "pool": "gpu.large"}, "pool", "subject token"),
    ("bad overlap", {**BACKUP, "overlap": "sometimes"}, "overlap", "Invalid enum value"),
    ("empty name", {**BACKUP, "name": "  "}, "name", "empty"),
    ("bad url", {**BACKUP, "executor": {"type": "http", "url": "ftp://x"}}, "executor.url", "http://"),
    ("naive start", {**BACKUP, "start_at": "2030-01-01T00:00:00"}, "start_at", "UTC offset"),
    ("wrong type", {**BACKUP, "name": 7}, "name", "Expected `str`"),
]


@pytest.mark.parametrize(("body", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_job_input_is_a_problem_naming_the_field(
    lite_api: Api, body: dict[str, Any], field: str, reason: str
) -> None:
    response = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422
    assert problem["title"] == "Invalid input"
    assert problem["type"].startswith("urn:cronbus:problem:")
    matching = [e for e in problem["errors"] if e["field"] == field]
    assert matching, problem
    assert reason in matching[0]["reason"], matching
    assert reason in problem["detail"]
    names = lite_api.settings.names
    info = await lite_api.bus.js.stream_info(names.jobs_stream)
    assert info.state.messages == 0  # nothing was appended


async def test_several_problems_are_reported_together(lite_api: Api) -> None:
    body = {**BACKUP, "schedule": "bad", "timezone": "Nowhere/Else", "timeout": "x"}
    response = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"timezone", "timeout"} <= fields


async def test_body_that_is_not_json_is_400(lite_api: Api) -> None:
    response = await lite_api.client.post(
        "/v1/jobs", content=b"{not json", headers={**lite_api.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "JSON" in response.json()["detail"]


async def test_bad_query_parameters_and_cursors(lite_api: Api) -> None:
    too_many = await lite_api.client.get("/v1/jobs", params={"limit": 1000}, headers=lite_api.auth())
    assert too_many.status_code in (400, 422)
    assert too_many.headers["content-type"].startswith("application/problem+json")
    cursor = await lite_api.client.get("/v1/jobs", params={"cursor": "garbage!"}, headers=lite_api.auth())
    assert cursor.status_code == 422
    assert cursor.json()["errors"][0]["field"] == "cursor"


async def test_unknown_route_is_a_problem(lite_api: Api) -> None:
    response = await lite_api.client.get("/v1/nope", headers=lite_api.auth())
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
