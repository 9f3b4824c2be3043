"""A run's process group: ending all of it (grandchildren too) and measuring its cost.

A shell run starts in its own session, so its process id is also its process-group id and
every process it forks stays in that group unless it deliberately leaves (setsid). Killing
the group therefore ends the whole tree, including children whose parent already exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import subprocess
from typing import Any

import psutil

log = logging.getLogger(__name__)

# How often the accounting sampler looks at the process tree.
SAMPLE_INTERVAL = 0.25


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); the others were still signalled.
        log.warning("process group %d: not allowed to signal every member", pgid)
    return True


def group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


async def end_group(pgid: int, *, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is still there after `grace` seconds."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # There is no event for "a process group became empty"; poll briefly, with a deadline.
    while loop.time() < deadline:
        await asyncio.sleep(0.02)
        if not group_alive(pgid):
            return
    if _signal_group(pgid, signal.SIGKILL):
        log.info("process group %d ignored SIGTERM for %.1fs; killed it", pgid, grace)
        kill_deadline = loop.time() + 5.0
        while loop.time() < kill_deadline:
            await asyncio.sleep(0.02)
            if not group_alive(pgid):
                return


class TreeUsage:
    """CPU time and peak resident memory of a process and its descendants.

    Sampled while it runs (peak memory is the largest sum over the tree seen), then completed
    with the kernel's accounting at exit. Descendants that exit between samples without being
    waited for by the tree are not seen, so the figures are lower bounds.
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.cpu_ms: float | None = None
        self.peak_rss_bytes: int | None = None
        self._root: psutil.Process | None = None

    def sample(self) -> bool:
        """One look at the tree (blocking: reads /proc). False once the root is gone."""
        try:
            if self._root is None:
                self._root = psutil.Process(self._pid)
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return False
        cpu = 0.0
        rss = 0
        for proc in procs:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
            # children_* hold the time of descendants already waited for, so none is counted twice.
            cpu += times.user + times.system + times.children_user + times.children_system
        self.cpu_ms = max(self.cpu_ms or 0.0, cpu * 1000.0)
        self.peak_rss_bytes = max(self.peak_rss_bytes or 0, rss)
        return True

    async def follow(self) -> None:
        """Sample until the root exits or the task is cancelled. Short runs are never sampled:
        the kernel's figures at exit (`include`) cover them."""
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            if not await asyncio.to_thread(self.sample):
                return

    def include(self, usage: resource.struct_rusage) -> None:
        """The root's own figures at exit: its CPU time and that of the descendants it waited
        for, and the largest resident set among them (the kernel reports KiB)."""
        cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000.0
        self.cpu_ms = max(self.cpu_ms or 0.0, cpu_ms)
        self.peak_rss_bytes = max(self.peak_rss_bytes or 0, usage.ru_maxrss * 1024)


async def stop_task(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


class ChildProcess:
    """A started command whose exit is awaited through a pidfd: no helper thread per child and
    no process-wide child watcher, and the exit comes with the kernel's resource usage."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self._loop = loop
        self.pid = popen.pid
        self.returncode: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.stdout = asyncio.StreamReader(limit=1 << 20)
        self.stderr = asyncio.StreamReader(limit=1 << 20)
        self._transports: list[asyncio.BaseTransport] = []
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = None
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, argv: list[str], *, env: dict[str, str] | None, cwd: str | None) -> ChildProcess:
        """Start `argv` in a new session with stdin closed and stdout/stderr piped.

        OSError (no such program or directory) propagates.
        """
        loop = asyncio.get_running_loop()
        popen = _spawn(argv, env=env, cwd=cwd)
        child = cls(popen, loop)
        try:
            child._watch_exit()
            for pipe, reader in ((popen.stdout, child.stdout), (popen.stderr, child.stderr)):
                transport, _ = await loop.connect_read_pipe(
                    lambda reader=reader: asyncio.StreamReaderProtocol(reader),  # type: ignore[misc]
                    pipe,
                )
                child._transports.append(transport)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            child.close()
            raise
        return child

    def _watch_exit(self) -> None:
        if hasattr(os, "pidfd_open"):
            self._pidfd = os.pidfd_open(self.pid)
            self._loop.add_reader(self._pidfd, self._reap)
        else:  # pragma: no cover - kernels and systems without pidfds
            self._poller = self._loop.create_task(self._poll_exit())

    async def _poll_exit(self) -> None:  # pragma: no cover
        # Without pidfds there is no per-process exit event short of a global child watcher.
        while True:
            await asyncio.sleep(0.05)
            if self._reap():
                return

    def _reap(self) -> bool:
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else in this process reaped it (a wait on any child): the status is gone.
            log.warning("process %d was reaped elsewhere; its exit status is unknown", self.pid)
            pid, status, usage = self.pid, 255 << 8, None
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.rusage = usage
        # Popen must not try to reap a pid that may already belong to someone else.
        self._popen.returncode = self.returncode
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exited.done():
            self._exited.set_result(self.returncode)
        return True

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def close(self) -> None:
        """Release the pipes and the pidfd (the process itself is the caller's to end)."""
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        for pipe in (self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                pipe.close()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poller is not None:
            self._poller.cancel()


def _spawn(argv: list[str], *, env: dict[str, str] | None, cwd: str | None) -> subprocess.Popen[bytes]:
    # vfork + exec: the loop waits about a millisecond until the child has exec'd, exactly as
    # with asyncio.create_subprocess_exec (which forks on the loop the same way).
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
