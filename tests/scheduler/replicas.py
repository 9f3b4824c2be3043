"""Scheduler replicas as real `cronbus scheduler` processes, and the lease history as the server
recorded it: what the failover tests and benchmarks kill and count."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from nats.js.kv import KeyValue

from cronbus.scheduler.lease import LEASE_KEY
from tests.support import service_command

FAST_LEASE = {
    "CRONBUS_LEASE_TTL": "2",
    "CRONBUS_LEASE_RENEW": "0.3",
    "CRONBUS_LEASE_MARGIN": "0.5",
    "CRONBUS_GRACE_PERIOD": "3",
}


@dataclass
class Replicas:
    """Starts, signals and reaps scheduler processes; every process gets a fresh instance id so
    each dispatch names the process life that made it."""

    nats_url: str
    prefix: str
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _count: int = 0

    def spawn(self) -> str:
        instance_id = f"s{self._count}"
        self._count += 1
        env = {**os.environ, **FAST_LEASE, **self.env}
        log = (self.log_dir / f"{instance_id}.log").open("wb")
        self.procs[instance_id] = subprocess.Popen(
            service_command("scheduler", nats_url=self.nats_url, prefix=self.prefix, instance_id=instance_id),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return instance_id

    def alive(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def signal(self, instance_id: str, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.procs[instance_id].send_signal(sig)

    async def wait_exit(self, instance_id: str, timeout: float = 15.0) -> int:
        proc = self.procs[instance_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while proc.poll() is None:
            if loop.time() > deadline:
                raise TimeoutError(f"replica {instance_id} did not exit within {timeout}s")
            await asyncio.sleep(0.05)
        return proc.returncode

    def kill_all(self) -> None:
        """SIGKILL every process still running (also stopped ones) and reap them."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class LeaseEntry:
    revision: int
    holder: str | None  # None: deleted or purged
    at: datetime


@dataclass
class LeaseHistory:
    """Every change of the lease key, with the server's timestamps, as a watcher saw them."""

    entries: dict[int, LeaseEntry] = field(default_factory=dict)
    # Set to make the watcher start over (after a server restart its subscription is gone).
    rewatch: asyncio.Event = field(default_factory=asyncio.Event)
    watching: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, kv_of: object, stopping: asyncio.Event) -> None:
        """Watch the key until `stopping`, re-watching after errors or when asked."""
        while not stopping.is_set():
            try:
                kv: KeyValue = await kv_of()  # type: ignore[operator]
                watcher = await kv.watch(LEASE_KEY)
                self.rewatch.clear()
                self.watching.set()
                try:
                    while not stopping.is_set() and not self.rewatch.is_set():
                        try:
                            entry = await watcher.updates(timeout=0.5)
                        except TimeoutError:
                            continue
                        if entry is None or entry.revision is None:
                            continue
                        holder = entry.value.decode() if entry.operation is None and entry.value else None
                        created = entry.created
                        assert isinstance(created, datetime)
                        self.entries[entry.revision] = LeaseEntry(entry.revision, holder, created)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            except Exception:
                self.watching.clear()
                await asyncio.sleep(0.2)

    def holder_at(self, t: datetime, ttl: float) -> str | None:
        """Who held the lease at server time `t` (None: nobody)."""
        before = [e for e in self.entries.values() if e.at <= t]
        if not before:
            return None
        last = max(before, key=lambda e: e.revision)
        if last.holder is None or (t - last.at).total_seconds() > ttl:
            return None
        return last.holder
