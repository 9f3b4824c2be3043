"""A job's state and last run, and `GET /v1/jobs` filtered by state, label, pool and name, on
SQLite and PostgreSQL (the runs stand in for what the logs service projects)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create
from tests.api.test_runs import add_run

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


async def names(api: Api, query: str) -> list[str]:
    """The names of every job the query lists, following `next` (pages of 2)."""
    found: list[str] = []
    cursor = ""
    for _ in range(50):
        response = await api.client.get(f"/v1/jobs?limit=2&{query}{cursor}", headers=api.auth())
        assert response.status_code == 200, response.text
        page = response.json()
        found += [j["name"] for j in page["items"]]
        if page["next"] is None:
            return found
        cursor = f"&cursor={page['next']}"
    raise AssertionError("more than 50 pages")


async def jobs_in_every_state(api: Api) -> dict[str, dict[str, Any]]:
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    made = {
        "fresh": await create(api, {**BACKUP, "name": "fresh", "labels": {"team": "a"}}),
        "ok": await create(api, {**BACKUP, "name": "ok", "labels": {"team": "b"}, "pool": "batch"}),
        "broken": await create(
            api, {**BACKUP, "name": "Broken-Export", "labels": {"team": "a", "tier": "1"}}
        ),
        "stopped": await create(api, {**BACKUP, "name": "stopped"}),
        "once": await create(api, {**BACKUP, "name": "once", "schedule": "@at 2026-03-01T03:00:00Z"}),
        "ended": await create(
            api, {**BACKUP, "name": "ended", "start_at": "2020-01-01T00:00:00Z", "end_at": past}
        ),
    }
    await add_run(api, made["ok"]["id"], T0, status="failed")
    await add_run(api, made["ok"]["id"], T0 + timedelta(hours=1), status="succeeded")
    await add_run(api, made["broken"]["id"], T0, status="succeeded")
    await add_run(api, made["broken"]["id"], T0 + timedelta(hours=1), status="timed_out")
    # A skipped run (overlap policy) and one still running say nothing about health.
    await add_run(api, made["broken"]["id"], T0 + timedelta(hours=2), status="skipped")
    await add_run(api, made["broken"]["id"], T0 + timedelta(hours=3), status="running", finished_at=None)
    await add_run(api, made["once"]["id"], T0, status="succeeded")
    paused = await api.client.post(f"/v1/jobs/{made['stopped']['id']}/pause", headers=api.auth())
    assert paused.status_code == 200
    await api.project_jobs()
    return made


async def test_every_job_answer_carries_state_and_last_run(api: Api) -> None:
    made = await jobs_in_every_state(api)

    async def get(name: str) -> dict[str, Any]:
        response = await api.client.get(f"/v1/jobs/{made[name]['id']}", headers=api.auth())
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    expected = {
        "fresh": "scheduled",
        "ok": "scheduled",
        "broken": "failing",
        "stopped": "paused",
        "once": "finished",
        "ended": "finished",
    }
    assert {name: (await get(name))["state"] for name in made} == expected
    assert (await get("fresh"))["last_run"] is None
    broken = (await get("broken"))["last_run"]
    assert broken["status"] == "running"
    assert broken["finished_at"] is None
    assert datetime.fromisoformat(broken["slot"]) == T0 + timedelta(hours=3)
    ok = (await get("ok"))["last_run"]
    assert ok["status"] == "succeeded"
    assert set(ok) == {"id", "slot", "status", "finished_at"}

    # The answers of writes carry them too.
    resumed = await api.client.post(f"/v1/jobs/{made['broken']['id']}/resume", headers=api.auth())
    assert resumed.json()["state"] == "failing"
    assert created_state(made["fresh"]) == ("scheduled", None)


def created_state(job: dict[str, Any]) -> tuple[str, Any]:
    return job["state"], job["last_run"]


async def test_list_filters_on_state_label_pool_and_name(api: Api) -> None:
    await jobs_in_every_state(api)

    assert sorted(await names(api, "state=scheduled")) == ["fresh", "ok"]
    assert await names(api, "state=failing") == ["Broken-Export"]
    assert await names(api, "state=paused") == ["stopped"]
    assert sorted(await names(api, "state=finished")) == ["ended", "once"]
    assert await names(api, "label=team=a") == ["fresh", "Broken-Export"]
    assert await names(api, "label=tier") == ["Broken-Export"]
    assert await names(api, "label=team=a&label=tier=1") == ["Broken-Export"]
    assert await names(api, "label=team=c") == []
    assert await names(api, "pool=batch") == ["ok"]
    assert await names(api, "q=EXPORT") == ["Broken-Export"]
    assert await names(api, "q=%25") == []  # a literal %, not a wildcard
    assert await names(api, "q=o&state=scheduled&pool=batch") == ["ok"]
    assert len(await names(api, "")) == 6
    # Label keys that a JSON path would read as syntax match nothing, harmlessly.
    for odd in ('a"b', "a.b", "$", "a[0]", "'"):
        assert await names(api, f"label={quote(odd)}") == []


async def test_bad_filters_are_422_naming_the_parameter(api: Api) -> None:
    for query, field in (("state=sleeping", "state"), ("label==x", "label")):
        response = await api.client.get(f"/v1/jobs?{query}", headers=api.auth())
        assert response.status_code == 422, response.text
        assert field in response.text
