"""Settings, built once in `main()` from the environment and flags, then passed down.

Every stable name in DESIGN.md has an environment variable and a matching flag:
CRONBUS_NATS_URL/--nats-url, CRONBUS_DATABASE_URL/--database-url, CRONBUS_PREFIX/--prefix,
CRONBUS_DATA_DIR/--data-dir, CRONBUS_API_HOST/--api-host, CRONBUS_API_PORT/--api-port,
CRONBUS_POOLS/--pools, CRONBUS_INSTANCE_ID/--instance-id. Flags win over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cronbus.shared.durations import DurationError, parse_duration
from cronbus.shared.names import NameError_, Names, check_token
from cronbus.shared.sizes import parse_size


class SettingsError(ValueError):
    """A setting with a value cronbus cannot use; the message names the variable and flag."""


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Settings:
    nats_url: str = "nats://127.0.0.1:4222"
    prefix: str = "cronbus"
    instance_id: str = field(default_factory=default_instance_id)
    data_dir: Path = Path(".cronbus")
    database_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    pools: tuple[str, ...] = ("default",)
    admin_key: str = ""
    log_level: str = "INFO"
    # "text" (lines for people) or "json" (one object per line, for log shippers)
    log_format: str = "text"
    # Prometheus /metrics of the scheduler, runner and logs services (the API serves it on its
    # own port): 0 is off. `up` gives each of its processes a free port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # Stream replicas: 1 for a single server, 3 on a cluster.
    replicas: int = 1
    # Scheduler primacy: renew every lease_renew seconds; the key expires lease_ttl after the
    # last renewal. A leader fences itself lease_ttl - lease_margin after its last renewal.
    lease_ttl: float = 2.0
    lease_renew: float = 0.4
    lease_margin: float = 0.5
    # Runner
    concurrency: int = 8
    # HTTP runs in flight besides the `concurrency` slots (an HTTP run holds no process, only a
    # connection); when these are taken, HTTP runs use the slots too.
    http_concurrency: int = 100
    # Runner processes on this host (`cronbus runner --processes N`); each has `concurrency`
    # slots and the instance id `<instance_id>-<k>`. `up` picks one per core unless told.
    processes: int = 1
    ack_wait: float = 30.0
    heartbeat: float = 5.0
    # Bytes of output kept per run attempt; the rest is counted, then discarded.
    output_cap: int = 10 * 1024 * 1024
    # Names of the runner's environment a job may see, comma-separated (`PREFIX*` allowed);
    # CRONBUS_* names never pass.
    job_env_passthrough: str = ""
    # Graceful stop: in-flight work gets this long before it is handed back.
    grace_period: float = 20.0
    # Retention
    dispatch_max_age: float = 7 * 86400.0
    runs_max_age: float = 30 * 86400.0
    logs_max_age: float = 7 * 86400.0
    logs_max_bytes: int = 1 << 30
    dedupe_window: float = 600.0
    # SQL history (logs service): finished runs kept per job, finished runs per job that keep
    # their output, and how often retention runs. 0 keeps everything.
    history_runs_per_job: int = 1000
    history_logs_per_job: int = 100
    history_retention_interval: float = 60.0
    # Bytes of output kept per job (newest runs first; a job's spec may say otherwise), and
    # across all jobs (oldest finished runs lose their output first). 0 keeps everything.
    # Their variables and flags also take units: "100MiB", "5GB".
    history_log_bytes_per_job: int = 100 * 1024 * 1024
    history_log_bytes_total: int = 0

    @property
    def names(self) -> Names:
        return Names(self.prefix)

    @property
    def sql_url(self) -> str:
        """The SQLAlchemy async URL: SQLite in the data directory unless a database is named."""
        return async_database_url(self.database_url, self.data_dir)


def async_database_url(url: str, data_dir: Path) -> str:
    """Normalise a database URL to its async driver; empty means SQLite under `data_dir`."""
    if not url:
        return f"sqlite+aiosqlite:///{(data_dir / 'cronbus.db').resolve()}"
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


# name -> (env var, flag, parser). Tuning fields have env vars too (CRONBUS_<FIELD>).
_STABLE_FLAGS = {
    "nats_url": "--nats-url",
    "database_url": "--database-url",
    "prefix": "--prefix",
    "data_dir": "--data-dir",
    "api_host": "--api-host",
    "api_port": "--api-port",
    "pools": "--pools",
    "instance_id": "--instance-id",
}


# Byte counts that may be written with a unit ("100MiB").
_SIZE_SETTINGS = {"history_log_bytes_per_job", "history_log_bytes_total"}


def _flag(name: str) -> str:
    return _STABLE_FLAGS.get(name, "--" + name.replace("_", "-"))


def _env(name: str) -> str:
    return "CRONBUS_" + name.upper()


# What each setting is for, shown by --help.
_HELP = {
    "nats_url": "NATS server URL; several, comma-separated, for a cluster",
    "prefix": "prefix of every stream, subject and bucket (several installs can share NATS)",
    "instance_id": "this process's name in the lease, presence and run records (default host-pid)",
    "data_dir": "directory of the embedded SQLite history (when no database URL is given)",
    "database_url": "history database: postgresql://... or sqlite:///path (default: SQLite in the data dir)",
    "api_host": "address the API listens on",
    "api_port": "port the API listens on (0 picks a free one)",
    "pools": "pools this runner takes work from, comma-separated",
    "admin_key": "bootstrap admin API key",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "text (lines for people) or json (one object per line, for log shippers)",
    "metrics_host": "address /metrics listens on (0.0.0.0 in a container)",
    "metrics_port": "port of /metrics for Prometheus (0: off; the API serves /metrics on its own port)",
    "replicas": "replicas of every stream and bucket: 1 for one server, 3 on a cluster",
    "lease_ttl": "scheduler lease lifetime without renewal",
    "lease_renew": "how often the leader renews its lease",
    "lease_margin": "how long before its lease could expire a leader stops publishing",
    "concurrency": "runs one runner process executes at once",
    "http_concurrency": "HTTP runs one runner process keeps in flight besides its concurrency slots",
    "processes": "runner processes to start on this host, each with its own slots (up: one per core)",
    "ack_wait": "how long a dispatch stays with a runner without a heartbeat",
    "heartbeat": "how often a runner signals progress and presence",
    "output_cap": "bytes of output kept per run attempt",
    "job_env_passthrough": "variables of the runner's environment jobs may see, comma-separated "
    "(PREFIX* allowed; CRONBUS_* never)",
    "grace_period": "on SIGTERM, how long in-flight work may finish before it is handed back",
    "dispatch_max_age": "how long dispatches are kept in the DISPATCH stream",
    "runs_max_age": "how long run events are kept in the RUNS stream",
    "logs_max_age": "how long output is kept in the LOGS stream",
    "logs_max_bytes": "bytes of output kept in the LOGS stream",
    "dedupe_window": "JetStream duplicate window of the DISPATCH stream",
    "history_runs_per_job": "finished runs kept per job in SQL (0 keeps all)",
    "history_logs_per_job": "finished runs per job that keep their output in SQL (0 keeps all)",
    "history_retention_interval": "how often retention runs",
    "history_log_bytes_per_job": "bytes of output kept per job in SQL, e.g. 100MiB (0 keeps all)",
    "history_log_bytes_total": "bytes of output kept across all jobs in SQL (0 keeps all)",
}

# Every service connects to NATS and declares the streams and buckets, so it reads these.
_COMMON = frozenset(
    {
        "nats_url",
        "prefix",
        "instance_id",
        "log_level",
        "log_format",
        "grace_period",
        "replicas",
        "lease_ttl",
        "heartbeat",
        "dispatch_max_age",
        "runs_max_age",
        "logs_max_age",
        "logs_max_bytes",
        "dedupe_window",
    }
)
_HISTORY_DB = frozenset({"database_url", "data_dir"})

# The settings each service reads beyond the common ones; `--help` lists only those.
SERVICE_SETTINGS: dict[str, frozenset[str]] = {
    "scheduler": _COMMON | {"lease_renew", "lease_margin", "metrics_host", "metrics_port"},
    "runner": _COMMON
    | {
        "pools",
        "concurrency",
        "http_concurrency",
        "processes",
        "ack_wait",
        "output_cap",
        "job_env_passthrough",
        "metrics_host",
        "metrics_port",
    },
    "logs": _COMMON
    | _HISTORY_DB
    | {
        "history_runs_per_job",
        "history_logs_per_job",
        "history_retention_interval",
        "history_log_bytes_per_job",
        "history_log_bytes_total",
        "metrics_host",
        "metrics_port",
    },
    "api": _COMMON | _HISTORY_DB | {"api_host", "api_port", "admin_key"},
}


def settings_environment(settings: Settings, only: Collection[str] | None = None) -> dict[str, str]:
    """`settings` as the CRONBUS_* variables that build the same settings again (for a child)."""
    env = {}
    for f in dataclasses.fields(Settings):
        if only is not None and f.name not in only:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        env[_env(f.name)] = text
    return env


def settings_for(service: str) -> frozenset[str]:
    """The settings `service` reads; a setting no service claims is offered to all of them."""
    claimed = frozenset().union(*SERVICE_SETTINGS.values())
    unclaimed = {f.name for f in dataclasses.fields(Settings)} - claimed
    return SERVICE_SETTINGS[service] | unclaimed


def add_settings_arguments(parser: argparse.ArgumentParser, only: Collection[str] | None = None) -> None:
    """Add a flag for every setting (or those in `only`); values stay strings until parsed."""
    for f in dataclasses.fields(Settings):
        if only is not None and f.name not in only:
            continue
        what = _HELP.get(f.name, "")
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{what} (env {_env(f.name)})" if what else f"(env {_env(f.name)})",
        )


def _parse_value(name: str, raw: str, kind: Any) -> Any:
    where = f"{_env(name)} / {_flag(name)}"
    try:
        if name == "pools":
            pools = tuple(p.strip() for p in raw.split(",") if p.strip())
            if not pools:
                raise SettingsError(f"{where}: name at least one pool, e.g. 'default' or 'default,gpu'")
            return tuple(check_token("pool", p) for p in pools)
        if name == "prefix":
            Names(raw)
            return raw
        if name == "data_dir":
            return Path(raw).expanduser()
        if name in _SIZE_SETTINGS:
            return parse_size(raw)
        if kind in ("int", int):
            return int(raw)
        if kind in ("float", float):
            return parse_duration(raw) if not raw.replace(".", "", 1).isdigit() else float(raw)
    except (ValueError, DurationError, NameError_) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(f"{where}: {raw!r} is not valid: {exc}") from exc
    return raw


def build_settings(
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from defaults < environment < flags < explicit overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = environ.get(_env(f.name))
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            raw = flag_value
        if raw is not None and raw != "":
            values[f.name] = _parse_value(f.name, str(raw), f.type)
        elif raw == "" and f.type in ("str", str):
            values[f.name] = ""
    values.update(overrides)
    settings = Settings(**values)
    if settings.lease_renew * 2 >= settings.lease_ttl - settings.lease_margin:
        raise SettingsError(
            "CRONBUS_LEASE_RENEW must leave room for at least two renewals before the leader fences "
            f"itself (renew {settings.lease_renew}s, ttl {settings.lease_ttl}s, "
            f"margin {settings.lease_margin}s)"
        )
    if settings.log_format not in ("text", "json"):
        raise SettingsError(
            f"CRONBUS_LOG_FORMAT / --log-format: {settings.log_format!r}; use 'text' or 'json'"
        )
    if not 0 < settings.api_port < 65536 and settings.api_port != 0:
        raise SettingsError(f"CRONBUS_API_PORT / --api-port: {settings.api_port} is not a TCP port")
    return settings
