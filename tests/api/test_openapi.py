"""The OpenAPI document matches what the API does: ids are UUIDs, cursors opaque base64url,
the health endpoints need no key, and `Allow` lists every method a path has."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.conftest import Api

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
PUBLIC_PATHS = {"/healthz", "/readyz"}


async def document(api: Api) -> dict[str, Any]:
    response = await api.client.get("/v1/openapi.json")  # public: no key
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


async def test_ids_are_uuids_and_cursors_base64url(lite_api: Api) -> None:
    doc = await document(lite_api)
    ids = [
        (path, p)
        for path, _, op in operations(doc)
        for p in op.get("parameters", [])
        if p["in"] == "path" and p["name"].endswith("_id")
    ]
    assert {path for path, _ in ids} >= {"/v1/jobs/{job_id}", "/v1/runs/{run_id}", "/v1/runs/{run_id}/cancel"}
    for path, parameter in ids:
        assert parameter["schema"].get("format") == "uuid", (path, parameter)
    cursors = [p for _, _, op in operations(doc) for p in op.get("parameters", []) if p["name"] == "cursor"]
    assert len(cursors) >= 2
    for parameter in cursors:
        schema = parameter["schema"]
        text = next(s for s in schema.get("oneOf", [schema]) if s.get("type") == "string")
        pattern = schema.get("pattern") or text.get("pattern")
        assert pattern == "^[A-Za-z0-9_-]*$", parameter


async def test_live_output_and_attempts_are_described(lite_api: Api) -> None:
    doc = await document(lite_api)
    stream = doc["paths"]["/v1/runs/{run_id}/log/stream"]["get"]["responses"]["200"]
    assert list(stream["content"]) == ["text/event-stream"], stream
    log = doc["paths"]["/v1/runs/{run_id}/log"]["get"]
    attempt = next(p for p in log["parameters"] if p["name"] == "attempt")
    integer = next(
        s for s in attempt["schema"].get("oneOf", [attempt["schema"]]) if s.get("type") == "integer"
    )
    assert (attempt["schema"].get("minimum") or integer.get("minimum")) == 1, attempt


async def test_a_malformed_id_is_still_the_apis_own_422(lite_api: Api) -> None:
    api = lite_api
    for method, path in [
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", "/v1/runs/not-a-uuid"),
        ("POST", "/v1/runs/not-a-uuid/cancel"),
    ]:
        response = await api.client.request(method, path, headers=api.auth())
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["errors"][0]["field"] == "id"


async def test_health_endpoints_are_public_in_the_document(lite_api: Api) -> None:
    doc = await document(lite_api)
    assert doc["security"] == [{"apiKey": []}]
    for path, method, op in operations(doc):
        if path in PUBLIC_PATHS:
            assert op.get("security") == [], (path, method, op.get("security"))
        else:
            assert op.get("security") in (None, [{"apiKey": []}]), (path, method)
            assert "401" in op["responses"], (path, method)
    for path in PUBLIC_PATHS:
        assert (await lite_api.client.get(path)).status_code == 200


async def test_allow_lists_every_method_of_the_path(lite_api: Api) -> None:
    api = lite_api
    doc = await document(api)
    ids = {"{job_id}": str(uuid.uuid4()), "{run_id}": str(uuid.uuid4())}
    for template, item in doc["paths"].items():
        path = template
        for name, value in ids.items():
            path = path.replace(name, value)
        documented = {m.upper() for m in item if m in HTTP_METHODS} | {"OPTIONS"}
        options = await api.client.options(path, headers=api.auth())
        assert options.status_code == 204, (template, options.text)
        assert set(options.headers["allow"].split(", ")) == documented, (template, options.headers)
        unused = next(m for m in ("PUT", "PATCH", "DELETE", "POST") if m not in documented)
        refused = await api.client.request(unused, path, headers=api.auth())
        assert refused.status_code == 405, (unused, template, refused.text)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.headers["allow"].split(", ") == sorted(documented), (unused, template)
