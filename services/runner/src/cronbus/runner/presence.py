"""Runner presence: a `RunnerPresence` under this runner's id in KV `<p>_runners`.

The bucket has a TTL, so a runner that dies disappears on its own; a live one rewrites its
key several times per TTL, and deletes it on a graceful stop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from importlib import metadata

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from cronbus.shared.events import utcnow
from cronbus.shared.settings import Settings
from cronbus.shared.status import RunnerPresence, encode_status

log = logging.getLogger(__name__)


def runner_version() -> str:
    try:
        return metadata.version("cronbus-runner")
    except metadata.PackageNotFoundError:
        return "unknown"


class Presence:
    def __init__(self, kv: KeyValue, settings: Settings, running: Callable[[], int]) -> None:
        self.kv = kv
        self.settings = settings
        self._running = running
        self.started_at: datetime = utcnow()
        self.version = runner_version()

    @property
    def refresh_every(self) -> float:
        ttl = max(3 * self.settings.heartbeat, 5.0)
        return min(self.settings.heartbeat, ttl / 4)

    def snapshot(self) -> RunnerPresence:
        return RunnerPresence(
            id=self.settings.instance_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            pools=list(self.settings.pools),
            running=self._running(),
            capacity=self.settings.concurrency + self.settings.http_concurrency,
            version=self.version,
            started_at=self.started_at,
            updated_at=utcnow(),
            slots=self.settings.concurrency,
            http_slots=self.settings.http_concurrency,
        )

    async def publish(self) -> None:
        await self.kv.put(self.settings.instance_id, encode_status(self.snapshot()))

    async def keep(self, until: asyncio.Event) -> None:
        """Refresh until `until` is set; errors (NATS restarting) are logged and retried.

        A stopping runner keeps its presence while it still holds runs (its grace period may
        outlast the TTL): other runners count its runs against the job's overlap policy only
        while it is present.
        """
        while not until.is_set():
            try:
                await self.publish()
            except Exception as exc:
                log.warning("runner presence refresh failed: %s", exc)
            try:
                await asyncio.wait_for(until.wait(), timeout=self.refresh_every)
            except TimeoutError:
                pass

    async def withdraw(self) -> None:
        try:
            await self.kv.delete(self.settings.instance_id)
        except Exception as exc:
            log.warning("could not delete runner presence %s: %s", self.settings.instance_id, exc)

    async def is_live(self, runner_id: str) -> bool:
        """Whether `runner_id` has a presence key (errors count as live: never evict wrongly)."""
        try:
            entry = await self.kv.get(runner_id)
        except KeyNotFoundError:
            return False
        except Exception as exc:
            log.warning("could not read presence of runner %s: %s", runner_id, exc)
            return True
        return bool(entry.value)
