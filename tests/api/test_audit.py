"""The audit log: every kind of change shows up in GET /v1/audit with the key's name as its
actor, once the logs service has projected it; the filters and paging work. On SQLite and
PostgreSQL, with the real api and logs services over one nats-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from cronbus.shared.history.schema import projector_positions
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP, create
from tests.api.test_keys import make_key
from tests.logs.harness import running_logs
from tests.support import wait_for

CRONTAB = "MAILTO=ops@example.com\n*/5 * * * * echo one\n@daily echo two\n@reboot echo never\n"


async def audit(api: Api, **params: Any) -> dict[str, Any]:
    answer = await api.client.get("/v1/audit", params=params, headers=api.auth())
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


async def test_every_change_is_audited_with_its_actor_and_the_filters_work(api: Api) -> None:
    async with running_logs(api.settings):
        alice = api.auth((await make_key(api, "alice", "admin"))["key"])

        created = await api.client.post("/v1/jobs", json=BACKUP, headers=alice)
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        url = f"/v1/jobs/{job_id}"
        assert (
            await api.client.patch(url, json={"description": "nightly"}, headers=alice)
        ).status_code == 200
        assert (await api.client.post(f"{url}/pause", headers=alice)).status_code == 200
        middle = datetime.now(UTC)
        assert (await api.client.post(f"{url}/resume", headers=alice)).status_code == 200
        run = await api.client.post(f"{url}/runs", headers=alice)
        assert run.status_code == 202, run.text
        run_id = run.json()["id"]

        async def projected() -> bool:
            return (await api.client.get(f"/v1/runs/{run_id}", headers=alice)).status_code == 200

        await wait_for(projected, timeout=10, what="the run in the history")
        cancelled = await api.client.post(f"/v1/runs/{run_id}/cancel", headers=alice)
        assert cancelled.status_code == 202, cancelled.text
        now = datetime.now(UTC)
        window = {"from": (now - timedelta(days=2)).isoformat(), "to": now.isoformat()}
        backfilled = await api.client.post(f"{url}/backfill", json=window, headers=alice)
        assert backfilled.status_code == 200, backfilled.text
        imported = await api.client.post(
            "/v1/import/crontab", content=CRONTAB, headers={**alice, "Content-Type": "text/plain"}
        )
        assert imported.status_code == 201, imported.text
        assert (await api.client.delete(url, headers=alice)).status_code == 204

        temp = await make_key(
            api, "temp", "viewer", expires_at=(datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        )

        async def expired() -> bool:
            answer = await api.client.get("/v1/jobs", headers=api.auth(temp["key"]))
            return answer.status_code == 401

        await wait_for(expired, timeout=10, interval=0.1, what="the temp key expired")
        assert (await api.client.delete(f"/v1/keys/{temp['id']}", headers=api.auth())).status_code == 204

        wanted = {
            ("admin", "key.created", None),
            ("alice", "job.created", job_id),
            ("alice", "job.updated", job_id),
            ("alice", "job.paused", job_id),
            ("alice", "job.resumed", job_id),
            ("alice", "run.requested", job_id),
            ("alice", "run.cancel_requested", None),
            ("alice", "job.backfilled", job_id),
            ("alice", "crontab.imported", None),
            ("alice", "job.deleted", job_id),
            ("temp", "key.expired_used", None),
            ("admin", "key.revoked", None),
        }

        async def everything() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = (await audit(api, limit=200))["items"]
            seen = {(i["actor"], i["action"], i["job_id"]) for i in items}
            return items if wanted <= seen else None

        items = await wait_for(everything, timeout=20, interval=0.1, what="every change in the audit log")

    # Newest first; each record says what it is about.
    times = [datetime.fromisoformat(i["at"]) for i in items]
    assert times == sorted(times, reverse=True)
    by_action = {i["action"]: i for i in items}
    assert by_action["job.created"]["revision"] is not None
    assert by_action["job.deleted"]["revision"] == 5
    assert by_action["run.requested"]["detail"] == {"run_id": run_id}
    assert by_action["run.cancel_requested"]["detail"] == {"run_id": run_id}
    assert by_action["job.backfilled"]["detail"]["slots"] == 2
    assert by_action["crontab.imported"]["detail"]["jobs"] == 2
    assert by_action["crontab.imported"]["detail"]["skipped"] == 1
    assert by_action["key.revoked"]["detail"]["key_id"] == temp["id"]
    assert by_action["key.expired_used"]["detail"]["key_id"] == temp["id"]
    # Importing made two jobs: their job.created records are alice's too.
    assert sum(1 for i in items if i["action"] == "job.created") == 3
    assert [i for i in items if i["action"] == "key.expired_used"] == [by_action["key.expired_used"]]

    # Filters.
    of_job = (await audit(api, job_id=job_id))["items"]
    assert [i["action"] for i in of_job] == [
        "job.deleted",
        "job.backfilled",
        "run.requested",
        "job.resumed",
        "job.paused",
        "job.updated",
        "job.created",
    ]
    assert {i["actor"] for i in (await audit(api, actor="alice"))["items"]} == {"alice"}
    assert len((await audit(api, actor="alice"))["items"]) == 11
    assert [i["job_id"] for i in (await audit(api, action="job.paused"))["items"]] == [job_id]
    since = (await audit(api, since=middle.isoformat(), job_id=job_id))["items"]
    assert [i["action"] for i in since] == ["job.deleted", "job.backfilled", "run.requested", "job.resumed"]
    assert (await audit(api, actor="nobody"))["items"] == []

    # Paging: pages of 2 give every record once, in the same order.
    paged: list[dict[str, Any]] = []
    cursor = None
    for _ in range(len(items)):
        page = await audit(api, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["items"]) <= 2
        paged.extend(page["items"])
        cursor = page["next"]
        if cursor is None:
            break
    assert paged == items


async def test_bad_audit_queries_name_the_parameter(lite_api: Api) -> None:
    api = lite_api
    for params, field in [
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"cursor": "nope"}, "cursor"),
        ({"actor": "a\nb"}, "actor"),
    ]:
        answer = await api.client.get("/v1/audit", params=params, headers=api.auth())
        assert answer.status_code == 422, (params, answer.text)
        assert [e["field"] for e in answer.json()["errors"]] == [field], answer.text
    for limit in (0, 201):
        answer = await api.client.get("/v1/audit", params={"limit": limit}, headers=api.auth())
        assert answer.status_code == 422, answer.text
    viewer = await api.add_key("viewer")
    assert (await api.client.get("/v1/audit", headers=api.auth(viewer))).status_code == 403


async def test_replaying_the_streams_records_each_action_once(api: Api) -> None:
    """The projectors' positions are lost: JOBS and AUDIT are applied again from the start, and
    the audit log is what it was (a record is keyed by its event id)."""

    async def records() -> list[dict[str, Any]]:
        return list((await audit(api, limit=200))["items"])

    async with running_logs(api.settings):
        await make_key(api, "bob", "operator")
        job = await create(api)
        assert (await api.client.post(f"/v1/jobs/{job['id']}/runs", headers=api.auth())).status_code == 202
        before = await wait_for(
            lambda: _at_least(records, 3), timeout=20, interval=0.1, what="three audit records"
        )
    assert sorted(i["action"] for i in before) == ["job.created", "key.created", "run.requested"]

    async with api.engine.begin() as conn:
        await conn.execute(delete(projector_positions))
    names = api.settings.names
    async with running_logs(api.settings):

        async def replayed() -> bool:
            async with api.engine.connect() as conn:
                found = dict(
                    (
                        await conn.execute(
                            select(projector_positions.c.consumer, projector_positions.c.stream_seq)
                        )
                    ).all()
                )
            jobs_seq = (await api.bus.js.stream_info(names.jobs_stream)).state.last_seq
            audit_seq = (await api.bus.js.stream_info(names.audit_stream)).state.last_seq
            return found.get("logs-jobs") == jobs_seq and found.get("logs-audit") == audit_seq

        await wait_for(replayed, timeout=20, interval=0.1, what="JOBS and AUDIT projected again")
    assert await records() == before


async def _at_least(records: Any, count: int) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = await records()
    return found if len(found) >= count else None
