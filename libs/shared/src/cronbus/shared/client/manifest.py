"""`cronbus apply` and `cronbus export`: jobs as a YAML manifest, matched by name.

A manifest is `{"jobs": [job, ...]}` (or just the list), each job in the API's input form plus
an optional `paused`. `apply` makes the server match it: it creates the jobs that are missing,
changes those that differ (a field left out means its default), pauses or resumes, and with
`prune` deletes jobs the manifest does not name. Before it changes anything it checks every
job, on the client (unknown fields, duplicate names) and on the server (a dry run of the
whole manifest), so a manifest with one mistake changes nothing. `export` writes the
manifest that `apply` reads back as "nothing to change".

Secret values (see the API docs) are write-only: the server shows them as `***`. A `***` in
a manifest keeps the stored value, and a changed secret alone is not noticed as a change.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from cronbus.shared.client.api import Api, ClientError
from cronbus.shared.durations import DurationError, parse_duration
from cronbus.shared.sizes import SizeError, parse_size

MASK = "***"
BATCH = 1000

# The API's documented input defaults (docs/api.md): a field left out of a manifest means this.
DEFAULTS: dict[str, Any] = {
    "timezone": "UTC",
    "pool": "default",
    "timeout": None,
    "overlap": "allow",
    "catchup": {"policy": "latest", "window": "1h"},
    "retries": {"max_attempts": 1, "backoff": "10s", "multiplier": 2.0, "max_backoff": "1h"},
    "jitter": "0s",
    "start_at": None,
    "end_at": None,
    "description": "",
    "labels": {},
    "retention": {"runs": None, "log_bytes": None},
}
EXECUTOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "shell": {"env": {}, "cwd": None, "secrets": []},
    "http": {
        "method": "GET",
        "headers": {},
        "body": None,
        "expect_status": [],
        "follow_redirects": True,
        "max_body_bytes": 1_048_576,
        "secrets": [],
    },
}
REQUIRED = ("name", "schedule", "executor")
# `anchor` places an @every grid; the server picks one when it is left out, so it is
# compared only when a manifest names it.
OPTIONAL_COMPARED = ("anchor",)
INPUT_FIELDS = (*REQUIRED, *DEFAULTS, *OPTIONAL_COMPARED)
MANIFEST_FIELDS = (*INPUT_FIELDS, "paused")
DURATIONS = ("timeout", "jitter", "catchup.window", "retries.backoff", "retries.max_backoff")
TIMES = ("start_at", "end_at", "anchor")


class ManifestError(ClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def load(text: str, source: str = "manifest") -> list[dict[str, Any]]:
    """The jobs of a manifest, checked for shape, unknown fields and duplicate names."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from None
    return entries(doc, source)


def entries(doc: Any, source: str = "manifest") -> list[dict[str, Any]]:
    """`load` for a document already parsed."""
    if isinstance(doc, dict):
        extra = sorted(set(doc) - {"jobs"})
        if extra:
            raise ManifestError(f"{source}: unknown top-level field(s) {extra}; expected 'jobs'")
        doc = doc.get("jobs") or []
    if not isinstance(doc, list):
        raise ManifestError(f"{source}: expected a list of jobs or {{jobs: [...]}}")
    names: dict[str, int] = {}
    for i, job in enumerate(doc):
        where = f"{source}: jobs[{i}]"
        if not isinstance(job, dict):
            raise ManifestError(f"{where}: a job is a mapping of fields, not {type(job).__name__}")
        unknown = sorted(set(job) - set(MANIFEST_FIELDS))
        if unknown:
            raise ManifestError(
                f"{where}.{unknown[0]}: unknown field; fields are {', '.join(MANIFEST_FIELDS)}"
            )
        for name in REQUIRED:
            if name not in job:
                raise ManifestError(f"{where}: '{name}' is required")
        if job["name"] in names:
            raise ManifestError(f"{where}: the name {job['name']!r} is also jobs[{names[job['name']]}]")
        names[job["name"]] = i
    return doc


