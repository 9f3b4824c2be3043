"""The client's command-line arguments, apart from its handlers: registering them costs no
import of the HTTP client or YAML, so a service starting through `cronbus` pays nothing for them."""

from __future__ import annotations

import argparse
from typing import Any


def connection_arguments(parser: argparse.ArgumentParser, *, data_dir: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--url", help="API base URL (env CRONBUS_URL; default: from <data dir>/cronbus.json)")
    group.add_argument("--key", help="API key (env CRONBUS_KEY; default: the admin key in cronbus.json)")
    if data_dir:
        group.add_argument("--data-dir", help="where `cronbus up` keeps cronbus.json (default ./.cronbus)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def add_client_commands(sub: Any) -> None:
    """Register the client's subcommands on the `cronbus` parser's subparsers."""
    jobs = sub.add_parser("jobs", help="list, show, create, change and run jobs", description="Jobs.")
    jobs_sub = jobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = jobs_sub.add_parser("ls", help="list jobs")
    for flag in ("state", "label", "pool", "q"):
        p.add_argument(f"--{flag}", help=f"only jobs with this {flag}" if flag != "q" else "name contains")
    p.add_argument("--limit", type=int, help="at most this many")
    for action, what in (("get", "show a job"), ("rm", "delete a job"), ("pause", "pause a job"),
                         ("resume", "resume a job"), ("run", "run a job now")):  # fmt: skip
        p = jobs_sub.add_parser(action, help=what)
        p.add_argument("job", help="job id or name")
        if action == "rm":
            p.add_argument("--yes", action="store_true", help="do not ask")
    p = jobs_sub.add_parser("create", help="create jobs from a file, or one from flags")
    p.add_argument("-f", "--file", help="a JSON or YAML job, list of jobs, or manifest ('-' reads stdin)")
    _job_flags(p)
    p = jobs_sub.add_parser("edit", help="change a job: flags, a file, or $EDITOR")
    p.add_argument("job", help="job id or name")
    p.add_argument("-f", "--file", help="the job's new fields, JSON or YAML ('-' reads stdin)")
    _job_flags(p)
    p = jobs_sub.add_parser("backfill", help="dispatch every slot in [FROM, TO) that has not run")
    p.add_argument("job", help="job id or name")
    p.add_argument("--from", dest="start", required=True, help="ISO-8601 time, e.g. 2026-11-30T00:00:00Z")
    p.add_argument("--to", dest="end", required=True, help="ISO-8601 time (exclusive)")
    p = jobs_sub.add_parser("slots", help="every slot in a range and what became of it")
    p.add_argument("job", help="job id or name")
    p.add_argument("--from", dest="start", help="ISO-8601 time (default: a day ago)")
    p.add_argument("--to", dest="end", help="ISO-8601 time (default: now)")
    for p in jobs_sub.choices.values():
        connection_arguments(p)

    runs = sub.add_parser("runs", help="list, show and cancel runs", description="Runs.")
    runs_sub = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = runs_sub.add_parser("ls", help="a job's runs, newest first")
    p.add_argument("job", help="job id or name")
    p.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    for action, what in (("get", "show a run and its attempts"), ("cancel", "cancel a run")):
        p = runs_sub.add_parser(action, help=what)
        p.add_argument("run", help="run id")
    for p in runs_sub.choices.values():
        connection_arguments(p)

    p = sub.add_parser("status", help="scheduler leader and runners")
    connection_arguments(p)

    keys = sub.add_parser("keys", help="API keys", description="API keys (admin).")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    keys_sub.add_parser("ls", help="list keys (never their secrets)")
    p = keys_sub.add_parser("create", help="make a key; its secret is printed once")
    p.add_argument("name")
    p.add_argument("--role", default="viewer", choices=("viewer", "operator", "admin"))
    p.add_argument("--expires-at", help="ISO-8601 time the key stops working")
    p = keys_sub.add_parser("revoke", help="revoke a key")
    p.add_argument("id")
    for p in keys_sub.choices.values():
        connection_arguments(p)

    p = sub.add_parser("audit", help="who changed what, newest first")
    for flag in ("job-id", "actor", "action", "since"):
        p.add_argument(f"--{flag}")
    p.add_argument("--limit", type=int, default=50)
    connection_arguments(p)

    imp = sub.add_parser("import", help="bring jobs in from elsewhere")
    imp_sub = imp.add_subparsers(dest="kind", required=True, metavar="KIND")
    p = imp_sub.add_parser("crontab", help="import a crontab file ('-' reads stdin)")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="show what would be created")
    p.add_argument("--timezone")
    p.add_argument("--pool")
    p.add_argument("--prefix", help="prefix for the jobs' names")
    connection_arguments(p)

    p = sub.add_parser("apply", help="make the server's jobs match a YAML manifest (by name)")
    p.add_argument("-f", "--file", required=True, help="the manifest ('-' reads stdin)")
    p.add_argument("--prune", action="store_true", help="also delete jobs the manifest does not name")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    connection_arguments(p)

    p = sub.add_parser("export", help="write every job as a manifest that `apply` reads back")
    p.add_argument("-o", "--output", help="file to write (default stdout)")
    connection_arguments(p)


def add_logs_client_arguments(parser: argparse.ArgumentParser) -> None:
    """`cronbus logs RUN [-f]` shares its name with the logs service (`cronbus logs`)."""
    parser.add_argument(
        "run", nargs="?", help="a run id: print its output (without it, run the logs service)"
    )
    parser.add_argument("-f", "--follow", action="store_true", help="follow live output until the run ends")
    parser.add_argument("--attempt", type=int, help="another attempt's output")
    group = parser.add_argument_group("client connection (with RUN)")
    group.add_argument("--url", help="API base URL (env CRONBUS_URL)")
    group.add_argument("--key", help="API key (env CRONBUS_KEY)")


CLIENT_COMMANDS = ("jobs", "runs", "status", "keys", "audit", "import", "apply", "export")


def _job_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("job fields")
    group.add_argument("--name")
    group.add_argument("--schedule", help="cron expression, '@every 90s' or '@at <ISO-8601>'")
    group.add_argument("--timezone")
    group.add_argument("--command", dest="shell", help="shell command (a shell job)")
    group.add_argument("--http-url", help="URL to call (an http job)")
    group.add_argument("--method", help="HTTP method of an http job")
    group.add_argument("--pool")
    group.add_argument("--timeout")
    group.add_argument("--overlap", choices=("allow", "skip", "queue", "replace"))
    group.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
