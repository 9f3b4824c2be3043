"""Helpers the tests share: waiting on conditions with deadlines, and process handling."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
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
    import signal

    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


def up_environment(**extra: str) -> dict[str, str]:
    """The environment of a `cronbus up` a test starts: none of the test's own CRONBUS_* or
    OTEL_* settings, one runner process, and `extra`."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRONBUS_", "OTEL_"))}
    env["CRONBUS_PROCESSES"] = "1"
    env.update(extra)
    return env


def up_command(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "cronbus.shared.cli", "up", "--data-dir", str(data_dir), "--api-port", "0"]


@contextlib.contextmanager
def running_up(data_dir: Path, **env: str) -> Iterator[dict[str, str]]:
    """A real `cronbus up` on `data_dir` (its own process group), ready: yields its
    cronbus.json; stopped with SIGTERM (SIGKILL after 60 s) on the way out."""
    import json
    import os
    import signal
    import subprocess

    import httpx

    log = (data_dir.parent / f"{data_dir.name}-up.log").open("wb")
    proc = subprocess.Popen(
        up_command(data_dir), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env=up_environment(**env), start_new_session=True,
    )  # fmt: skip
    try:
        state_file = data_dir / "cronbus.json"
        wait_for_sync(lambda: state_file.exists() or proc.poll() is not None, timeout=60, what="cronbus up")
        assert proc.poll() is None, f"cronbus up exited; see {log.name}"
        state: dict[str, str] = json.loads(state_file.read_text())

        def ready() -> bool:
            try:
                return httpx.get(state["api_url"] + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for_sync(ready, timeout=60, what="API ready")
        yield state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.asynccontextmanager
async def running_up_async(data_dir: Path, **env: str) -> AsyncIterator[dict[str, str]]:
    """`running_up` for async tests: waits without blocking the event loop."""
    import json
    import os
    import signal

    import httpx

    with (data_dir.parent / f"{data_dir.name}-up.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *up_command(data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=up_environment(**env),
            start_new_session=True,
        )
    try:
        state_file = data_dir / "cronbus.json"
        await wait_for(
            lambda: state_file.exists() or proc.returncode is not None, timeout=60, what="cronbus up"
        )
        assert proc.returncode is None, "cronbus up exited"
        state: dict[str, str] = json.loads(state_file.read_text())

        async def ready() -> bool:
            async with httpx.AsyncClient(timeout=2) as client:
                try:
                    return (await client.get(state["api_url"] + "/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

        await wait_for(ready, timeout=60, what="API ready")
        yield state
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=60)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
