"""The `cronbus` command-line client against a real `cronbus up`: what a user types, what they see."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.cli.conftest import Stack
from tests.support import wait_for_sync

pytestmark = pytest.mark.slow

NEVER = "0 0 1 1 *"  # once a year: these jobs run only when asked


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def api_get(stack: Stack, path: str) -> dict:
    answer = httpx.get(
        stack.api_url + path, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=10
    )
    answer.raise_for_status()
    return answer.json()


def test_create_list_get_pause_resume_and_json(stack: Stack) -> None:
    name = unique("backup")
    created = stack.cli(
        "jobs", "create", "--name", name, "--schedule", NEVER, "--command", "echo hi", "--json"
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)[0]
    assert job["name"] == name and job["executor"]["command"] == "echo hi"

    listed = stack.cli("jobs", "ls")
    assert listed.returncode == 0 and name in listed.stdout and "NAME" in listed.stdout

    by_name = json.loads(stack.cli("jobs", "get", name, "--json").stdout)
    assert by_name["id"] == job["id"]

    assert json.loads(stack.cli("jobs", "pause", name, "--json").stdout)["paused"] is True
    assert json.loads(stack.cli("jobs", "resume", job["id"], "--json").stdout)["paused"] is False


def test_a_problem_is_one_line_and_exit_code_1(stack: Stack) -> None:
    bad = stack.cli(
        "jobs", "create", "--name", unique("bad"), "--schedule", "61 * * * *", "--command", "true"
    )
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule" in lines[0] and "422" in lines[0], bad.stderr


def test_no_url_or_key_is_a_usage_error(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lost = stack.cli("jobs", "ls", env=stack.env(CRONBUS_DATA_DIR=str(tmp_path)))
    assert lost.returncode == 2 and "no API URL" in lost.stderr
    wrong = stack.cli("jobs", "ls", env=stack.env(CRONBUS_KEY="cb_wrong"))
    assert wrong.returncode == 1 and "401" in wrong.stderr


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """stdout of `proc` up to and including the line holding `needle` (fails after `timeout`)."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not in the output within {timeout}s: {seen!r}"
        if selector.select(timeout=left):
            line = proc.stdout.readline()
            assert line, f"output ended before {needle!r}: {seen!r}"
            seen += line
    return seen


