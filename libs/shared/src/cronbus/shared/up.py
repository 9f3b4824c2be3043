"""`cronbus up`: the embedded default. One nats-server of our own, SQLite, all four services.

Everything lives in the data directory: `nats/` (JetStream store), `cronbus.db`, logs, and
`cronbus.json` (mode 0600) with `api_url`, `nats_url` and `admin_key` for scripts. A second
`up` on the same directory keeps jobs, history and the admin key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cronbus.shared.listen import PortInUse, bind_listener
from cronbus.shared.natsd import EmbeddedNats, NatsServerError, free_port
from cronbus.shared.runtime import Service, ServiceFailed, run_services, setup_logging
from cronbus.shared.settings import Settings, SettingsError, build_settings

log = logging.getLogger("cronbus.up")

STATE_FILE = "cronbus.json"
DEFAULT_API_PORT = 8080


def load_state(data_dir: Path) -> dict[str, str]:
    path = data_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(f"{path} is unreadable ({exc}); fix or remove it") from exc
    return state if isinstance(state, dict) else {}


def write_state(data_dir: Path, state: dict[str, Any]) -> Path:
    """Write the state file atomically, readable by its owner only."""
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def check_port(host: str, port: int) -> None:
    """Fail early and clearly when the API port is taken (0 always works)."""
    if port:
        bind_listener(host, port).close()


async def run_up(settings: Settings, stopping: asyncio.Event | None = None) -> None:
    from cronbus.shared.history.store import create_engine, migrate

    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(data_dir)
    admin_key = settings.admin_key or state.get("admin_key") or "cb_" + secrets.token_urlsafe(32)
    check_port(settings.api_host, settings.api_port)

    async with EmbeddedNats(data_dir / "nats", log_file=data_dir / "nats-server.log") as server:
        settings = replace(settings, nats_url=server.url, admin_key=admin_key, data_dir=data_dir)
        engine = create_engine(settings.sql_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        services = local_services(settings)
        stopping = stopping or asyncio.Event()
        runner = asyncio.create_task(run_services(services, grace=settings.grace_period, stopping=stopping))
        api = services[-1]
        ready = asyncio.create_task(_all_ready(services))
        done, _ = await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            api_url: str = api.url  # type: ignore[attr-defined]
            state = {"api_url": api_url, "nats_url": server.url, "admin_key": admin_key}
            path = write_state(data_dir, {**state, "metrics": metrics_urls(services, api_url)})
            print(
                f"cronbus is up.\n  Console:   {api_url}/ (sign in with the admin key)\n"
                f"  API:       {api_url}\n  Admin key: {admin_key}\n"
                f"  NATS:      {server.url}\n  Data:      {data_dir} (details in {path})\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        else:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        await runner


# The logs service's nice value under `up`: when the cores are short, dispatch and runs keep
# their time and the history falls behind for a while instead (it catches up when they idle).
HISTORY_NICENESS = 5


def local_services(settings: Settings) -> list[Service]:
    """Every service of one machine, the API last.

    The scheduler and the API share this process; the logs service and the runners each get
    a process of their own, so projection and execution use the other cores.
    """
    from cronbus.shared.child import ChildService, instances
    from cronbus.shared.cli import create_service

    # Each child serves /metrics on a port of its own; the API's /metrics covers this process.
    runners = [
        ChildService("runner", replace(child.settings, metrics_port=free_port()))
        for child in instances("runner", replace(settings, processes=1, metrics_port=0), settings.processes)
    ]
    logs = ChildService(
        "logs",
        replace(settings, instance_id=f"{settings.instance_id}-logs", metrics_port=free_port()),
        niceness=HISTORY_NICENESS,
    )
    return [create_service("scheduler", settings), logs, *runners, create_service("api", settings)]


def metrics_urls(services: Sequence[Service], api_url: str) -> dict[str, str]:
    """Where each process of `up` serves /metrics, by service instance."""
    from cronbus.shared.child import ChildService

    urls = {"api+scheduler": f"{api_url}/metrics"}
    for service in services:
        if isinstance(service, ChildService) and service.settings.metrics_port:
            host = service.settings.metrics_host
            urls[service.settings.instance_id] = f"http://{host}:{service.settings.metrics_port}/metrics"
    return urls


def default_processes() -> int:
    """Runner processes `up` starts when not told: one per core, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


async def _all_ready(services: Sequence[Service]) -> None:
    await asyncio.gather(*(s.ready.wait() for s in services))


def up_main(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.api_port is None and "CRONBUS_API_PORT" not in os.environ:
        overrides["api_port"] = DEFAULT_API_PORT
    if args.processes is None and "CRONBUS_PROCESSES" not in os.environ:
        overrides["processes"] = default_processes()
    settings = build_settings(args, **overrides)
    setup_logging(settings.log_level, settings.log_format, service="up", instance=settings.instance_id)
    try:
        asyncio.run(run_up(settings))
    except (PortInUse, NatsServerError, SettingsError) as exc:
        print(f"cronbus up: {exc}", file=sys.stderr)
        return 2
    except ServiceFailed as exc:
        print(f"cronbus up: stopped after a failure: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