def dump(jobs: Iterable[dict[str, Any]]) -> str:
    return yaml.safe_dump({"jobs": list(jobs)}, sort_keys=False, allow_unicode=True, width=100)


def exported(job: dict[str, Any]) -> dict[str, Any]:
    """A job answer as a manifest entry: input fields only, defaults left out."""
    out: dict[str, Any] = {}
    canonical_defaults = canonical({"name": "", "schedule": "", "executor": job["executor"]})
    mine = canonical(job)
    for key in INPUT_FIELDS:
        if key not in job:
            continue
        value = job[key]
        if key == "executor":
            executor_defaults = EXECUTOR_DEFAULTS.get(value.get("type"), {})
            value = {k: v for k, v in value.items() if executor_defaults.get(k, object()) != v}
        elif key in DEFAULTS and mine[key] == canonical_defaults[key]:
            continue
        out[key] = value
    if job.get("paused"):
        out["paused"] = True
    return out


def canonical(job: dict[str, Any]) -> dict[str, Any]:
    """`job` (input or answer form) with defaults filled and units normalised, for comparing.
    A copy: `job` itself is never changed."""
    job = copy.deepcopy(job)
    out: dict[str, Any] = {}
    for key in INPUT_FIELDS:
        if key in DEFAULTS:
            default = copy.deepcopy(DEFAULTS[key])
            value = job.get(key, default)
            if isinstance(default, dict) and isinstance(value, dict):
                value = {**default, **value}
            out[key] = value
        elif key in job:
            out[key] = job[key]
    executor = dict(out.get("executor") or {})
    out["executor"] = {**EXECUTOR_DEFAULTS.get(executor.get("type", ""), {}), **executor}
    for path in DURATIONS:
        _convert(out, path, _seconds)
    for path in TIMES:
        _convert(out, path, _instant)
    _convert(out, "retention.log_bytes", _bytes)
    out["schedule"] = " ".join(str(out.get("schedule", "")).split())
    return out


def _convert(job: dict[str, Any], path: str, convert: Callable[[Any], Any]) -> None:
    *parents, last = path.split(".")
    node: Any = job
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get(last) is not None:
        node[last] = convert(node[last])


def _seconds(value: Any) -> Any:
    try:
        return parse_duration(value)
    except (DurationError, TypeError, ValueError):
        return value  # the server will say what is wrong


def _bytes(value: Any) -> Any:
    try:
        return parse_size(value)
    except (SizeError, TypeError, ValueError):
        return value


