"""The client's subcommands: `cronbus jobs|runs|logs RUN|status|keys|audit|import|apply|export`.

Each is a thin layer over one or two REST calls. Output is a table for people, or the API's
JSON with `--json`. Exit codes: 0 done; 1 the API refused or failed (its problem detail is
printed as one line); 2 a usage or configuration error; `logs -f` exits 0 when the run
succeeded and 1 when it ended otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from cronbus.shared.client import manifest, render
from cronbus.shared.client.api import Api, ClientError, resolve_target
from cronbus.shared.client.render import field

JOB_COLUMNS: list[render.Column] = [
    ("id", field("id")),
    ("name", field("name")),
    ("schedule", field("schedule")),
    ("timezone", field("timezone")),
    ("state", lambda j: j.get("state") or ("paused" if j.get("paused") else "scheduled")),
    ("next", lambda j: (j.get("next_fires") or [None])[0]),
    ("last", lambda j: (j.get("last_run") or {}).get("status")),
]
RUN_COLUMNS: list[render.Column] = [
    ("id", field("id")),
    ("job", field("job_id")),
    ("slot", field("slot")),
    ("status", field("status")),
    ("attempt", field("attempt")),
    ("trigger", field("trigger")),
    ("runner", field("runner")),
    ("duration_ms", field("duration_ms")),
]
KEY_COLUMNS: list[render.Column] = [
    ("id", field("id")),
    ("name", field("name")),
    ("role", field("role")),
    ("created_at", field("created_at")),
    ("expires_at", field("expires_at")),
    ("revoked_at", field("revoked_at")),
]
AUDIT_COLUMNS: list[render.Column] = [
    ("at", field("at")),
    ("actor", field("actor")),
    ("action", field("action")),
    ("job_id", field("job_id")),
    ("revision", field("revision")),
    ("detail", field("detail")),
]
SLOT_COLUMNS: list[render.Column] = [
    ("slot", field("slot")),
    ("outcome", field("outcome")),
    ("run_id", field("run_id")),
    ("status", field("status")),
    ("reason", field("reason")),
]


def run_client(args: argparse.Namespace) -> int:
    try:
        api = Api(resolve_target(args.url, args.key, getattr(args, "data_dir", None)))
    except ClientError as exc:
        print(f"cronbus: {exc}", file=sys.stderr)
        return exc.code
    try:
        handler = _HANDLERS[args.command]
        return handler(api, args)
    except ClientError as exc:
        print(f"cronbus: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    finally:
        api.close()


# --- helpers ------------------------------------------------------------------------------------


def _looks_like_id(text: str) -> bool:
    return len(text) == 36 and text.count("-") == 4


def find_job(api: Api, ref: str) -> dict[str, Any]:
    """A job by id, or by exact name (an ambiguous name is an error)."""
    if _looks_like_id(ref):
        job: dict[str, Any] = api.json("GET", f"/v1/jobs/{ref}")
        return job
    matches = [j for j in api.pages("/v1/jobs", {"q": ref, "limit": 200}) if j.get("name") == ref]
    if not matches:
        raise ClientError(f"no job named {ref!r}; list jobs with `cronbus jobs ls`")
    if len(matches) > 1:
        ids = ", ".join(j["id"] for j in matches)
        raise ClientError(f"{len(matches)} jobs are named {ref!r} ({ids}); name one by id")
    return matches[0]


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc}", code=2) from None


def _structured(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"{source}: not valid JSON or YAML: {exc}", code=2) from None


def _fields_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("name", "schedule", "timezone", "pool", "timeout", "overlap"):
        value = getattr(args, name, None)
        if value is not None:
            body[name] = value
    if getattr(args, "shell", None):
        body["executor"] = {"type": "shell", "command": args.shell}
    if getattr(args, "http_url", None):
        body["executor"] = {"type": "http", "url": args.http_url, "method": args.method or "GET"}
    if args.label:
        labels = {}
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                raise ClientError(f"--label {item!r}: write KEY=VALUE", code=2)
            labels[key] = value
        body["labels"] = labels
    return body


def _print(args: argparse.Namespace, value: Any, columns: list[render.Column] | None = None) -> None:
    if args.json or columns is None:
        render.as_json(value)
    elif isinstance(value, list):
        render.table(value, columns)
    else:
        render.details(value)


# --- handlers -----------------------------------------------------------------------------------


def _jobs(api: Api, args: argparse.Namespace) -> int:
    action = args.action
    if action == "ls":
        params = {"state": args.state, "label": args.label, "pool": args.pool, "q": args.q}
        items = list(api.pages("/v1/jobs", params, limit=args.limit))
        _print(args, items, JOB_COLUMNS)
        return 0
    if action == "create":
        if args.file:
            data = _structured(_read(args.file), args.file)
            single = isinstance(data, dict) and "jobs" not in data
            jobs = manifest.entries([data] if single else data, args.file)
            bodies = [manifest.full_input(j) for j in jobs]
            answer = api.json("POST", "/v1/jobs", json=bodies[0] if single else bodies)
            created = [answer] if single else answer["items"]
        else:
            body = _fields_from_flags(args)
            missing = [f for f in ("name", "schedule", "executor") if f not in body]
            if missing:
                flags = ["--command or --http-url" if m == "executor" else f"--{m}" for m in missing]
                raise ClientError(f"give {', '.join(flags)} (or -f FILE)", code=2)
            created = [api.json("POST", "/v1/jobs", json=body)]
        _print(args, created if args.json or len(created) != 1 else created[0], JOB_COLUMNS)
        return 0
    job = find_job(api, args.job)
    path = f"/v1/jobs/{job['id']}"
    if action == "get":
        _print(args, job, JOB_COLUMNS)
    elif action == "rm":
        question = f"delete job {job['name']} ({job['id']})? [y/N] "
        if not args.yes and sys.stdin.isatty() and input(question).strip().lower() not in ("y", "yes"):
            print("not deleted")
            return 1
        api.json("DELETE", path, headers={"If-Match": f'"{job["revision"]}"'})
        print(f"deleted {job['name']} ({job['id']})")
    elif action in ("pause", "resume"):
        _print(args, api.json("POST", f"{path}/{action}"), JOB_COLUMNS)
    elif action == "run":
        run = api.json("POST", f"{path}/runs")
        print(json.dumps(run) if args.json else run["id"])
    elif action == "edit":
        _print(args, _edit(api, args, job), JOB_COLUMNS)
    elif action == "backfill":
        answer = api.json("POST", f"{path}/backfill", json={"from": args.start, "to": args.end})
        if args.json:
            render.as_json(answer)
        else:
            print(
                f"{answer['slots']} slots: {len(answer['dispatched'])} dispatched now, "
                f"{len(answer['already'])} dispatched before"
            )
    elif action == "slots":
        params = {"from": args.start, "to": args.end}
        answer = api.json("GET", f"{path}/slots", params={k: v for k, v in params.items() if v})
        _print(args, answer if args.json else answer.get("items", []), SLOT_COLUMNS)
    return 0


def _edit(api: Api, args: argparse.Namespace, job: dict[str, Any]) -> Any:
    changes = _fields_from_flags(args)
    if args.file:
        data = _structured(_read(args.file), args.file)
        if not isinstance(data, dict):
            raise ClientError(f"{args.file}: expected a mapping of the fields to change", code=2)
        changes.update(data)
    if not changes:
        if not sys.stdin.isatty():
            raise ClientError(
                "nothing to change: give flags, -f FILE, or run in a terminal for $EDITOR", code=2
            )
        changes = _in_editor(manifest.exported(job))
    return api.json(
        "PATCH", f"/v1/jobs/{job['id']}", json=changes, headers={"If-Match": f'"{job["revision"]}"'}
    )


def _in_editor(current: dict[str, Any]) -> dict[str, Any]:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w+", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(current, f, sort_keys=False)
        path = f.name
    try:
        subprocess.run([*editor.split(), path], check=True)
        edited = yaml.safe_load(Path(path).read_text())
    finally:
        os.unlink(path)
    if not isinstance(edited, dict):
        raise ClientError("the edited job is not a mapping of fields; nothing changed", code=2)
    changes = {k: v for k, v in edited.items() if current.get(k) != v and k != "paused"}
    if not changes:
        raise ClientError("nothing changed")
    return changes


def _runs(api: Api, args: argparse.Namespace) -> int:
    if args.action == "ls":
        job = find_job(api, args.job)
        runs = api.pages(f"/v1/jobs/{job['id']}/runs", {"limit": min(args.limit, 200)}, args.limit)
        _print(args, list(runs), RUN_COLUMNS)
    elif args.action == "get":
        _print(args, api.json("GET", f"/v1/runs/{args.run}"), RUN_COLUMNS)
    elif args.action == "cancel":
        answer = api.json("POST", f"/v1/runs/{args.run}/cancel")
        print(json.dumps(answer) if args.json else f"cancel requested for {args.run}")
    return 0


def logs_command(args: argparse.Namespace) -> int:
    """`cronbus logs RUN [-f]`: the run's output, or its live output until it ends."""
    args.json = False
    args.command = "logs"
    return run_client(args)


