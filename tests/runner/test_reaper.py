"""The reaper: it ends the process groups it was told about once the runner's pipe closes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil

from cronbus.runner.processes import Reaper
from tests.support import wait_for


def _group_leader(marker: str) -> subprocess.Popen[bytes]:
    # A shell in its own session with a child of its own: the whole group must end.
    return subprocess.Popen(
        ["/bin/sh", "-c", f"sleep {marker} & wait"], start_new_session=True, stdin=subprocess.DEVNULL
    )


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def test_a_reaper_that_died_is_replaced_and_learns_every_group_in_flight():
    reaper = Reaper()
    reaper.start()
    first, second = _group_leader("1000.11"), _group_leader("1000.12")
    try:
        reaper.track(first.pid)
        assert reaper._proc is not None
        old = reaper._proc
        old.kill()
        old.wait(timeout=10)
        # The next message finds the reaper gone: a new one starts and hears of both groups.
        reaper.track(second.pid)
        assert reaper._proc is not None and reaper._proc is not old
        new_pid = reaper._proc.pid
        # The runner "dies": its end of the pipe closes.
        reaper.close_pipe()
        await wait_for(lambda: not _alive(first) and not _alive(second), timeout=10, what="groups ended")
        assert not _living_members({first.pid, second.pid})
        await wait_for(lambda: reaper._proc is not None and reaper._proc.poll() is not None, what="exit")
        assert reaper._proc.pid == new_pid
    finally:
        for proc in (first, second):
            _end_group(proc)
        await reaper.close()


async def test_a_group_that_ended_is_forgotten():
    reaper = Reaper()
    reaper.start()
    survivor = _group_leader("1000.13")
    try:
        reaper.track(survivor.pid)
        reaper.untrack(survivor.pid)
        await reaper.close()
        assert _alive(survivor)
    finally:
        _end_group(survivor)


def _living_members(groups: set[int]) -> list[psutil.Process]:
    """Processes of `groups` that still run (a killed orphan may linger as a zombie)."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError):
            continue
    return found
