"""Helpers the tests share: waiting on conditions with deadlines, and process handling."""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class ConditionTimeout(AssertionError):
    pass


async def wait_for(
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `condition` (sync or async) until it returns something truthy; fail after `timeout`.

    Returns that value, so `rows = await wait_for(lambda: fetch() if ... )` reads naturally.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"{what} not met within {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)


def wait_for_sync(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        value = condition()
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"{what} not met within {timeout}s (last value: {last!r})")
        time.sleep(interval)


def service_command(service: str, *, nats_url: str, prefix: str, instance_id: str) -> list[str]:
    """The argv of one `cronbus <service>` process, as an operator would start it."""
    return [
        sys.executable, "-m", "cronbus.shared.cli", service,
        "--nats-url", nats_url, "--prefix", prefix, "--instance-id", instance_id,
    ]  # fmt: skip


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    """SIGTERM, then SIGKILL if `proc` has not exited within `timeout`; its exit code."""
    import contextlib
    import signal

    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()
