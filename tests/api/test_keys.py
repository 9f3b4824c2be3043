"""API keys made through the API: shown once, stored hashed, listed without secrets, revoked
everywhere at once; bad input, expired and revoked keys each get an answer that says why."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js.kv import KeyValue

from cronbus.api.keys import key_hash
from cronbus.shared.settings import Settings
from tests.api.conftest import Api, _api
from tests.api.test_jobs import BACKUP
from tests.support import wait_for


async def make_key(api: Api, name: str, role: str, **extra: str) -> dict[str, str]:
    answer = await api.client.post("/v1/keys", json={"name": name, "role": role, **extra}, headers=api.auth())
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def bucket(api: Api) -> KeyValue:
    return await api.bus.js.key_value(api.settings.names.keys_bucket)


async def test_a_key_is_shown_once_stored_hashed_and_works_for_its_role(lite_api: Api) -> None:
    api = lite_api
    made = await make_key(api, "grafana", "viewer")
    assert set(made) == {"id", "name", "role", "created_at", "expires_at", "key"}
    assert made["name"] == "grafana" and made["role"] == "viewer" and made["expires_at"] is None
    secret = made["key"]
    assert secret.startswith("cb_") and len(secret) > 40

    # The bucket holds the digest, never the secret.
    entry = await (await bucket(api)).get(made["id"])
    assert entry.value is not None
    assert secret.encode() not in entry.value
    assert key_hash(secret).encode() in entry.value

    viewer = api.auth(secret)
    assert (await api.client.get("/v1/jobs", headers=viewer)).status_code == 200
    denied = await api.client.post("/v1/jobs", json=BACKUP, headers=viewer)
    assert denied.status_code == 403
    assert "grafana" in denied.json()["detail"]

    listed = await api.client.get("/v1/keys", headers=api.auth())
    assert listed.status_code == 200
    [item] = [k for k in listed.json()["items"] if k["id"] == made["id"]]
    assert "key" not in item and "key_hash" not in item
    assert item["created_by"] == "admin" and item["revoked_at"] is None
    assert secret not in listed.text

    # Keys of the other kinds keep working: the bootstrap admin key and the api_keys table.
    table_key = await api.add_key("operator", name="legacy")
    assert (await api.client.get("/v1/jobs", headers=api.auth(table_key))).status_code == 200
    assert (await api.client.get("/v1/keys", headers=api.auth())).status_code == 200


async def test_revoked_key_is_refused_with_a_detail_that_says_so(lite_api: Api) -> None:
    api = lite_api
    made = await make_key(api, "ci", "operator")
    headers = api.auth(made["key"])
    assert (await api.client.get("/v1/jobs", headers=headers)).status_code == 200

    assert (await api.client.delete(f"/v1/keys/{made['id']}", headers=api.auth())).status_code == 204
    refused = await api.client.get("/v1/jobs", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"] and "ci" in refused.json()["detail"]
    # Again is fine; the key stays revoked as it was.
    listed = {k["id"]: k for k in (await api.client.get("/v1/keys", headers=api.auth())).json()["items"]}
    revoked_at = listed[made["id"]]["revoked_at"]
    assert revoked_at is not None
    assert (await api.client.delete(f"/v1/keys/{made['id']}", headers=api.auth())).status_code == 204
    listed = {k["id"]: k for k in (await api.client.get("/v1/keys", headers=api.auth())).json()["items"]}
    assert listed[made["id"]]["revoked_at"] == revoked_at

    unknown = await api.client.delete(f"/v1/keys/{uuid.uuid4()}", headers=api.auth())
    assert unknown.status_code == 404
    malformed = await api.client.delete("/v1/keys/not-an-id", headers=api.auth())
    assert malformed.status_code == 422


async def test_expired_key_is_refused_with_a_detail_that_says_so(lite_api: Api) -> None:
    api = lite_api
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    made = await make_key(api, "temp", "viewer", expires_at=expires.isoformat())
    assert datetime.fromisoformat(made["expires_at"]) == expires
    headers = api.auth(made["key"])
    assert (await api.client.get("/v1/jobs", headers=headers)).status_code == 200

    async def refused() -> bool:
        return (await api.client.get("/v1/jobs", headers=headers)).status_code == 401

    await wait_for(refused, timeout=10, interval=0.1, what="the key expired")
    answer = await api.client.get("/v1/jobs", headers=headers)
    assert "expired" in answer.json()["detail"] and "temp" in answer.json()["detail"]


async def test_bad_key_input_names_the_field(lite_api: Api) -> None:
    api = lite_api
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    cases = [
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "role": "viewer", "expires_at": past}, "expires_at"),
        ({"name": "x", "role": "viewer", "expires_at": "2099-01-01T00:00:00"}, "expires_at"),
        ({"name": "x", "role": "viewer", "expires_at": "tomorrow"}, "expires_at"),
        ({"name": "bad\nname", "role": "viewer"}, "name"),
        ({"name": "  ", "role": "viewer"}, "name"),
        ({"name": "x" * 201, "role": "viewer"}, "name"),
    ]
    for body, field in cases:
        answer = await api.client.post("/v1/keys", json=body, headers=api.auth())
        assert answer.status_code == 422, (body, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == [field], (body, answer.text)
    typo = await api.client.post(
        "/v1/keys", json={"name": "x", "role": "viewer", "rol": "x"}, headers=api.auth()
    )
    assert typo.status_code in (400, 422), typo.text
    # Nothing was made.
    assert (await api.client.get("/v1/keys", headers=api.auth())).json()["items"] == []


async def test_a_key_revoked_on_one_replica_is_refused_by_another_within_a_second(
    settings: Settings, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'api.db'}"
    async with contextlib.AsyncExitStack() as stack:
        one = await stack.enter_async_context(contextlib.asynccontextmanager(_api)(settings, db_url))
        two = await stack.enter_async_context(contextlib.asynccontextmanager(_api)(settings, db_url))
        assert one.client.base_url != two.client.base_url

        made = await make_key(one, "shared", "viewer")
        headers = one.auth(made["key"])

        async def works_on_two() -> bool:
            return (await two.client.get("/v1/jobs", headers=headers)).status_code == 200

        await wait_for(works_on_two, timeout=1.0, interval=0.01, what="the new key works on replica two")

        assert (await one.client.delete(f"/v1/keys/{made['id']}", headers=one.auth())).status_code == 204
        revoked = time.monotonic()

        async def refused_by_two() -> bool:
            return (await two.client.get("/v1/jobs", headers=headers)).status_code == 401

        await wait_for(refused_by_two, timeout=5.0, interval=0.01, what="replica two refuses the revoked key")
        took = time.monotonic() - revoked
        assert took < 1.0, f"replica two accepted the revoked key for {took:.3f}s"
        listed = (await two.client.get("/v1/keys", headers=two.auth())).json()["items"]
        assert [k["revoked_at"] is not None for k in listed] == [True]
