"""A service run as a child process (`cronbus <service>`), so one host's services use all its cores.

`cronbus up` and `cronbus runner --processes N` start services this way. The parent passes the
settings it resolved through the environment (so the child reads exactly what the parent did)
and a pipe on which the child says it is ready (`CRONBUS_READY_FD`, written by
`runtime.serve` once every service in the child is serving). A child stops with its parent:
SIGTERM on a stop (it then finishes or hands back its work within its grace period) and, if
the parent is killed, through the kernel's parent-death signal.

A child that dies after it was ready is started again after a backoff (a runner killed by the
out-of-memory killer should not take the host's other work down); one that dies before it
was ever ready fails the parent, since that is usually a setting an operator must fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
from typing import Any

from cronbus.shared.natsd import die_with_parent
from cronbus.shared.settings import Settings, settings_environment, settings_for

log = logging.getLogger(__name__)

READY_FD_ENV = "CRONBUS_READY_FD"


class ChildFailed(RuntimeError):
    """A child service exited before it was ever ready."""


class ChildService:
    """One `cronbus <service>` child process with `settings`; restarted if it dies while serving."""

    def __init__(
        self, service: str, settings: Settings, *, restart_backoff: float = 1.0, niceness: int = 0
    ) -> None:
        self.service = service
        # Added to the child's nice value: work that may lag (the history) yields the cores to
        # work that must be on time (dispatch, runs) when they are short.
        self.niceness = niceness
        self.settings = settings
        self.name = f"{service}[{settings.instance_id}]"
        self.ready = asyncio.Event()
        self.pid: int | None = None
        self.restarts = 0
        self._backoff = restart_backoff

    def _environment(self, ready_fd: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRONBUS_")}
        # Only what this service reads: a runner's environment never holds the admin key.
        env.update(settings_environment(self.settings, only=settings_for(self.service)))
        env[READY_FD_ENV] = str(ready_fd)
        return env

    async def run(self, stopping: asyncio.Event) -> None:
        delay = self._backoff
        while not stopping.is_set():
            code, was_ready = await self._run_once(stopping)
            if stopping.is_set():
                return
            if not was_ready:
                raise ChildFailed(f"{self.name} exited with {_describe(code)} before it was ready")
            self.restarts += 1
            log.error("%s exited with %s; starting it again in %.0fs", self.name, _describe(code), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            delay = min(delay * 2, 30.0)

    async def _run_once(self, stopping: asyncio.Event) -> tuple[int, bool]:
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cronbus.shared.cli", self.service,
                env=self._environment(write_fd),
                pass_fds=(write_fd,),
                stdin=asyncio.subprocess.DEVNULL,
                # Out of the terminal's process group: Ctrl-C reaches the parent, which stops us.
                start_new_session=True,
                preexec_fn=functools.partial(_prepare_child, self.niceness),
            )  # fmt: skip
        finally:
            os.close(write_fd)
        self.pid = proc.pid
        was_ready = False
        reader = asyncio.create_task(_read_ready(read_fd))
        exited = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(stopping.wait())
        try:
            pending: set[asyncio.Future[Any]] = {reader, exited, stop}
            while not exited.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if reader in done and reader.result():
                    was_ready = True
                    self.ready.set()
                if stop in done:
                    await self._stop(proc)
                    break
            return await exited, was_ready
        finally:
            for task in (reader, stop):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, then the child's grace period and a margin, then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=self.settings.grace_period + 10.0)
        except TimeoutError:
            log.error("%s did not stop within its grace period; killing it", self.name)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _prepare_child(niceness: int) -> None:  # pragma: no cover - runs between fork and exec
    if sys.platform == "linux":
        die_with_parent()
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)


async def _read_ready(fd: int) -> bool:
    """True once the child writes its ready line; False if it closes the pipe first."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        return (await reader.readline()).strip() == b"ready"
    finally:
        transport.close()


def notify_ready() -> None:
    """In a child: tell the parent every service is serving (no-op when not started as a child)."""
    raw = os.environ.pop(READY_FD_ENV, "")
    if not raw.isdigit():
        return
    fd = int(raw)
    try:
        os.write(fd, b"ready\n")
    except OSError as exc:
        log.warning("could not tell the parent this process is ready: %s", exc)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def instances(service: str, settings: Settings, processes: int) -> list[ChildService]:
    """`processes` children of `service`, each with its own instance id (`<id>-<k>`)."""
    return [
        ChildService(
            service,
            dataclasses.replace(
                settings,
                instance_id=f"{settings.instance_id}-{k}",
                metrics_port=settings.metrics_port + k - 1 if settings.metrics_port else 0,
            ),
        )
        for k in range(1, processes + 1)
    ]
