"""API keys and roles: 401 without a valid key (whatever the path), 403 for a role that may
not, health and the API's description are open. The matrix covers every route of the app."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from sqlalchemy import update

from cronbus.api.app import create_app
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


# Who may call each endpoint: the role it needs, or PUBLIC. Every route of the app must be here
# (test_every_route_is_in_the_auth_table), so a new endpoint cannot miss the matrix.
PUBLIC = "public"
ANY_KEY = "any key"  # Litestar's automatic OPTIONS answers: any valid key, no data
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("POST", "/v1/jobs"): "admin",
    ("GET", "/v1/jobs"): "viewer",
    ("GET", "/v1/jobs/{job_id}"): "viewer",
    ("PATCH", "/v1/jobs/{job_id}"): "admin",
    ("DELETE", "/v1/jobs/{job_id}"): "admin",
    ("POST", "/v1/jobs/{job_id}/pause"): "operator",
    ("POST", "/v1/jobs/{job_id}/resume"): "operator",
    ("GET", "/v1/jobs/{job_id}/runs"): "viewer",
    ("POST", "/v1/jobs/{job_id}/runs"): "operator",
    ("POST", "/v1/jobs/{job_id}/backfill"): "operator",
    ("GET", "/v1/jobs/{job_id}/slots"): "viewer",
    ("GET", "/v1/runs/{run_id}"): "viewer",
    ("GET", "/v1/runs/{run_id}/log"): "viewer",
    ("GET", "/v1/runs/{run_id}/log/stream"): "viewer",
    ("POST", "/v1/runs/{run_id}/cancel"): "operator",
    ("GET", "/v1/status"): "viewer",
    ("POST", "/v1/import/crontab"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("GET", "/v1/whoami"): "viewer",
    ("POST", "/v1/schedule/preview"): "viewer",
    ("GET", "/"): PUBLIC,
    ("GET", "/console/{file_path}"): PUBLIC,
    ("HEAD", "/console/{file_path}"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/v1/openapi.json"): PUBLIC,
    ("GET", "/v1/docs"): PUBLIC,
    ("GET", "/v1/docs/scalar"): PUBLIC,
    ("GET", "/v1/docs/openapi.json"): PUBLIC,
    ("GET", "/v1/docs/oauth2-redirect.html"): PUBLIC,
    ("GET", "/v1/docs/{path}"): PUBLIC,
}
RANK = {"viewer": 1, "operator": 2, "admin": 3}


def app_routes(api: Api) -> set[tuple[str, str]]:
    """(method, path) of every route the API serves, path parameters without their types."""
    app = create_app(api.settings, bus=api.bus, engine=api.engine)
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                found.add((method, path))
    return found


async def test_auth_matrix(api: Api) -> None:
    routes = app_routes(api)
    table = dict(ROUTE_ROLES)
    for method, path in routes:
        if method == "OPTIONS":
            table.setdefault((method, path), PUBLIC if table.get(("GET", path)) == PUBLIC else ANY_KEY)
    assert routes == set(table), f"routes missing from ROUTE_ROLES: {routes - set(table)}"

    keys = {role: await api.add_key(role) for role in RANK}
    revoked = await api.add_key("admin", name="revoked")
    async with api.engine.begin() as conn:
        await conn.execute(
            update(api_keys).where(api_keys.c.name == "revoked").values(revoked_at=datetime.now(UTC))
        )
    callers: dict[str, dict[str, str]] = {
        "no key": {},
        "wrong key": api.auth("not-a-key"),
        "malformed header": {"Authorization": "Basic abc"},
        "revoked key": api.auth(revoked),
        **{role: api.auth(key) for role, key in keys.items()},
    }
    ids = {
        "job_id": str(uuid.uuid4()),
        "run_id": str(uuid.uuid4()),
        "key_id": str(uuid.uuid4()),
        "path": "index.html",
        "file_path": "app.js",
    }
    failures: list[str] = []
    for (method, template), needed in sorted(table.items()):
        path = template.format(**ids)
        for who, headers in callers.items():
            body = BACKUP if (method, template) == ("POST", "/v1/jobs") else None
            async with api.client.stream(method, path, json=body, headers=headers) as response:
                status = response.status_code
            if needed == PUBLIC:
                ok = status not in (401, 403)
            elif who not in RANK:
                ok = status == 401
            elif needed == ANY_KEY or RANK[who] >= RANK[needed]:
                ok = status not in (401, 403)
            else:
                ok = status == 403
            if not ok:
                failures.append(f"{who:16} {method:7} {template}: {status} (needs {needed})")
    assert not failures, "\n".join(failures)


async def test_without_a_key_every_path_is_401_before_routing(api: Api) -> None:
    """An unknown path or method tells a caller without a key nothing: 401, not 404/405."""
    viewer = await api.add_key("viewer")
    for method, path in [
        ("GET", "/v1/nowhere"),
        ("GET", "/nowhere"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}/nowhere"),
        ("DELETE", "/v1/status"),
        ("PUT", "/v1/jobs"),
    ]:
        anonymous = await api.client.request(method, path)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        known = await api.client.request(method, path, headers=api.auth(viewer))
        assert known.status_code in (404, 405), (method, path, known.text)
        assert known.headers["content-type"].startswith("application/problem+json")
