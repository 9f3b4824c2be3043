"""Bad input gets a problem (RFC 9457) naming the field and what to do, never a 500, and
nothing is appended to JOBS for it."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import insert

from cronbus.shared.events import Catchup, JobSpec, Retries, ShellExecutor
from cronbus.shared.history.schema import jobs
from tests.api.conftest import Api
from tests.api.test_jobs import BACKUP

KIB = 1024
SHELL = BACKUP["executor"]
HTTP = {"type": "http", "url": "http://127.0.0.1:9/hook"}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in BACKUP.items() if k != key}


def shell(**fields: Any) -> dict[str, Any]:
    return {**BACKUP, "executor": {**SHELL, **fields}}


def http(**fields: Any) -> dict[str, Any]:
    return {**BACKUP, "executor": {**HTTP, **fields}}


async def appended(api: Api) -> int:
    info = await api.bus.js.stream_info(api.settings.names.jobs_stream)
    return info.state.messages


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
    # Durations: finite, not negative, each with a maximum.
    ("timeout 1e308", {**BACKUP, "timeout": 1e308}, "timeout", "at most 7d"),
    ("timeout inf", {**BACKUP, "timeout": "inf"}, "timeout", "not a finite duration"),
    ("timeout nan", {**BACKUP, "timeout": "nan"}, "timeout", "not a finite duration"),
    ("timeout -1", {**BACKUP, "timeout": -1}, "timeout", "negative"),
    ("timeout 8d", {**BACKUP, "timeout": "8d"}, "timeout", "at most 7d"),
    ("timeout huge units", {**BACKUP, "timeout": "99999999999999999999d"}, "timeout", "at most 7d"),
    ("timeout bool", {**BACKUP, "timeout": True}, "timeout", "got `bool`"),
    ("jitter 1e308", {**BACKUP, "jitter": 1e308}, "jitter", "at most 1d"),
    ("jitter nan", {**BACKUP, "jitter": "nan"}, "jitter", "not a finite duration"),
    ("jitter 2d", {**BACKUP, "jitter": "2d"}, "jitter", "at most 1d"),
    ("backoff inf", {**BACKUP, "retries": {"backoff": "inf"}}, "retries.backoff", "not a finite"),
    ("backoff 1e308", {**BACKUP, "retries": {"backoff": 1e308}}, "retries.backoff", "at most 1d"),
    ("backoff -1", {**BACKUP, "retries": {"backoff": -1}}, "retries.backoff", "negative"),
    ("max_backoff nan", {**BACKUP, "retries": {"max_backoff": "nan"}}, "retries.max_backoff", "not a finite"),
    ("max_backoff 1e308", {**BACKUP, "retries": {"max_backoff": 1e308}}, "retries.max_backoff", "at most 7d"),
    ("window inf", {**BACKUP, "catchup": {"window": "inf"}}, "catchup.window", "not a finite"),
    ("window 1e308", {**BACKUP, "catchup": {"window": 1e308}}, "catchup.window", "at most 7d"),
    ("window -1", {**BACKUP, "catchup": {"window": "-1"}}, "catchup.window", "negative"),
    # Retries: strict integers, bounded numbers.
    ("attempts as a string", {**BACKUP, "retries": {"max_attempts": "3"}}, "retries.max_attempts",
     "Expected `int`, got `str`"),
    ("attempts as a bool", {**BACKUP, "retries": {"max_attempts": True}}, "retries.max_attempts",
     "Expected `int`, got `bool`"),
    ("attempts as a float", {**BACKUP, "retries": {"max_attempts": 2.5}}, "retries.max_attempts",
     "Expected `int`, got `float`"),
    ("zero attempts", {**BACKUP, "retries": {"max_attempts": 0}}, "retries.max_attempts",
     "1 (no retries) to 100"),
    ("too many attempts", {**BACKUP, "retries": {"max_attempts": 101}}, "retries.max_attempts", "to 100"),
    ("10^30 attempts", {**BACKUP, "retries": {"max_attempts": 10**30}}, "retries.max_attempts", ""),
    ("multiplier 1e308", {**BACKUP, "retries": {"multiplier": 1e308}}, "retries.multiplier", "to 100"),
    ("multiplier below 1", {**BACKUP, "retries": {"multiplier": 0.5}}, "retries.multiplier", "1 (fixed"),
    ("multiplier string", {**BACKUP, "retries": {"multiplier": "2"}}, "retries.multiplier",
     "Expected `float`"),
    ("runs as a string", {**BACKUP, "retention": {"runs": "5"}}, "retention.runs", "Expected `int | null`"),
    # Dates: with a zone, within 1970-2200, end after start.
    ("start in 9999", {**BACKUP, "start_at": "9999-01-01T00:00:00Z"}, "start_at", "outside 1970 to 2200"),
    ("start in year 1", {**BACKUP, "start_at": "0001-01-01T00:00:00Z"}, "start_at", "outside 1970 to 2200"),
    ("end in 2201", {**BACKUP, "end_at": "2201-01-01T00:00:00Z"}, "end_at", "outside 1970 to 2200"),
    ("naive end", {**BACKUP, "end_at": "2030-01-01T00:00:00"}, "end_at", "UTC offset"),
    ("end before start", {**BACKUP, "start_at": "2031-01-01T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"},
     "end_at", "after start_at"),
    ("not a date", {**BACKUP, "start_at": "soon"}, "start_at", "Invalid RFC3339"),
    # Schedules.
    ("backwards range", {**BACKUP, "schedule": "1-0 * * * *"}, "schedule", "runs backwards"),
    ("huge step", {**BACKUP, "schedule": "*/99999999999 * * * *"}, "schedule", "must be 1 to 60"),
    ("huge interval", {**BACKUP, "schedule": "@every 99999999999999999999d"}, "schedule", "366d"),
    ("interval above the maximum", {**BACKUP, "schedule": "@every 367d"}, "schedule", "366d"),
    ("nan interval", {**BACKUP, "schedule": "@every nan"}, "schedule", "not a finite"),
    ("zero interval", {**BACKUP, "schedule": "@every 0s"}, "schedule", "at least 1s"),
    ("at year 1", {**BACKUP, "schedule": "@at 0001-01-01T00:00:00Z"}, "schedule", "1970 to 2200"),
    ("at year 9999", {**BACKUP, "schedule": "@at 9999-12-31T23:59:59"}, "schedule", "1970 to 2200"),
    ("NUL in schedule", {**BACKUP, "schedule": "0 3 * * *\x00"}, "schedule", "control characters"),
    ("schedule of 2000 chars", {**BACKUP, "schedule": "0 " + "1," * 1000 + "1 * * *"}, "schedule",
     "at most 1000"),
    # Time zones: IANA names only.
    ("zone posixrules", {**BACKUP, "timezone": "posixrules"}, "timezone", "IANA"),
    ("zone localtime", {**BACKUP, "timezone": "localtime"}, "timezone", "IANA"),
    ("zone Factory", {**BACKUP, "timezone": "Factory"}, "timezone", "IANA"),
    ("zone right/UTC", {**BACKUP, "timezone": "right/UTC"}, "timezone", "IANA"),
    ("zone posix/", {**BACKUP, "timezone": "posix/Europe/Berlin"}, "timezone", "IANA"),
    ("zone longer than a file name", {**BACKUP, "timezone": "x" * 300}, "timezone", "300 characters"),
    ("zone with NUL", {**BACKUP, "timezone": "UTC\x00"}, "timezone", "IANA"),
    ("zone path", {**BACKUP, "timezone": "../../etc/passwd"}, "timezone", "IANA"),
    # No NUL or control characters where they cannot work.
    ("NUL in name", {**BACKUP, "name": "a\x00b"}, "name", "NUL"),
    ("newline in name", {**BACKUP, "name": "a\nb"}, "name", "control character"),
    ("NUL in label name", {**BACKUP, "labels": {"team\x00": "x"}}, "labels.team\\x00", "NUL"),
    ("NUL in label value", {**BACKUP, "labels": {"team": "a\x00"}}, "labels.team", "NUL"),
    ("empty label name", {**BACKUP, "labels": {"": "x"}}, "labels.", "empty label name"),
    ("NUL in description", {**BACKUP, "description": "a\x00"}, "description", "NUL"),
    ("escape in description", {**BACKUP, "description": "a\x1b[31m"}, "description", "control character"),
    ("NUL in pool", {**BACKUP, "pool": "a\x00"}, "pool", ""),
    ("NUL in command", shell(command="echo \x00"), "executor.command", "NUL"),
    ("NUL in an argument", shell(command=["echo", "a\x00"]), "executor.command[1]", "NUL"),
    ("NUL in env value", shell(env={"FOO": "a\x00"}), "executor.env.FOO", "NUL"),
    ("env name with a digit first", shell(env={"1FOO": "x"}), "executor.env.1FOO", "not a variable name"),
    ("env name with =", shell(env={"A=B": "x"}), "executor.env.A=B", "not a variable name"),
    ("NUL in cwd", shell(cwd="/tmp\x00"), "executor.cwd", "NUL"),
    ("NUL in url", http(url="http://127.0.0.1/\x00"), "executor.url", "NUL"),
    ("CRLF in header", http(headers={"X-A": "a\r\nInjected: 1"}), "executor.headers.X-A",
     "control character"),
    ("bad header name", http(headers={"Bad Name": "x"}), "executor.headers.Bad Name", "not a header name"),
    ("NUL in http body", http(body="a\x00"), "executor.body", "NUL"),
    ("unknown secret", shell(env={"FOO": "x"}, secrets=["FO0"]), "executor.secrets", "not one of"),
    ("secret header not sent", http(secrets=["X-Auth"]), "executor.secrets", "not one of"),
    # Sizes: what execve, NATS and the database can carry; the answer states the limit.
    ("name of 201", {**BACKUP, "name": "n" * 201}, "name", "at most 200"),
    ("command of 200 KB", shell(command="x" * 200_000), "executor.command", "at most 131071"),
    ("command of 1 MB", shell(command="x" * 1_000_000), "executor.command", "at most 131071"),
    ("argument of 200 KB", shell(command=["echo", "x" * 200_000]), "executor.command[1]", "at most 131071"),
    ("env entry of 200 KB", shell(env={"BIG": "x" * 200_000}), "executor.env.BIG", "at most 131071"),
    ("command and env together", shell(command="x" * 100_000, env={"A": "y" * 100_000}), "executor.command",
     "at most 196608"),
    ("description of 17 KiB", {**BACKUP, "description": "d" * 17 * KIB}, "description", "at most 16384"),
    ("description of 1 MB", {**BACKUP, "description": "d" * 1_000_000}, "description", "at most 16384"),
    ("65 labels", {**BACKUP, "labels": {f"k{i}": "v" for i in range(65)}}, "labels", "at most 64"),
    ("long label value", {**BACKUP, "labels": {"k": "v" * 1001}}, "labels.k", "at most 1000"),
    ("http body of 200 KB", http(body="b" * 200_000), "executor.body", "at most 131072"),
    ("101 headers", http(headers={f"X-{i}": "v" for i in range(101)}), "executor.headers", "at most 100"),
    ("huge response cap", http(max_body_bytes=2**40), "executor.max_body_bytes", "at most"),
    ("event over 256 KiB", {**BACKUP, "description": "d" * 16_000,
                            "labels": {f"k{i}": "v" * 1000 for i in range(64)},
                            "executor": {**SHELL, "command": "x" * 120_000, "env": {"V": "y" * 70_000}}},
     "body", "at most 262144"),
]  # fmt: skip


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
    assert await appended(lite_api) == 0  # nothing was appended


def change(body: dict[str, Any]) -> dict[str, Any]:
    """What `body` changes in BACKUP (a case that only leaves a field out changes nothing)."""
    return {k: v for k, v in body.items() if k not in BACKUP or BACKUP[k] != v}


CHANGES = [(name, change(body), field, reason) for name, body, field, reason in CASES if change(body)]


@pytest.mark.parametrize(("body", "field", "reason"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
async def test_bad_change_is_a_problem_and_appends_nothing(
    lite_api: Api, body: dict[str, Any], field: str, reason: str
) -> None:
    """PATCH goes through the same gate: a bad field in a change is refused the same way."""
    created = await lite_api.client.post("/v1/jobs", json=BACKUP, headers=lite_api.auth())
    assert created.status_code == 201, created.text
    response = await lite_api.client.patch(
        f"/v1/jobs/{created.json()['id']}", json=body, headers=lite_api.auth()
    )
    assert response.status_code == 422, response.text
    assert any(e["field"] == field and reason in e["reason"] for e in response.json()["errors"]), (
        response.text
    )
    assert await appended(lite_api) == 1  # only the create


async def test_jobs_at_every_limit_are_accepted(lite_api: Api) -> None:
    """The limits are limits, not off by one: a job at each of them is created."""
    body = {
        **BACKUP,
        "name": "n" * 200,
        "timeout": "7d",
        "jitter": "1d",
        "catchup": {"policy": "all", "window": "7d"},
        "retries": {"max_attempts": 100, "backoff": "1d", "multiplier": 100, "max_backoff": "7d"},
        "start_at": "1970-01-01T00:00:00Z",
        "end_at": "2200-12-31T00:00:00Z",
        "description": "line one\n\tline two\r\n" + "d" * (16 * KIB - 22),
        "labels": {f"k{i}": "v" * 100 for i in range(64)},
        "timezone": "America/Argentina/Buenos_Aires",
        "executor": {**SHELL, "command": "echo one\necho two\t" + "x" * (128 * KIB - 100),
                     "env": {"_A1": "multi\nline"}, "secrets": ["_A1"]},
    }  # fmt: skip
    response = await lite_api.client.post("/v1/jobs", json=body, headers=lite_api.auth())
    assert response.status_code == 201, response.text[:2000]
    for zone in ("UTC", "Europe/Berlin", "Etc/GMT+5"):
        response = await lite_api.client.post(
            "/v1/jobs", json={**BACKUP, "timezone": zone}, headers=lite_api.auth()
        )
        assert response.status_code == 201, response.text
    assert await appended(lite_api) == 4


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"name": "x", "description": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001, "nested too"),
        (b'{"name": "\xff\xfe", "schedule": "* * * * *", "executor": {"type": "shell", "command": "x"}}',
         "UTF-8"),
        (b"{not json", "JSON"),
    ],
    ids=["deep array", "deep object", "invalid UTF-8", "not JSON"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_unreadable_bodies_are_400(lite_api: Api, content: bytes, says: str, method: str) -> None:
    path = "/v1/jobs" if method == "POST" else f"/v1/jobs/{uuid.uuid4()}"
    response = await lite_api.client.request(
        method, path, content=content, headers={**lite_api.auth(), "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert says in response.json()["detail"]
    assert await appended(lite_api) == 0


@pytest.mark.parametrize("content", [b'"a job"', b"5", b"null", b"true"])
async def test_a_body_that_is_neither_a_job_nor_an_array_says_what_to_send(
    lite_api: Api, content: bytes
) -> None:
    response = await lite_api.client.post(
        "/v1/jobs", content=content, headers={**lite_api.auth(), "Content-Type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.text
    assert "an array of 1 to 1000 job objects" in response.text
    assert await appended(lite_api) == 0


async def test_long_idempotency_keys_are_refused(lite_api: Api) -> None:
    created = await lite_api.client.post("/v1/jobs", json=BACKUP, headers=lite_api.auth())
    job_id = created.json()["id"]
    for key in ("k" * 201, "k" * 100_000):
        headers = {**lite_api.auth(), "Idempotency-Key": key}
        run = await lite_api.client.post(f"/v1/jobs/{job_id}/runs", headers=headers)
        assert 400 <= run.status_code < 500, run.text[:500]
        create = await lite_api.client.post("/v1/jobs", json=BACKUP, headers=headers)
        assert 400 <= create.status_code < 500, create.text[:500]
        if create.status_code == 422:
            assert create.json()["errors"][0]["field"] == "Idempotency-Key"
            assert "at most 200" in create.json()["errors"][0]["reason"]
    assert await appended(lite_api) == 1
    info = await lite_api.bus.js.stream_info(lite_api.settings.names.dispatch_stream)
    assert info.state.messages == 0


async def test_odd_values_stored_before_the_gate_do_not_break_the_list(api: Api) -> None:
    """Jobs stored before input was bounded (1e308 seconds, an interval no date can hold) are
    shown as they are, and every other job stays listed."""
    fine = await api.client.post("/v1/jobs", json=BACKUP, headers=api.auth())
    assert fine.status_code == 201
    await api.project_jobs()
    odd = JobSpec(
        name="odd",
        schedule="@every 99999999999999999999d",
        executor=ShellExecutor(command="true"),
        timeout=1e308,
        jitter=1e308,
        catchup=Catchup(window=1e308),
        retries=Retries(backoff=1e308, max_backoff=1e300, multiplier=1e308, max_attempts=10**15),
    )
    specs = [odd]
    if api.engine.dialect.name == "sqlite":  # PostgreSQL's JSON cannot hold NaN at all
        specs.append(msgspec.structs.replace(odd, name="nan", timeout=math.nan, jitter=math.nan))
    ids = []
    async with api.engine.begin() as conn:
        for spec in specs:
            ids.append(str(uuid.uuid4()))
            now = datetime.now(UTC)
            await conn.execute(
                insert(jobs).values(
                    id=ids[-1],
                    name=spec.name,
                    spec=msgspec.to_builtins(spec),
                    revision=1,
                    paused=False,
                    deleted=False,
                    created_at=now,
                    updated_at=now,
                )
            )

    listed = await api.client.get("/v1/jobs", headers=api.auth())
    assert listed.status_code == 200, listed.text
    items = {j["name"]: j for j in listed.json()["items"]}
    assert set(items) == {"backup", *(s.name for s in specs)}
    assert items["odd"]["timeout"] == "1e+308s"
    assert items["odd"]["catchup"]["window"] == "1e+308s"
    assert items["odd"]["next_fires"] == []
    if "nan" in items:
        assert items["nan"]["timeout"] == "nan"
    one = await api.client.get(f"/v1/jobs/{ids[0]}", headers=api.auth())
    assert one.status_code == 200, one.text
    assert one.json()["jitter"] == "1e+308s"


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
