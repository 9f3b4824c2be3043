"""The environment a shell job runs with: minimal, documented, and never the runner's secrets.

A job gets a few variables every program expects (taken from the runner where they are
plain facts about the machine, like `PATH` or `LANG`), the run's own identity
(`CRONBUS_RUN_ID`, ...), the names the operator allow-lists in `CRONBUS_JOB_ENV_PASSTHROUGH`,
and its own `env`. Nothing else of the runner's environment reaches it: that environment holds
the runner's configuration and credentials (`CRONBUS_ADMIN_KEY`, a database URL with its
password, cloud keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cronbus.shared.settings import SettingsError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOME = "/"

# Taken from the runner when set: facts about the machine and the account, not secrets.
_INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TMPDIR")
# The runner's own configuration. Never passed on, even when allow-listed; the run's identity
# under this prefix is set by the runner itself.
_RUNNER_PREFIX = "CRONBUS_"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?|\*")


class PassthroughError(SettingsError):
    """A `CRONBUS_JOB_ENV_PASSTHROUGH` entry that is not a variable name or a `PREFIX*`."""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """What a job learns about its own run (as `CRONBUS_RUN_ID`, `CRONBUS_JOB_ID`, ...)."""

    run_id: str
    job_id: str
    slot: datetime
    attempt: int


def parse_passthrough(raw: str) -> tuple[str, ...]:
    """The allow-list: comma-separated names, each exact or a prefix ending in `*`."""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if not _NAME.fullmatch(name):
            raise PassthroughError(
                f"CRONBUS_JOB_ENV_PASSTHROUGH / --job-env-passthrough: {name!r} is not a variable "
                "name or a prefix ending in '*' (e.g. 'HTTP_PROXY,AWS_REGION,PG*')"
            )
    return names


def _allowed(name: str, passthrough: Sequence[str]) -> bool:
    if name.startswith(_RUNNER_PREFIX):
        return False
    for pattern in passthrough:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


def job_environment(
    runner_env: Mapping[str, str],
    *,
    passthrough: Sequence[str],
    run: RunIdentity,
    timezone: str,
    job_env: Mapping[str, str],
) -> dict[str, str]:
    """The complete environment of one shell run (see the module docstring and docs/runner.md).

    Later sources win: the base, then the allow-listed names, then the job's own `env`, then
    the run's identity (so a job cannot be told a wrong run id).
    """
    env = {name: runner_env[name] for name in _INHERITED if runner_env.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", DEFAULT_HOME)
    env.update({name: value for name, value in runner_env.items() if name.startswith("LC_")})
    env["SHELL"] = "/bin/sh"
    # The job's schedule is in its time zone; so are the times its programs print.
    env["TZ"] = timezone
    env.update({name: value for name, value in runner_env.items() if _allowed(name, passthrough)})
    env.update(job_env)
    env.update(
        {
            "CRONBUS_RUN_ID": run.run_id,
            "CRONBUS_JOB_ID": run.job_id,
            "CRONBUS_SLOT": run.slot.isoformat(),
            "CRONBUS_ATTEMPT": str(run.attempt),
        }
    )
    return env
