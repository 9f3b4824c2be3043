"""The `cronbus` command: `up` (everything, embedded), one service (`scheduler`, `runner`, ...),
or the client of a running cronbus (`jobs`, `runs`, `logs RUN`, `status`, `apply`, ...).

Services are imported only when asked for, so a runner install without Litestar works.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace

from cronbus.shared.client.arguments import (
    CLIENT_COMMANDS,
    add_client_commands,
    add_logs_client_arguments,
)
from cronbus.shared.runtime import Service, StartupError, serve, setup_logging
from cronbus.shared.settings import (
    Settings,
    SettingsError,
    add_settings_arguments,
    build_settings,
    settings_for,
)

SERVICES = ("scheduler", "runner", "logs", "api")
# The services that serve /metrics on CRONBUS_METRICS_PORT (the API has its own port).
METRICS_SERVICES = ("scheduler", "runner", "logs")
# What `cronbus check` reads: the streams and the history database, as the logs service does.
CHECK_SETTINGS = frozenset(
    {"nats_url", "prefix", "database_url", "data_dir", "history_runs_per_job", "log_level"}
)


class ServiceNotInstalled(RuntimeError):
    pass


def check_main(args: argparse.Namespace, settings: Settings) -> int:
    """`cronbus check`, from the logs service's package."""
    try:
        from cronbus.logs.consistency import check_main as run_check
    except ModuleNotFoundError as exc:
        raise ServiceNotInstalled(
            "cronbus check needs the logs service; install 'cronbus-logs' (or 'cronbus')"
        ) from exc
    return run_check(args, settings)


def health_main(args: argparse.Namespace, settings: Settings) -> int:
    """`cronbus health --service NAME`: 0 when ready, 1 when not (see cronbus.shared.health)."""
    from cronbus.shared.health import Unhealthy, check

    try:
        print(check(args.service, settings, timeout=args.timeout))
    except (Unhealthy, TimeoutError) as exc:
        print(f"cronbus health: {args.service} is not ready: {str(exc) or 'timed out'}", file=sys.stderr)
        return 1
    return 0


def create_service(name: str, settings: Settings) -> Service:
    """The service `name`, from its package `cronbus.<name>.app` (not imported until now)."""
    try:
        module = importlib.import_module(f"cronbus.{name}.app")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"cronbus.{name}"):
            raise ServiceNotInstalled(
                f"the {name} service is not installed here; install 'cronbus-{name}' (or 'cronbus')"
            ) from exc
        raise
    service: Service = module.create_service(settings)
    return service


def service_processes(name: str, settings: Settings) -> list[Service]:
    """The service in this process or, for `runner --processes N` (N > 1), N child processes
    (child k serves its metrics on the metrics port + k - 1)."""
    if name == "runner" and settings.processes > 1:
        from cronbus.shared.child import instances

        create_service(name, settings)  # refuse bad settings here, not in every child
        return list(instances(name, replace(settings, processes=1), settings.processes))
    return [create_service(name, settings)]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="cronbus", description="cronbus: a distributed cron over NATS JetStream."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser(
        "up",
        help="run everything on this machine: its own nats-server, SQLite, all four services",
        description="Start nats-server, scheduler, runner, logs and api in one process. Data, "
        "the admin key and the URLs stay in --data-dir (default ./.cronbus), so a second `up` "
        "continues where the first stopped.",
    )
    add_settings_arguments(up)
    for name, what in (
        ("scheduler", "keep schedules and dispatch due runs (hot standby unless it holds the lease)"),
        ("runner", "execute dispatched runs for --pools and stream their output"),
        ("logs", "project events into the SQL history (`cronbus logs RUN [-f]`: a run's output)"),
        ("api", "serve the REST API"),
    ):
        p = sub.add_parser(name, help=what, description=what)
        add_settings_arguments(p, only=settings_for(name))
        if name == "logs":
            add_logs_client_arguments(p)
    check = sub.add_parser(
        "check",
        help="compare the SQL history with the streams (and --repair it); exit 1 when they differ",
        description="Read JOBS, DISPATCH and RUNS and compare them with the SQL history: jobs "
        "missing or at the wrong revision, runs missing or with another status. Exit 0 when they "
        "agree, 1 when they do not, 2 when the check cannot run. See docs/history.md.",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--repair", action="store_true", help="rewrite differing rows from the streams")
    add_settings_arguments(check, only=CHECK_SETTINGS)
    health = sub.add_parser(
        "health",
        help="exit 0 when a scheduler, runner or logs service is ready (for healthchecks and probes)",
        description="Readiness of one service, checked through NATS: scheduler, a lease is held; "
        "runner, this instance's presence (CRONBUS_INSTANCE_ID) is there; logs, its consumers "
        "exist. Exit 0 when ready, 1 when not (the reason on stderr). The API has /readyz.",
    )
    health.add_argument("--service", required=True, choices=("scheduler", "runner", "logs"))
    health.add_argument("--timeout", type=float, default=3.0, help="seconds for each NATS request")
    add_settings_arguments(health, only=("nats_url", "prefix", "instance_id"))
    add_client_commands(sub)
    return top


def _stopped_before_start(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGTERM while a service is still importing and connecting is a stop request like any
    # other: exit 0 instead of dying by the signal. The service's own handler replaces this
    # one once it runs. Only the main thread may set it (`main` also runs on other threads,
    # e.g. `cronbus check` called from a test).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stopped_before_start)
    args = parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS or (args.command == "logs" and args.run):
        from cronbus.shared.client.commands import logs_command, run_client

        return run_client(args) if args.command in CLIENT_COMMANDS else logs_command(args)
    try:
        if args.command == "up":
            from cronbus.shared.up import up_main

            return up_main(args)
        settings = build_settings(args)
        if args.command == "check":
            return check_main(args, settings)
        if args.command == "health":
            return health_main(args, settings)
        services = service_processes(args.command, settings)
        if settings.metrics_port and args.command in METRICS_SERVICES and len(services) == 1:
            from cronbus.shared.metrics import serve_metrics

            setup_logging(
                settings.log_level, settings.log_format, service=args.command, instance=settings.instance_id
            )
            serve_metrics(settings.metrics_host, settings.metrics_port)
    except (SettingsError, ServiceNotInstalled, StartupError) as exc:
        print(f"cronbus: {exc}", file=sys.stderr)
        return 2

    async def build() -> list[Service]:
        return services

    return serve(
        build,
        grace=settings.grace_period,
        log_level=settings.log_level,
        log_format=settings.log_format,
        service=args.command,
        instance=settings.instance_id,
    )


if __name__ == "__main__":
    sys.exit(main())
