"""Secret values are write-only: every job answer shows "***" for them, to every role, while
the stream (and so each run) keeps the real value; a "***" sent back keeps it."""

from __future__ import annotations

from typing import Any

from cronbus.shared.events import HttpExecutor, ShellExecutor, decode_dispatch, decode_job_event
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP

TOKEN = "Bearer s3cret-token-value"
API_KEY = "key-0123456789"
PASSWORD = "hunter2-password"

HOOK: dict[str, Any] = {
    **BACKUP,
    "name": "hook",
    "executor": {
        "type": "http",
        "url": "http://127.0.0.1:9/hook",
        "headers": {"Authorization": TOKEN, "X-Api-Key": API_KEY, "X-Trace": "visible", "X-Tenant": "acme"},
        "secrets": ["x-tenant"],
    },
}
DUMP: dict[str, Any] = {
    **BACKUP,
    "executor": {
        "type": "shell",
        "command": "pg_dump db",
        "env": {"PGPASSWORD": PASSWORD, "PGUSER": "backup"},
        "secrets": ["PGPASSWORD"],
    },
}
HIDDEN_HOOK = {"Authorization": "***", "X-Api-Key": "***", "X-Trace": "visible", "X-Tenant": "***"}
HIDDEN_DUMP = {"PGPASSWORD": "***", "PGUSER": "backup"}


def executor_of(job: dict[str, Any]) -> dict[str, str]:
    executor = job["executor"]
    values: dict[str, str] = executor["headers"] if executor["type"] == "http" else executor["env"]
    return values


async def stored(api: Api, job_id: str) -> HttpExecutor | ShellExecutor:
    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.jobs_stream, names.job_subject(job_id))
    event = decode_job_event(msg.data or b"")
    spec = getattr(event, "spec", None)
    assert spec is not None, event
    return spec.executor


async def test_every_answer_masks_secrets_for_every_role(api: Api) -> None:
    viewer = api.auth(await api.add_key("viewer"))
    operator = api.auth(await api.add_key("operator"))
    hook = await api.client.post("/v1/jobs", json=HOOK, headers=api.auth())
    dump = await api.client.post("/v1/jobs", json=DUMP, headers=api.auth())
    assert hook.status_code == dump.status_code == 201, hook.text + dump.text
    assert executor_of(hook.json()) == HIDDEN_HOOK  # the admin who wrote them too: write-only
    assert executor_of(dump.json()) == HIDDEN_DUMP
    assert dump.json()["executor"]["secrets"] == ["PGPASSWORD"]
    hook_id, dump_id = hook.json()["id"], dump.json()["id"]

    # The stream keeps the real values: that is what a runner gets.
    hook_spec = await stored(api, hook_id)
    assert isinstance(hook_spec, HttpExecutor)
    assert hook_spec.headers["Authorization"] == TOKEN
    assert hook_spec.headers["X-Api-Key"] == API_KEY
    dump_spec = await stored(api, dump_id)
    assert isinstance(dump_spec, ShellExecutor)
    assert dump_spec.env["PGPASSWORD"] == PASSWORD

    await api.project_jobs()
    for headers in (viewer, operator, api.auth()):
        listed = await api.client.get("/v1/jobs", headers=headers)
        assert listed.status_code == 200, listed.text
        by_name = {j["name"]: j for j in listed.json()["items"]}
        assert executor_of(by_name["hook"]) == HIDDEN_HOOK
        assert executor_of(by_name["backup"]) == HIDDEN_DUMP
        one = await api.client.get(f"/v1/jobs/{dump_id}", headers=headers)
        assert executor_of(one.json()) == HIDDEN_DUMP
        assert PASSWORD not in one.text and PASSWORD not in listed.text and TOKEN not in listed.text

    paused = await api.client.post(f"/v1/jobs/{hook_id}/pause", headers=operator)
    resumed = await api.client.post(f"/v1/jobs/{hook_id}/resume", headers=operator)
    assert executor_of(paused.json()) == executor_of(resumed.json()) == HIDDEN_HOOK

    run = await api.client.post(f"/v1/jobs/{dump_id}/runs", headers=operator)
    assert run.status_code == 202, run.text
    names = api.settings.names
    msg = await api.bus.js.get_last_msg(names.dispatch_stream, names.dispatch_subject("default", dump_id))
    dispatched = decode_dispatch(msg.data or b"")
    assert isinstance(dispatched.spec.executor, ShellExecutor)
    assert dispatched.spec.executor.env["PGPASSWORD"] == PASSWORD


async def test_a_job_read_and_sent_back_keeps_its_secrets(api: Api) -> None:
    hook = (await api.client.post("/v1/jobs", json=HOOK, headers=api.auth())).json()
    dump = (await api.client.post("/v1/jobs", json=DUMP, headers=api.auth())).json()

    # Round trip: the executor exactly as read ("***" included), with one visible change.
    executor = {k: v for k, v in hook["executor"].items()}
    executor["headers"] = {**executor["headers"], "x-trace": "changed"}
    del executor["headers"]["X-Trace"]
    changed = await api.client.patch(
        f"/v1/jobs/{hook['id']}", json={"executor": executor}, headers=api.auth()
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["executor"]["headers"]["x-trace"] == "changed"
    spec = await stored(api, hook["id"])
    assert isinstance(spec, HttpExecutor)
    assert spec.headers["Authorization"] == TOKEN
    assert spec.headers["X-Api-Key"] == API_KEY
    assert spec.headers["X-Tenant"] == "acme"

    # A new value replaces the secret; "***" for a value that was not secret stays literal.
    env = {"PGPASSWORD": "new-password", "PGUSER": "***"}
    replaced = await api.client.patch(
        f"/v1/jobs/{dump['id']}",
        json={"executor": {**dump["executor"], "env": env}, "name": "renamed"},
        headers=api.auth(),
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["executor"]["env"] == HIDDEN_DUMP | {"PGUSER": "***"}
    spec = await stored(api, dump["id"])
    assert isinstance(spec, ShellExecutor)
    assert spec.env == {"PGPASSWORD": "new-password", "PGUSER": "***"}

    # Changing other fields leaves the executor, and its secrets, as they were.
    renamed = await api.client.patch(f"/v1/jobs/{dump['id']}", json={"name": "again"}, headers=api.auth())
    assert renamed.status_code == 200, renamed.text
    spec = await stored(api, dump["id"])
    assert isinstance(spec, ShellExecutor)
    assert spec.env["PGPASSWORD"] == "new-password"


async def test_a_masked_secret_without_a_stored_value_is_refused(lite_api: Api) -> None:
    """ "***" keeps a stored secret; a new job (say, made from an export) has none to keep."""
    body = {
        "name": "from-export",
        "schedule": "0 3 * * *",
        "executor": {"type": "http", "url": "http://127.0.0.1:9/x", "headers": {"Authorization": "***"}},
    }
    answer = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "executor.headers.Authorization"
