"""A job's environment: minimal and documented; the runner's own variables never leak into it."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cronbus.runner.environment import (
    DEFAULT_PATH,
    PassthroughError,
    RunIdentity,
    job_environment,
    parse_passthrough,
)
from cronbus.shared.bus import Bus
from cronbus.shared.events import ShellExecutor
from cronbus.shared.settings import Settings
from tests.runner.support import dispatch, final_outcome, kill_process, output_of, spawn_runner

RUN = RunIdentity(run_id="r-1", job_id="j-1", slot=datetime(2026, 1, 1, 3, tzinfo=UTC), attempt=2)


def _env(runner_env: dict[str, str], passthrough: str = "", **job_env: str) -> dict[str, str]:
    return job_environment(
        runner_env,
        passthrough=parse_passthrough(passthrough),
        run=RUN,
        timezone="Europe/Berlin",
        job_env=job_env,
    )


def test_a_job_gets_a_minimal_base_its_run_identity_and_its_own_env():
    env = _env(
        {"PATH": "/opt/bin:/usr/bin", "HOME": "/home/cron", "LANG": "C.UTF-8", "LC_TIME": "de_DE", "X": "1"},
        GREETING="hi",
    )
    assert env == {
        "PATH": "/opt/bin:/usr/bin",
        "HOME": "/home/cron",
        "LANG": "C.UTF-8",
        "LC_TIME": "de_DE",
        "SHELL": "/bin/sh",
        "TZ": "Europe/Berlin",
        "GREETING": "hi",
        "CRONBUS_RUN_ID": "r-1",
        "CRONBUS_JOB_ID": "j-1",
        "CRONBUS_SLOT": "2026-01-01T03:00:00+00:00",
        "CRONBUS_ATTEMPT": "2",
    }
    bare = _env({})
    assert (bare["PATH"], bare["HOME"]) == (DEFAULT_PATH, "/")


def test_only_allow_listed_names_pass_and_never_the_runners_own():
    runner_env = {
        "HTTP_PROXY": "http://proxy:3128",
        "PGHOST": "db",
        "PGPASSWORD": "pw",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "CRONBUS_ADMIN_KEY": "admin-secret",
        "CRONBUS_DATABASE_URL": "postgresql://u:pw@db/x",
    }
    env = _env(runner_env, "HTTP_PROXY, PG*,CRONBUS_ADMIN_KEY,CRONBUS_*")
    assert {k: env[k] for k in ("HTTP_PROXY", "PGHOST", "PGPASSWORD")} == {
        "HTTP_PROXY": "http://proxy:3128",
        "PGHOST": "db",
        "PGPASSWORD": "pw",
    }
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert not [k for k in env if k.startswith("CRONBUS_") and k not in _env({})]
    # "*" alone allows everything but the runner's own configuration.
    everything = _env(runner_env, "*")
    assert "AWS_SECRET_ACCESS_KEY" in everything
    assert "CRONBUS_ADMIN_KEY" not in everything
    # The job's env wins over the base and the allow-list; the run identity wins over both.
    env = _env({"HTTP_PROXY": "a"}, "HTTP_PROXY", HTTP_PROXY="b", PATH="/x", CRONBUS_RUN_ID="forged")
    assert (env["HTTP_PROXY"], env["PATH"], env["CRONBUS_RUN_ID"]) == ("b", "/x", "r-1")


@pytest.mark.parametrize("raw", ["A B", "X=1", "*PG", "PG**", "1ABC", "A,B-C"])
def test_a_passthrough_entry_that_is_not_a_name_is_refused(raw: str):
    with pytest.raises(PassthroughError, match="CRONBUS_JOB_ENV_PASSTHROUGH"):
        parse_passthrough(raw)


async def test_a_runner_started_with_secrets_in_its_environment_does_not_pass_them_to_jobs(
    settings: Settings, tmp_path: Path
):
    admin_key = "cbk-admin-0123456789abcdef"
    bus = await Bus.open(settings, "test")
    runner: subprocess.Popen[bytes] | None = None
    try:
        runner = spawn_runner(
            settings,
            "runner-env",
            tmp_path / "runner.log",
            CRONBUS_ADMIN_KEY=admin_key,
            CB_TEST_UNLISTED="unlisted-value-1",
            CB_TEST_ALLOWED="allowed-value-2",
            CB_TEST_PREFIXED="prefixed-value-3",
            CRONBUS_JOB_ENV_PASSTHROUGH="CB_TEST_ALLOWED,CB_TEST_PRE*,CRONBUS_ADMIN_KEY",
        )
        d = await dispatch(bus.js, settings, ShellExecutor(command="env", env={"OWN": "own-value-4"}))
        result = await final_outcome(bus.js, settings, d.run_id, timeout=30)
        assert result.status == "succeeded"
        # Output is stored before the outcome.
        output = await output_of(bus.js, settings, d.run_id)
        lines = set(output.decode().splitlines())
        assert admin_key not in output.decode()
        assert "unlisted-value-1" not in output.decode()
        assert {
            "CB_TEST_ALLOWED=allowed-value-2",
            "CB_TEST_PREFIXED=prefixed-value-3",
            "OWN=own-value-4",
            f"CRONBUS_RUN_ID={d.run_id}",
            f"CRONBUS_JOB_ID={d.job_id}",
            "CRONBUS_ATTEMPT=1",
            "TZ=UTC",
        } <= lines
        # Nothing of the runner's own configuration (CRONBUS_NATS_URL, CRONBUS_ACK_WAIT, ...).
        cronbus_names = {line.split("=", 1)[0] for line in lines if line.startswith("CRONBUS_")}
        assert cronbus_names == {"CRONBUS_RUN_ID", "CRONBUS_JOB_ID", "CRONBUS_SLOT", "CRONBUS_ATTEMPT"}
    finally:
        if runner is not None:
            kill_process(runner)
        await bus.close()
