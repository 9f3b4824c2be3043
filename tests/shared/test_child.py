"""Services in child processes: `cronbus runner --processes N` starts N runners that report
themselves, restarts one that dies, and stops them all with the parent (even a killed one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import psutil
import pytest
from nats.js.errors import NoKeysError

from cronbus.shared.bus import Bus
from cronbus.shared.settings import Settings, build_settings, settings_environment
from cronbus.shared.status import decode_runner_presence
from tests.support import service_command, wait_for


async def two_runners(bus: Bus, settings: Settings, *, not_pid: int | None = None) -> dict[str, int] | None:
    """Both runners' pids once both are present (and host-1 is not `not_pid`), else None."""
    runners = await present_runners(bus, settings)
    if len(runners) != 2 or (not_pid is not None and runners.get("host-1") in (None, not_pid)):
        return None
    return runners


async def present_runners(bus: Bus, settings: Settings) -> dict[str, int]:
    """Runner id -> pid of every runner in the presence bucket."""
    kv = await bus.js.key_value(settings.names.runners_bucket)
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    out = {}
    for key in keys:
        with contextlib.suppress(Exception):
            presence = decode_runner_presence((await kv.get(key)).value or b"")
            out[presence.id] = presence.pid
    return out


@contextlib.asynccontextmanager
async def runner_processes(settings: Settings, processes: int) -> AsyncIterator[asyncio.subprocess.Process]:
    argv = service_command("runner", nats_url=settings.nats_url, prefix=settings.prefix, instance_id="host")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
    proc = await asyncio.create_subprocess_exec(
        *argv, "--processes", str(processes), "--grace-period", "3", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            await proc.wait()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_processes_start_report_restart_and_stop_together(settings: Settings) -> None:
    bus = await Bus.open(settings, "test")
    try:
        async with runner_processes(settings, 2) as parent:
            runners = await wait_for(
                lambda: two_runners(bus, settings), timeout=60, what="two runners present"
            )
            assert set(runners) == {"host-1", "host-2"}
            assert all(psutil.Process(pid).ppid() == parent.pid for pid in runners.values())

            # One dies: it is started again under the same id, the other is untouched.
            os.kill(runners["host-1"], signal.SIGKILL)
            restarted = await wait_for(
                lambda: two_runners(bus, settings, not_pid=runners["host-1"]),
                timeout=60,
                what="host-1 started again",
            )
            assert restarted["host-2"] == runners["host-2"]

            parent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(parent.wait(), timeout=60) == 0
            assert not any(alive(pid) for pid in restarted.values())
    finally:
        await bus.close()


async def test_children_stop_when_the_parent_is_killed(settings: Settings) -> None:
    bus = await Bus.open(settings, "test")
    try:
        async with runner_processes(settings, 2) as parent:
            runners = await wait_for(
                lambda: two_runners(bus, settings), timeout=60, what="two runners present"
            )
            parent.kill()
            await parent.wait()
            await wait_for(
                lambda: not any(alive(pid) for pid in runners.values()),
                timeout=30,
                what="children gone after the parent was killed",
            )
    finally:
        await bus.close()


def test_settings_survive_the_trip_through_the_environment(tmp_path: object) -> None:
    original = build_settings(
        environ={},
        nats_url="nats://a:1,nats://b:2",
        pools=("default", "gpu"),
        lease_ttl=3.5,
        concurrency=17,
        data_dir=tmp_path,
        history_log_bytes_total=5 << 20,
    )
    assert build_settings(environ=settings_environment(original)) == original


@pytest.mark.parametrize("service", ["runner", "logs"])
def test_a_child_is_given_only_the_settings_its_service_reads(service: str) -> None:
    from cronbus.shared.child import ChildService

    settings = build_settings(environ={}, admin_key="cb_secret")
    env = ChildService(service, settings)._environment(99)
    assert "CRONBUS_ADMIN_KEY" not in env
    assert env["CRONBUS_NATS_URL"] == settings.nats_url
    assert sys.executable  # the child runs this interpreter
