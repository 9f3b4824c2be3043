"""Settings: defaults, environment, flags (which win), clear errors; names from the prefix."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cronbus.shared.durations import DurationError, format_duration, parse_duration
from cronbus.shared.names import NameError_, Names
from cronbus.shared.settings import SettingsError, add_settings_arguments, async_database_url, build_settings
from cronbus.shared.sizes import SizeError, parse_size


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_settings_arguments(p)
    return p.parse_args(argv)


def test_defaults_without_environment():
    s = build_settings(environ={})
    assert (s.nats_url, s.prefix, s.pools, s.api_port) == (
        "nats://127.0.0.1:4222",
        "cronbus",
        ("default",),
        8080,
    )
    assert s.instance_id  # host-pid
    assert s.sql_url.startswith("sqlite+aiosqlite:///") and s.sql_url.endswith(".cronbus/cronbus.db")


def test_environment_then_flags_win():
    env = {"CRONBUS_PREFIX": "prod", "CRONBUS_POOLS": "default, gpu", "CRONBUS_API_PORT": "9000",
           "CRONBUS_LEASE_TTL": "3s", "CRONBUS_INSTANCE_ID": "sched-a"}  # fmt: skip
    s = build_settings(parse(["--api-port", "9100", "--data-dir", "/tmp/x"]), environ=env)
    assert s.prefix == "prod"
    assert s.pools == ("default", "gpu")
    assert s.api_port == 9100
    assert s.lease_ttl == 3.0
    assert s.instance_id == "sched-a"
    assert s.data_dir == Path("/tmp/x")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CRONBUS_API_PORT": "eighty"}, "CRONBUS_API_PORT / --api-port"),
        ({"CRONBUS_API_PORT": "70000"}, "--api-port"),
        ({"CRONBUS_POOLS": "a.b"}, "CRONBUS_POOLS"),
        ({"CRONBUS_POOLS": " , "}, "at least one pool"),
        ({"CRONBUS_PREFIX": "Has Spaces"}, "CRONBUS_PREFIX"),
        ({"CRONBUS_LEASE_TTL": "1s"}, "CRONBUS_LEASE_RENEW"),
        ({"CRONBUS_GRACE_PERIOD": "soon"}, "CRONBUS_GRACE_PERIOD"),
    ],
)
def test_bad_values_name_the_variable_and_flag(env, needle):
    with pytest.raises(SettingsError, match=needle.replace(".", r"\.")):
        build_settings(environ=env)


def test_database_urls_are_normalised_to_async_drivers(tmp_path):
    assert async_database_url("postgresql://u@h/db", tmp_path) == "postgresql+asyncpg://u@h/db"
    assert async_database_url("postgres://u@h/db", tmp_path) == "postgresql+asyncpg://u@h/db"
    assert async_database_url("sqlite:////x/y.db", tmp_path) == "sqlite+aiosqlite:////x/y.db"
    assert async_database_url("", tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/cronbus.db"


def test_names_follow_the_prefix():
    n = Names("acme-prod")
    assert n.jobs_stream == "ACME_PROD_JOBS"
    assert n.dispatch_subject("gpu", "j1") == "acme-prod.dispatch.gpu.j1"
    assert n.run_subject("j1", "r1") == "acme-prod.run.j1.r1"
    assert n.log_subject("r1") == "acme-prod.log.r1"
    assert n.leader_bucket == "acme_prod_leader"
    assert Names.runner_consumer("gpu") == "runner-gpu"
    with pytest.raises(NameError_):
        Names("UPPER")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("2d", 172800),
        ("15", 15),
        (" 1m 30s ", 90),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5x", "-5s", "1h-30m", "m"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(DurationError, match=r"e\.g\."):
        parse_duration(text)


def test_log_byte_budgets_take_numbers_or_units():
    defaults = build_settings(environ={})
    assert (defaults.history_log_bytes_per_job, defaults.history_log_bytes_total) == (100 * 1024 * 1024, 0)
    env = {"CRONBUS_HISTORY_LOG_BYTES_PER_JOB": "50MB", "CRONBUS_HISTORY_LOG_BYTES_TOTAL": "1048576"}
    s = build_settings(parse(["--history-log-bytes-total", "2GiB"]), environ=env)
    assert (s.history_log_bytes_per_job, s.history_log_bytes_total) == (50_000_000, 2 << 30)
    with pytest.raises(SettingsError, match="CRONBUS_HISTORY_LOG_BYTES_TOTAL / --history-log-bytes-total"):
        build_settings(environ={"CRONBUS_HISTORY_LOG_BYTES_TOTAL": "lots"})


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1", 1), ("12B", 12), ("500KB", 500_000), ("1.5KiB", 1536), ("50 MB", 50_000_000),
     ("3mib", 3 << 20), ("2GB", 2_000_000_000), ("1GiB", 1 << 30), (4096, 4096)],
)  # fmt: skip
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "-1MB", "1TB", "1.2.3MB", "ten", -5, True, 1.5])
def test_bad_sizes(text):
    with pytest.raises(SizeError):
        parse_size(text)


def _help_of(command: str) -> str:
    from cronbus.shared.cli import parser

    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


@pytest.mark.parametrize(
    ("service", "listed", "absent"),
    [
        (
            "scheduler",
            ["--lease-renew", "--nats-url"],
            ["--pools", "--database-url", "--api-port", "--admin-key"],
        ),
        (
            "runner",
            ["--pools", "--concurrency", "--output-cap"],
            ["--database-url", "--api-port", "--lease-renew"],
        ),
        ("logs", ["--database-url", "--history-runs-per-job"], ["--pools", "--api-port", "--lease-renew"]),
        (
            "api",
            ["--api-port", "--database-url", "--admin-key"],
            ["--pools", "--concurrency", "--history-runs-per-job"],
        ),
    ],
)
def test_each_service_help_lists_only_the_settings_it_reads(service, listed, absent):
    text = _help_of(service)
    for flag in listed:
        assert flag in text, f"{service} --help lacks {flag}"
    for flag in absent:
        assert flag not in text, f"{service} --help lists {flag}, which it does not read"


def test_up_offers_every_setting():
    text = _help_of("up")
    for flag in ("--pools", "--api-port", "--database-url", "--lease-renew", "--history-runs-per-job"):
        assert flag in text
