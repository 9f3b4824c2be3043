"""API keys and roles: 401 without a valid key, 403 for a role that may not, health is open."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import update

from cronbus.shared.history.schema import api_keys
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create


async def test_missing_or_wrong_key_is_401(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer"},
    ):
        response = await api.client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["title"] == "Missing or wrong API key"
        assert "Bearer" in response.json()["detail"] or "unknown" in response.json()["detail"]


async def test_health_needs_no_key(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"nats": "ok", "database": "ok"}


async def test_roles(api: Api) -> None:
    viewer = await api.add_key("viewer", name="grafana")
    operator = await api.add_key("operator", name="oncall")
    admin = await api.add_key("admin")
    job = await create(api)
    await api.project_jobs()
    url = f"/v1/jobs/{job['id']}"

    # viewer reads, nothing more
    assert (await api.client.get("/v1/jobs", headers=api.auth(viewer))).status_code == 200
    assert (await api.client.get(url, headers=api.auth(viewer))).status_code == 200
    denied = await api.client.post(f"{url}/pause", headers=api.auth(viewer))
    assert denied.status_code == 403
    assert denied.headers["content-type"].startswith("application/problem+json")
    assert "operator" in denied.json()["detail"]
    assert (await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth(viewer))).status_code == 403

    # operator also pauses, resumes, triggers; not create, change or delete
    assert (await api.client.post(f"{url}/pause", headers=api.auth(operator))).status_code == 200
    assert (await api.client.post(f"{url}/resume", headers=api.auth(operator))).status_code == 200
    assert (await api.client.post(f"{url}/runs", headers=api.auth(operator))).status_code == 202
    assert (await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth(operator))).status_code == 403
    assert (await api.client.patch(url, json={"name": "x"}, headers=api.auth(operator))).status_code == 403
    assert (await api.client.delete(url, headers=api.auth(operator))).status_code == 403

    # an admin key from the table does everything; its name is the events' actor
    created = await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth(admin))
    assert created.status_code == 201
    assert (await api.client.delete(url, headers=api.auth(admin))).status_code == 204


async def test_revoked_key_is_401(api: Api) -> None:
    key = await api.add_key("viewer")
    assert (await api.client.get("/v1/jobs", headers=api.auth(key))).status_code == 200
    async with api.engine.begin() as conn:
        await conn.execute(update(api_keys).values(revoked_at=datetime.now(UTC)))
    assert (await api.client.get("/v1/jobs", headers=api.auth(key))).status_code == 401
