"""Batch create: `POST /v1/jobs` with an array of up to 1000 jobs, all checked before any is
appended, answered in input order."""

from __future__ import annotations

from typing import Any

from cronbus.shared.events import JobCreated, decode_job_event
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP

PING: dict[str, Any] = {
    "name": "ping",
    "schedule": "@every 1m",
    "executor": {"type": "http", "method": "POST", "url": "http://127.0.0.1:9/hook"},
}


def ping(i: int) -> dict[str, Any]:
    return {**PING, "name": f"ping-{i}"}


async def appended(api: Api) -> int:
    info = await api.bus.js.stream_info(api.settings.names.jobs_stream)
    return info.state.messages


async def test_an_array_creates_every_job_in_order(api: Api) -> None:
    body = [ping(i) for i in range(1000)]
    response = await api.client.post("/v1/jobs", json=body, headers=api.auth())

    assert response.status_code == 201, response.text[:2000]
    items = response.json()["items"]
    assert [j["name"] for j in items] == [f"ping-{i}" for i in range(1000)]
    assert len({j["id"] for j in items}) == 1000
    assert all(j["revision"] == 1 and len(j["next_fires"]) == 5 for j in items)
    assert await appended(api) == 1000
    names = api.settings.names
    for job in (items[0], items[517], items[-1]):
        msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job["id"]))
        event = decode_job_event(msg.data or b"")
        assert isinstance(event, JobCreated)
        assert event.spec.name == job["name"]

    await api.project_jobs()
    listed = await api.client.get("/v1/jobs", params={"limit": 200}, headers=api.auth())
    assert len(listed.json()["items"]) == 200


async def test_one_invalid_item_rejects_the_whole_array_naming_each_item(lite_api: Api) -> None:
    body: list[dict[str, Any]] = [ping(i) for i in range(20)]
    body[3] = {**ping(3), "unknownfield": 1}
    body[17] = {**ping(17), "schedule": "61 * * * *"}
    body[18] = {**ping(18), "timeout": "inf", "retries": {"max_attempts": "3"}}
    body[19] = {**ping(19), "timeout": "inf", "labels": {"a": "\x00"}}
    response = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())

    assert response.status_code == 422, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"[3].unknownfield", "[18].retries.max_attempts"} <= fields, fields
    assert await appended(lite_api) == 0

    # Once every item reads, the checks of each item are named the same way.
    body[3], body[18] = ping(3), ping(18)
    response = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())
    assert response.status_code == 422, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"[17].schedule", "[19].timeout", "[19].labels.a"}, fields
    assert await appended(lite_api) == 0


async def test_array_size_is_bounded_and_said(lite_api: Api) -> None:
    too_many = await lite_api.client.post(
        "/v1/jobs", json=[ping(i) for i in range(1001)], headers=lite_api.auth()
    )
    assert 400 <= too_many.status_code < 500, too_many.text[:500]
    assert "1001 jobs" in too_many.text and "1 to 1000" in too_many.text
    empty = await lite_api.client.post("/v1/jobs", json=[], headers=lite_api.auth())
    assert 400 <= empty.status_code < 500
    assert "1 to 1000" in empty.text
    nested = await lite_api.client.post("/v1/jobs", json=[[ping(1)]], headers=lite_api.auth())
    assert nested.status_code == 422, nested.text
    assert nested.json()["errors"][0]["field"] == "[0]"
    assert await appended(lite_api) == 0


async def test_idempotency_key_makes_a_retried_batch_create_each_job_once(lite_api: Api) -> None:
    body = [ping(i) for i in range(50)]
    headers = {**lite_api.auth(), "Idempotency-Key": "seed-batch-1"}
    first = await lite_api.client.post("/v1/jobs", json=body, headers=headers)
    again = await lite_api.client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 201, again.text[:1000]
    assert [j["id"] for j in first.json()["items"]] == [j["id"] for j in again.json()["items"]]
    assert await appended(lite_api) == 50

    # The same key for a different body is refused; a new key creates new jobs.
    other = await lite_api.client.post("/v1/jobs", json=[ping(i + 1) for i in range(50)], headers=headers)
    assert other.status_code == 422, other.text[:1000]
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    fresh = await lite_api.client.post(
        "/v1/jobs", json=body, headers={**lite_api.auth(), "Idempotency-Key": "seed-batch-2"}
    )
    assert fresh.status_code == 201
    assert await appended(lite_api) == 100

    # A single job with a key is idempotent too.
    one = [
        await lite_api.client.post(
            "/v1/jobs", json=BACKUP, headers={**lite_api.auth(), "Idempotency-Key": "b"}
        )
        for _ in range(2)
    ]
    assert one[0].status_code == one[1].status_code == 201
    assert one[0].json()["id"] == one[1].json()["id"]
    assert await appended(lite_api) == 101


async def test_openapi_describes_both_forms(lite_api: Api) -> None:
    document = (await lite_api.client.get("/v1/openapi.json")).json()
    operation = document["paths"]["/v1/jobs"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    forms = schema.get("oneOf") or schema.get("anyOf")
    assert forms is not None, schema
    arrays = [f for f in forms if f.get("type") == "array"]
    objects = [f for f in forms if "$ref" in f]
    assert len(arrays) == 1 and len(objects) == 1, forms
    assert "1 to 1000" in operation["description"]
    assert arrays[0]["items"]["$ref"] == objects[0]["$ref"]
    answers = operation["responses"]["201"]["content"]["application/json"]["schema"]
    refs = {f.get("$ref", "").rsplit("/", 1)[-1] for f in answers.get("oneOf", answers.get("anyOf", []))}
    assert {"JobOut", "JobBatch"} <= refs, answers
