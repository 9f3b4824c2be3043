"""Which values of a job are secret: write-only in the API, masked in run output.

A shell job's secrets are the `env` values named in `executor.secrets`. An http job's are
the `headers` values named there, plus every header that is secret by its name alone
(`Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, and any name ending in
`-Token` or `-Key`, compared case-insensitively).
"""

from __future__ import annotations

from cronbus.shared.events import Executor, HttpExecutor, ShellExecutor

MASK = "***"

_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
_SECRET_SUFFIXES = ("-token", "-key")

# Values shorter than this are not masked in output: masking "1" or "ab" would garble
# ordinary text and protect nothing.
MIN_MASKED_LENGTH = 4


def is_secret_header(name: str) -> bool:
    """True for a header whose value is secret whatever the job says."""
    lowered = name.strip().lower()
    return lowered in _SECRET_HEADERS or lowered.endswith(_SECRET_SUFFIXES)


def secret_names(executor: Executor) -> frozenset[str]:
    """The keys of `env` (shell) or `headers` (http) whose values are secret."""
    match executor:
        case ShellExecutor(env=env, secrets=marked):
            wanted = set(marked)
            return frozenset(k for k in env if k in wanted)
        case HttpExecutor(headers=headers, secrets=marked):
            wanted = {m.lower() for m in marked}
            return frozenset(k for k in headers if k.lower() in wanted or is_secret_header(k))
    return frozenset()


def secret_values(executor: Executor) -> list[str]:
    """The secret values themselves, longest first (so a value containing another masks whole)."""
    match executor:
        case ShellExecutor(env=values) | HttpExecutor(headers=values):
            names = secret_names(executor)
            found = {values[k] for k in names if len(values[k]) >= MIN_MASKED_LENGTH}
            return sorted(found, key=len, reverse=True)
    return []
