"""The service runtime and the embedded server's lifecycle, with real signals and processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

import psutil
import pytest

from cronbus.shared.runtime import ServiceFailed, run_services
from tests.support import wait_for, wait_for_sync


class Worker:
    """A service that records how it was stopped."""

    def __init__(self, name: str, *, fail: bool = False, linger: float = 0.0) -> None:
        self.name = name
        self.ready = asyncio.Event()
        self.fail = fail
        self.linger = linger
        self.stopped_cleanly = False

    async def run(self, stopping: asyncio.Event) -> None:
        self.ready.set()
        if self.fail:
            raise RuntimeError("boom")
        await stopping.wait()
        await asyncio.sleep(self.linger)  # in-flight work finishing within the grace period
        self.stopped_cleanly = True


async def test_sigterm_stops_every_service_gracefully():
    workers = [Worker("a"), Worker("b", linger=0.2)]
    task = asyncio.create_task(run_services(workers, grace=5))
    await wait_for(lambda: all(w.ready.is_set() for w in workers), what="services ready")
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, timeout=10)
    assert all(w.stopped_cleanly for w in workers)


async def test_a_failing_service_stops_the_others_and_is_reported():
    healthy = Worker("healthy")
    with pytest.raises(ServiceFailed, match="broken: boom"):
        await asyncio.wait_for(
            run_services([healthy, Worker("broken", fail=True)], grace=5, install_signals=False), timeout=10
        )
    assert healthy.stopped_cleanly


async def test_a_service_that_ignores_the_grace_period_is_cancelled():
    stuck = Worker("stuck", linger=3600)
    stopping = asyncio.Event()
    stopping.set()
    # grace 0 -> cancelled after 10 s at most; it must not hang the process.
    with pytest.raises(ServiceFailed, match="stuck cancelled"):
        await asyncio.wait_for(run_services([stuck], grace=0, stopping=stopping, install_signals=False), 30)


@pytest.mark.slow
def test_embedded_server_dies_with_a_killed_parent(tmp_path):
    """Even a SIGKILLed parent leaves no nats-server behind (parent-death signal)."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from cronbus.shared.natsd import EmbeddedNats
        async def main():
            server = await EmbeddedNats({str(tmp_path / "store")!r}).start()
            print(server.pid, flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
        """
    )
    parent = psutil.Popen([sys.executable, "-c", script], stdout=-1, text=True)
    try:
        assert parent.stdout is not None
        nats_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(nats_pid)
        parent.kill()
        parent.wait(10)
        wait_for_sync(
            lambda: (
                not psutil.pid_exists(nats_pid) or psutil.Process(nats_pid).status() == psutil.STATUS_ZOMBIE
            ),
            timeout=15,
            what="nats-server gone after its parent was killed",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