def _instant(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return value
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed


def differences(desired: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The input fields in which `current` (an API answer) differs from `desired`."""
    want, have = canonical(desired), canonical(current)
    # A secret is write-only: where the server shows ***, any desired value compares equal.
    for bag in ("env", "headers"):
        have_bag, want_bag = have["executor"].get(bag), want["executor"].get(bag)
        if isinstance(have_bag, dict) and isinstance(want_bag, dict):
            for name, value in have_bag.items():
                if value == MASK and name in want_bag:
                    want_bag[name] = MASK
    fields = [k for k in INPUT_FIELDS if k not in OPTIONAL_COMPARED or k in desired]
    return [k for k in fields if want.get(k) != have.get(k)]


def full_input(job: dict[str, Any]) -> dict[str, Any]:
    """The manifest entry as a complete API input (defaults spelt out, `paused` removed)."""
    body = {k: v for k, v in job.items() if k != "paused"}
    for key, default in DEFAULTS.items():
        body.setdefault(key, copy.deepcopy(default))
    return _jsonable(body)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = field(default_factory=list)
    pause: list[dict[str, Any]] = field(default_factory=list)
    resume: list[dict[str, Any]] = field(default_factory=list)
    delete: list[dict[str, Any]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.update) + len(self.pause) + len(self.resume) + len(self.delete)

    def lines(self) -> list[str]:
        out = [f"create  {j['name']}" for j in self.create]
        out += [f"update  {j['name']} ({', '.join(fields)})" for j, _, fields in self.update]
        out += [f"pause   {j['name']}" for j in self.pause]
        out += [f"resume  {j['name']}" for j in self.resume]
        out += [f"delete  {j['name']}" for j in self.delete]
        return out


def plan(manifest: list[dict[str, Any]], current: list[dict[str, Any]], *, prune: bool) -> Plan:
    by_name: dict[str, dict[str, Any]] = {}
    for job in current:
        by_name.setdefault(job["name"], job)
    result = Plan()
    for job in manifest:
        existing = by_name.get(job["name"])
        if existing is None:
            result.create.append(job)
            continue
        changed = differences(job, existing)
        if changed:
            result.update.append((job, existing, changed))
        wants_paused = bool(job.get("paused", False))
        if wants_paused and not existing.get("paused"):
            result.pause.append(existing)
        elif not wants_paused and existing.get("paused") and "paused" in job:
            result.resume.append(existing)
        elif not changed:
            result.unchanged.append(job["name"])
    if prune:
        named = {job["name"] for job in manifest}
        result.delete = [job for job in current if job["name"] not in named]
    return result


def check_on_server(api: Api, manifest: list[dict[str, Any]]) -> None:
    """Validate every job of the manifest on the server without changing anything."""
    for start in range(0, len(manifest), BATCH):
        chunk = manifest[start : start + BATCH]
        try:
            api.json("POST", "/v1/jobs", params={"dry_run": "true"}, json=[full_input(j) for j in chunk])
        except ClientError as exc:
            # Batch errors name the item as "[i].field": make it the manifest's index.
            raise ClientError(
                f"the manifest was not applied, nothing changed: {_renumber(str(exc), start)}"
            ) from None


def _renumber(message: str, offset: int) -> str:
    if not offset:
        return message
    import re

    return re.sub(r"\[(\d+)\]", lambda m: f"[{int(m.group(1)) + offset}]", message)


def execute(api: Api, todo: Plan) -> None:
    """Apply `todo`, then wait (bounded) until the history shows it: a list read right after
    (the next `apply`, `cronbus jobs ls`) sees what was applied."""
    for existing in todo.delete:
        api.json("DELETE", f"/v1/jobs/{existing['id']}")
    last: dict[str, Any] | None = None  # the newest write's answer (job id and revision)
    for start in range(0, len(todo.create), BATCH):
        chunk = todo.create[start : start + BATCH]
        created = api.json("POST", "/v1/jobs", json=[full_input(j) for j in chunk])["items"]
        last = created[-1] if created else last
        for job, answer in zip(chunk, created, strict=True):
            if job.get("paused"):
                last = api.json("POST", f"/v1/jobs/{answer['id']}/pause")
    for job, existing, _ in todo.update:
        last = api.json(
            "PATCH",
            f"/v1/jobs/{existing['id']}",
            json=full_input(job),
            headers={"If-Match": f'"{existing["revision"]}"'},
        )
    for existing in todo.pause:
        last = api.json("POST", f"/v1/jobs/{existing['id']}/pause")
    for existing in todo.resume:
        last = api.json("POST", f"/v1/jobs/{existing['id']}/resume")
    if last is not None:
        # The history applies job events in stream order: once it has the newest write, it
        # has every write before it (deletes came first).
        wait_for_history(api, last["id"], last["revision"])


def wait_for_history(api: Api, job_id: str, revision: int, attempts: int = 3) -> None:
    """`GET /v1/jobs/{id}?revision=N` waits (5 s a call) until the history has revision N."""
    for _ in range(attempts):
        try:
            api.json("GET", f"/v1/jobs/{job_id}", params={"revision": revision})
            return
        except ClientError as exc:
            if getattr(exc, "status", None) != 504:
                raise
    print(
        f"cronbus: applied, but the history does not show revision {revision} of job {job_id} yet",
        file=sys.stderr,
    )
