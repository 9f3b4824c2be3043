"""Jobs through the HTTP API: create, read, list, change, and the events that land on JOBS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cronbus.shared.bus import EXPECTED_LAST_SUBJECT_SEQ
from cronbus.shared.events import (
    JobCreated,
    JobPaused,
    JobUpdated,
    ShellExecutor,
    decode_dispatch,
    decode_job_event,
)
from tests.api.conftest import Api

BACKUP: dict[str, Any] = {
    "name": "backup",
    "schedule": "0 3 * * *",
    "timezone": "Europe/Berlin",
    "executor": {"type": "shell", "command": "pg_dump db > /backup/db.sql"},
    "pool": "default",
    "timeout": "10m",
    "overlap": "skip",
    "catchup": {"policy": "latest", "window": "1h"},
    "retries": {"max_attempts": 3, "backoff": "10s"},
}


async def create(api: Api, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await api.client.post("/v1/jobs", json=body or BACKUP, headers=api.auth())
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_create_answers_the_job_and_appends_job_created(api: Api) -> None:
    job = await create(api)

    assert job["revision"] == 1
    assert job["name"] == "backup"
    assert job["schedule"] == "0 3 * * *"
    assert job["timezone"] == "Europe/Berlin"
    assert job["timeout"] == "10m"
    assert job["catchup"] == {"policy": "latest", "window": "1h"}
    assert job["retries"]["backoff"] == "10s"
    assert job["retries"]["max_attempts"] == 3
    assert job["executor"]["type"] == "shell"
    fires = [datetime.fromisoformat(f) for f in job["next_fires"]]
    assert len(fires) == 5
    assert fires == sorted(fires)
    assert all(f.tzinfo is not None and f.utcoffset().total_seconds() == 0 for f in fires)  # type: ignore[union-attr]
    # 03:00 in Berlin is 01:00 or 02:00 UTC depending on DST.
    assert {f.hour for f in fires} <= {1, 2}
    assert all(f.minute == 0 for f in fires)

    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))
    event = decode_job_event(msg.data or b"")
    assert isinstance(event, JobCreated)
    assert event.job_id == job["id"]
    assert event.revision == 1
    assert event.actor == "admin"
    assert event.spec.timeout == 600.0
    assert event.spec.catchup.window == 3600.0
    assert event.spec.retries.backoff == 10.0
    assert isinstance(event.spec.executor, ShellExecutor)
    assert msg.headers is not None
    assert msg.headers.get(EXPECTED_LAST_SUBJECT_SEQ) == "0"


async def test_get_and_list_read_the_history(api: Api) -> None:
    created = [await create(api, {**BACKUP, "name": f"job-{i}"}) for i in range(5)]
    await api.project_jobs()

    one = await api.client.get(f"/v1/jobs/{created[0]['id']}", headers=api.auth())
    assert one.status_code == 200
    assert one.json()["name"] == "job-0"
    assert one.json()["timeout"] == "10m"
    assert one.headers["etag"] == '"1"'

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await api.client.get("/v1/jobs", params=params, headers=api.auth())
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [j["id"] for j in body["items"]]
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [j["id"] for j in created]


async def test_unknown_job_is_404_and_bad_id_is_422(api: Api) -> None:
    missing = await api.client.get("/v1/jobs/8d7c2f0e-0000-4000-8000-000000000000", headers=api.auth())
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    bad = await api.client.get("/v1/jobs/not.a-uuid", headers=api.auth())
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "id"


async def test_read_naming_a_revision_waits_for_the_history(api: Api) -> None:
    job = await create(api)
    # Not projected yet: the read waits its bound (1 s in these tests), then says so.
    behind = await api.client.get(f"/v1/jobs/{job['id']}", params={"revision": 1}, headers=api.auth())
    assert behind.status_code == 504
    assert "logs service" in behind.json()["detail"]

    await api.project_jobs()
    ok = await api.client.get(f"/v1/jobs/{job['id']}", params={"revision": 1}, headers=api.auth())
    assert ok.status_code == 200
    assert ok.json()["revision"] == 1


async def test_patch_appends_job_updated_and_rejects_stale_revisions(api: Api) -> None:
    job = await create(api)
    changed = await api.client.patch(
        f"/v1/jobs/{job['id']}", json={"schedule": "*/5 * * * *", "timeout": "90s"}, headers=api.auth()
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["revision"] == 2
    assert body["schedule"] == "*/5 * * * *"
    assert body["timeout"] == "1m30s"
    assert body["name"] == "backup"  # untouched fields stay

    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))
    event = decode_job_event(msg.data or b"")
    assert isinstance(event, JobUpdated)
    assert event.revision == 2
    assert event.spec.timeout == 90.0

    stale = await api.client.patch(
        f"/v1/jobs/{job['id']}", json={"name": "x"}, headers={**api.auth(), "If-Match": '"1"'}
    )
    assert stale.status_code == 409
    assert "revision 2" in stale.json()["detail"]
    stale_body = await api.client.patch(
        f"/v1/jobs/{job['id']}", json={"name": "x", "revision": 1}, headers=api.auth()
    )
    assert stale_body.status_code == 409

    invalid = await api.client.patch(
        f"/v1/jobs/{job['id']}", json={"schedule": "61 * * * *"}, headers=api.auth()
    )
    assert invalid.status_code == 422
    assert invalid.json()["errors"][0]["field"] == "schedule"


async def test_pause_resume_and_delete(api: Api) -> None:
    job = await create(api)
    url = f"/v1/jobs/{job['id']}"
    paused = await api.client.post(f"{url}/pause", headers=api.auth())
    assert paused.status_code == 200
    assert paused.json()["paused"] is True
    assert paused.json()["next_fires"] == []
    again = await api.client.post(f"{url}/pause", headers=api.auth())
    assert again.json()["revision"] == 2  # pausing a paused job appends nothing

    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))
    assert isinstance(decode_job_event(msg.data or b""), JobPaused)

    resumed = await api.client.post(f"{url}/resume", headers=api.auth())
    assert resumed.json()["paused"] is False
    assert resumed.json()["revision"] == 3
    assert len(resumed.json()["next_fires"]) == 5

    gone = await api.client.delete(url, headers=api.auth())
    assert gone.status_code == 204
    await api.project_jobs()
    assert (await api.client.get(url, headers=api.auth())).status_code == 404
    assert (await api.client.post(f"{url}/pause", headers=api.auth())).status_code == 404
    listed = await api.client.get("/v1/jobs", headers=api.auth())
    assert listed.json() == {"items": [], "next": None}


async def test_manual_run_dispatches_once_per_request_id(api: Api) -> None:
    job = await create(api)
    headers = {**api.auth(), "Idempotency-Key": "req-1"}
    first = await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=headers)
    second = await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["trigger"] == "manual"

    names = api.settings.names
    info = await api.bus.js.stream_info(names.dispatch_stream)
    assert info.state.messages == 1
    msg = await api.bus.js.get_last_msg(names.dispatch_stream, names.dispatch_subject("default", job["id"]))
    run = decode_dispatch(msg.data or b"")
    assert run.trigger == "manual"
    assert run.run_id == first.json()["id"]
    assert run.spec.name == "backup"
    assert abs((run.slot - datetime.now(UTC)).total_seconds()) < 60


async def test_a_job_is_readable_at_once_before_the_history_has_it(api: Api) -> None:
    """Read-your-writes: JOBS is the source of truth until the projection catches up."""
    job = await create(api)
    got = await api.client.get(f"/v1/jobs/{job['id']}", headers=api.auth())
    assert got.status_code == 200, got.text
    assert got.json()["name"] == "backup"
    runs = await api.client.get(f"/v1/jobs/{job['id']}/runs", headers=api.auth())
    assert runs.status_code == 200, runs.text
    assert runs.json() == {"items": [], "next": None}