def _logs(api: Api, args: argparse.Namespace) -> int:
    run = args.run
    if not args.follow:
        params = {"attempt": args.attempt} if args.attempt else None
        sys.stdout.buffer.write(api.request("GET", f"/v1/runs/{run}/log", params=params).content)
        sys.stdout.flush()
        return 0
    for event, text in server_sent_events(api.stream_lines(f"/v1/runs/{run}/log/stream")):
        if event == "end":
            break
        target = sys.stderr if event == "stderr" else sys.stdout
        target.write(f"[cronbus] {text}" if event == "system" else text)
        target.flush()
    status = api.json("GET", f"/v1/runs/{run}").get("status")
    return 0 if status == "succeeded" else 1


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event; data lines join with newlines, as the spec says."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data or event != "message":
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


def _status(api: Api, args: argparse.Namespace) -> int:
    status = api.json("GET", "/v1/status")
    if args.json:
        render.as_json(status)
        return 0
    scheduler = status.get("scheduler")
    if scheduler:
        print(
            f"scheduler leader {scheduler.get('leader')} (lease revision {scheduler.get('lease_revision')}), "
            f"{scheduler.get('jobs')} jobs, watermark {render.cell(scheduler.get('watermark'))}, "
            f"dispatch lag {render.cell(scheduler.get('dispatch_lag_ms'))} ms"
        )
        for job_id, error in (scheduler.get("schedule_errors") or {}).items():
            print(f"  schedule error in {job_id}: {error}")
    else:
        print("scheduler: no leader has reported")
    runners = status.get("runners") or []
    print(f"{len(runners)} runner(s)")
    if runners:
        render.table(runners, [("id", field("id")), ("pools", field("pools")), ("running", field("running")),
                               ("capacity", field("capacity")), ("version", field("version")),
                               ("updated_at", field("updated_at"))])  # fmt: skip
    return 0