def test_logs_follow_shows_a_line_while_the_run_is_still_going(stack: Stack) -> None:
    name = unique("slow")
    command = "echo first line; sleep 3; echo last line"
    assert (
        stack.cli("jobs", "create", "--name", name, "--schedule", NEVER, "--command", command).returncode == 0
    )
    run_id = stack.cli("jobs", "run", name).stdout.strip()
    uuid.UUID(run_id)
    follow = subprocess.Popen(
        [sys.executable, "-m", "cronbus.shared.cli", "logs", run_id, "-f"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env(),
    )  # fmt: skip
    try:
        _read_until(follow, "first line", timeout=30)
        # The first line arrived while the job was still sleeping: the run has not finished.
        assert api_get(stack, f"/v1/runs/{run_id}")["finished_at"] is None
        assert follow.wait(timeout=30) == 0
        assert "last line" in (follow.stdout.read() if follow.stdout else "")
    finally:
        follow.kill()
        follow.wait()
    # Without -f: the whole output, and `runs ls` lists the run.
    assert stack.cli("logs", run_id).stdout == "first line\nlast line\n"
    assert run_id in stack.cli("runs", "ls", name).stdout


def test_logs_follow_exits_1_when_the_run_fails(stack: Stack) -> None:
    name = unique("fails")
    assert (
        stack.cli(
            "jobs", "create", "--name", name, "--schedule", NEVER, "--command", "echo oops; exit 3"
        ).returncode
        == 0
    )
    run_id = stack.cli("jobs", "run", name).stdout.strip()
    followed = stack.cli("logs", run_id, "-f")
    assert followed.returncode == 1 and "oops" in followed.stdout
    shown = json.loads(stack.cli("runs", "get", run_id, "--json").stdout)
    assert shown["status"] == "failed" and shown["exit_code"] == 3


def test_apply_twice_changes_nothing_the_second_time_and_export_round_trips(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = unique("m")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(
        f"""jobs:
  - name: {prefix}-backup
    schedule: "0 3 * * *"
    timezone: Europe/Berlin
    timeout: 10m
    executor: {{type: shell, command: "pg_dump db > /backup/db.sql"}}
    retries: {{max_attempts: 3, backoff: 30s}}
  - name: {prefix}-ping
    schedule: "@every 5m"
    executor: {{type: http, url: "http://127.0.0.1:9/ping", headers: {{Authorization: "Bearer s3cret"}}}}
    paused: true
"""
    )
    first = stack.cli("apply", "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    assert f"create  {prefix}-backup" in first.stdout and "2 change(s)" in first.stdout
    second = stack.cli("apply", "-f", str(manifest))
    assert second.returncode == 0, second.stderr
    assert "0 change(s), 2 unchanged" in second.stdout, second.stdout

    # A changed field is an update of that field only.
    manifest.write_text(manifest.read_text().replace("timeout: 10m", "timeout: 20m"))
    third = stack.cli("apply", "-f", str(manifest))
    assert f"update  {prefix}-backup (timeout)" in third.stdout and "1 change(s)" in third.stdout, (
        third.stdout
    )

    exported = tmp_path / "exported.yaml"
    assert stack.cli("export", "-o", str(exported)).returncode == 0
    again = stack.cli("apply", "-f", str(exported))
    assert again.returncode == 0 and " 0 change(s)" in " " + again.stdout.splitlines()[-1], again.stdout


def _manifest(name: str, second_field: str, second_schedule: str) -> str:
    return f"""jobs:
  - name: {name}-good
    schedule: "0 3 * * *"
    executor: {{type: shell, command: "true"}}
  - name: {name}-bad
    {second_field}: "{second_schedule}"
    executor: {{type: shell, command: "true"}}
"""


def test_apply_with_a_typo_or_a_bad_job_changes_nothing(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = unique("typo")
    manifest = tmp_path / "jobs.yaml"
    manifest.write_text(_manifest(name, "shedule", "0 3 * * *"))
    typo = stack.cli("apply", "-f", str(manifest))
    assert typo.returncode == 2 and "jobs[1].shedule" in typo.stderr, typo.stderr
    # A manifest the server refuses (a bad schedule in the second job) changes nothing either.
    manifest.write_text(_manifest(name, "schedule", "99 3 * * *"))
    refused = stack.cli("apply", "-f", str(manifest))
    assert refused.returncode == 1 and "[1].schedule" in refused.stderr, refused.stderr
    assert name not in stack.cli("jobs", "ls", "--q", name).stdout


def test_status_names_the_leader_and_runners(stack: Stack) -> None:
    def shown() -> str | None:
        out = stack.cli("status").stdout
        return out if "scheduler leader" in out and "runner(s)" in out else None

    out = wait_for_sync(shown, timeout=30, what="status with a leader")
    assert "1 runner(s)" in out


def test_import_a_crontab_with_a_preview_first(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prefix = unique("ct") + "-"
    crontab = tmp_path / "crontab"
    crontab.write_text(
        'MAILTO=ops@example.com\n0 * * * * ./if_master.sh "./command.sh"\n@reboot start-agent\n'
    )
    preview = stack.cli("import", "crontab", str(crontab), "--dry-run", "--prefix", prefix)
    assert preview.returncode == 0, preview.stderr
    assert "would create 1 job(s)" in preview.stdout and "skipped line 3: @reboot" in preview.stdout
    assert prefix not in stack.cli("jobs", "ls", "--q", prefix).stdout
    for _ in range(2):  # twice: the second import creates nothing new
        done = stack.cli("import", "crontab", str(crontab), "--prefix", prefix, "--json")
        assert done.returncode == 0, done.stderr
    jobs = json.loads(stack.cli("jobs", "ls", "--q", prefix, "--json").stdout)
    assert len([j for j in jobs if j["name"].startswith(prefix)]) == 1


def test_a_viewer_key_from_the_cli_reads_but_cannot_change(stack: Stack) -> None:
    made = stack.cli("keys", "create", unique("reader"), "--role", "viewer", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["role"] == "viewer" and key["key"]
    listed = stack.cli("keys", "ls")
    assert key["id"] in listed.stdout and key["key"] not in listed.stdout

    as_viewer = stack.env(CRONBUS_KEY=key["key"])
    assert stack.cli("jobs", "ls", env=as_viewer).returncode == 0
    refused = stack.cli(
        "jobs", "create", "--name", unique("no"), "--schedule", NEVER, "--command", "true", env=as_viewer
    )
    assert refused.returncode == 1 and "403" in refused.stderr

    assert stack.cli("keys", "revoke", key["id"]).returncode == 0
    revoked = stack.cli("jobs", "ls", env=as_viewer)
    assert revoked.returncode == 1 and "401" in revoked.stderr

    def audited() -> list[dict] | None:
        out = stack.cli("audit", "--action", "key.revoked", "--json")
        items = json.loads(out.stdout) if out.returncode == 0 else []
        return [i for i in items if key["id"] in json.dumps(i)] or None

    assert wait_for_sync(audited, timeout=30, what="the revocation in the audit log")


def test_backfill_last_minutes_once_then_ask_why_with_slots(stack: Stack) -> None:
    name = unique("nightly")
    created = stack.cli("jobs", "create", "--name", name, "--schedule", "* * * * *", "--command", "true")
    assert created.returncode == 0, created.stderr
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start, end = (now - timedelta(minutes=5)).isoformat(), now.isoformat()

    first = stack.cli("jobs", "backfill", name, "--from", start, "--to", end, "--json")
    assert first.returncode == 0, first.stderr
    answer = json.loads(first.stdout)
    assert answer["slots"] == 5 and len(answer["dispatched"]) == 5 and answer["already"] == []
    again = stack.cli("jobs", "backfill", name, "--from", start, "--to", end)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "5 slots: 0 dispatched now, 5 dispatched before"

    table = stack.cli("jobs", "slots", name, "--from", start, "--to", end)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "dispatched" in line]
    assert "OUTCOME" in table.stdout and len(rows) == 5, table.stdout
    assert {d["run_id"] for d in answer["dispatched"]} == {
        word for line in rows for word in line.split() if word.count("-") == 4
    }

    reversed_range = stack.cli("jobs", "backfill", name, "--from", end, "--to", start)
    assert reversed_range.returncode == 1
    assert "422" in reversed_range.stderr and "to" in reversed_range.stderr
