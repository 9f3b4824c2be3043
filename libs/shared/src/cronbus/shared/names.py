"""Stream, subject, bucket and consumer names, all derived from one prefix (CRONBUS_PREFIX)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# Tokens that become one subject token: no dots, spaces or wildcards.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class NameError_(ValueError):
    """A prefix, pool or id that cannot become a subject token."""


def check_token(kind: str, value: str) -> str:
    """`value` unchanged when it is a safe subject token, else a NameError_ naming `kind`."""
    if not _TOKEN.match(value):
        raise NameError_(
            f"{kind} {value!r} must be 1-128 characters of letters, digits, '-' or '_' "
            "(it becomes a NATS subject token)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Names:
    """Every NATS name cronbus uses. Streams are upper-case, subjects and buckets lower-case."""

    prefix: str = "cronbus"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise NameError_(
                f"prefix {self.prefix!r} must start with a lower-case letter and hold at most 32 "
                "lower-case letters, digits, '-' or '_'"
            )

    @property
    def _up(self) -> str:
        return self.prefix.upper().replace("-", "_")

    @property
    def _low(self) -> str:
        return self.prefix.replace("-", "_")

    # streams
    @property
    def jobs_stream(self) -> str:
        return f"{self._up}_JOBS"

    @property
    def dispatch_stream(self) -> str:
        return f"{self._up}_DISPATCH"

    @property
    def runs_stream(self) -> str:
        return f"{self._up}_RUNS"

    @property
    def logs_stream(self) -> str:
        return f"{self._up}_LOGS"

    @property
    def audit_stream(self) -> str:
        """Who changed what, for the actions that are not job events (see docs/api.md)."""
        return f"{self._up}_AUDIT"

    # subjects
    def job_subject(self, job_id: str) -> str:
        return f"{self.prefix}.job.{job_id}"

    @property
    def jobs_all(self) -> str:
        return f"{self.prefix}.job.*"

    def dispatch_subject(self, pool: str, job_id: str) -> str:
        return f"{self.prefix}.dispatch.{pool}.{job_id}"

    def dispatch_pool(self, pool: str) -> str:
        return f"{self.prefix}.dispatch.{pool}.*"

    @property
    def dispatch_all(self) -> str:
        return f"{self.prefix}.dispatch.*.*"

    def run_subject(self, job_id: str, run_id: str) -> str:
        return f"{self.prefix}.run.{job_id}.{run_id}"

    @property
    def runs_all(self) -> str:
        return f"{self.prefix}.run.*.*"

    def log_subject(self, run_id: str) -> str:
        return f"{self.prefix}.log.{run_id}"

    @property
    def logs_all(self) -> str:
        return f"{self.prefix}.log.*"

    def audit_subject(self, action: str) -> str:
        """`action` is a dotted name such as `key.created`: its tokens become subject tokens."""
        return f"{self.prefix}.audit.{action}"

    @property
    def audit_all(self) -> str:
        return f"{self.prefix}.audit.>"

    def cancel_subject(self, run_id: str) -> str:
        """Core NATS (not stored): asks the runner holding `run_id` to kill it."""
        return f"{self.prefix}.cancel.{run_id}"

    # key-value buckets
    @property
    def leader_bucket(self) -> str:
        return f"{self._low}_leader"

    @property
    def runners_bucket(self) -> str:
        return f"{self._low}_runners"

    @property
    def scheduler_bucket(self) -> str:
        """Scheduler state that outlives a lease: the watermark and the leader's status."""
        return f"{self._low}_scheduler"

    @property
    def running_bucket(self) -> str:
        """One key per job with runs in flight, for overlap policies across runners."""
        return f"{self._low}_running"

    @property
    def keys_bucket(self) -> str:
        """The API keys every API replica watches: one key per API key id, never the secret."""
        return f"{self._low}_keys"

    # durable consumers: <service>-<purpose>
    @staticmethod
    def runner_consumer(pool: str) -> str:
        return f"runner-{pool}"

    @staticmethod
    def logs_consumer(stream_kind: str) -> str:
        return f"logs-{stream_kind}"