def _keys(api: Api, args: argparse.Namespace) -> int:
    if args.action == "ls":
        _print(args, list(api.pages("/v1/keys")), KEY_COLUMNS)
    elif args.action == "create":
        body = {"name": args.name, "role": args.role}
        if args.expires_at:
            body["expires_at"] = args.expires_at
        key = api.json("POST", "/v1/keys", json=body)
        if args.json:
            render.as_json(key)
        else:
            print(f"created {key['role']} key {key['name']} ({key['id']}); its secret is shown only now:")
            print(key["key"])
    elif args.action == "revoke":
        api.json("DELETE", f"/v1/keys/{args.id}")
        print(f"revoked {args.id}")
    return 0


def _audit(api: Api, args: argparse.Namespace) -> int:
    params = {"job_id": args.job_id, "actor": args.actor, "action": args.action, "since": args.since}
    _print(args, list(api.pages("/v1/audit", params, limit=args.limit)), AUDIT_COLUMNS)
    return 0


def _import(api: Api, args: argparse.Namespace) -> int:
    params = {"dry_run": "true" if args.dry_run else None, "timezone": args.timezone, "pool": args.pool,
              "prefix": args.prefix}  # fmt: skip
    answer = api.json(
        "POST",
        "/v1/import/crontab",
        content=_read(args.file).encode(),
        headers={"Content-Type": "text/plain"},
        params={k: v for k, v in params.items() if v is not None},
    )
    if args.json:
        render.as_json(answer)
        return 0
    verb = "would create" if args.dry_run else "imported"
    print(f"{verb} {len(answer.get('items', []))} job(s)")
    if answer.get("items"):
        render.table(answer["items"], JOB_COLUMNS[:4])
    for skipped in answer.get("skipped", []):
        print(f"skipped line {skipped.get('line')}: {skipped.get('reason')}: {skipped.get('text')}")
    return 0


def _apply(api: Api, args: argparse.Namespace) -> int:
    jobs = manifest.load(_read(args.file), args.file)
    current = list(api.pages("/v1/jobs", {"limit": 200}))
    todo = manifest.plan(jobs, current, prune=args.prune)
    if todo.changes and not args.dry_run:
        manifest.check_on_server(api, jobs)
        manifest.execute(api, todo)
    if args.json:
        render.as_json({"changes": todo.lines(), "unchanged": todo.unchanged, "dry_run": args.dry_run})
    else:
        for line in todo.lines():
            print(("would " if args.dry_run else "") + line)
        print(
            f"{todo.changes} change(s), {len(todo.unchanged)} unchanged"
            + (" (dry run)" if args.dry_run else "")
        )
    return 0


def _export(api: Api, args: argparse.Namespace) -> int:
    text = manifest.dump(manifest.exported(job) for job in api.pages("/v1/jobs", {"limit": 200}))
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


_HANDLERS: dict[str, Callable[[Api, argparse.Namespace], int]] = {
    "jobs": _jobs,
    "runs": _runs,
    "logs": _logs,
    "status": _status,
    "keys": _keys,
    "audit": _audit,
    "import": _import,
    "apply": _apply,
    "export": _export,
}
