"""The primacy lease: one key in the KV bucket `<p>_leader` whose value names the holder.

Acquired with `create` (fails while someone holds it), renewed with a revision-checked
`update` (fails once someone else took it), released on a clean stop with a revision-checked
`delete` so a standby takes over at once. The bucket's TTL expires the key of a holder that
stopped renewing; the holder fences itself before that (see `domain.Fence`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cronbus.scheduler.domain import Fence

log = logging.getLogger(__name__)

LEASE_KEY = "leader"


class Lease:
    """This replica's view of the lease. Every KV call is bounded by `timeout`: a renewal that
    hangs must not keep us from trying again before the fence closes."""

    def __init__(self, kv: KeyValue, holder: str, fence: Fence, *, timeout: float) -> None:
        self._kv = kv
        self._holder = holder.encode()
        self.fence = fence
        self.timeout = timeout
        self.revision: int | None = None

    @property
    def held(self) -> bool:
        return self.revision is not None

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        sent = time.monotonic()
        try:
            revision = await asyncio.wait_for(self._kv.create(LEASE_KEY, self._holder), self.timeout)
        except KeyWrongLastSequenceError:
            return False
        self.revision = revision
        self.fence.renewed(sent)
        log.info("lease acquired (revision %d)", revision)
        return True

    async def renew(self) -> bool:
        """Extend the lease; False (and the fence closed) once it is someone else's."""
        assert self.revision is not None
        sent = time.monotonic()
        try:
            revision = await asyncio.wait_for(
                self._kv.update(LEASE_KEY, self._holder, last=self.revision), self.timeout
            )
        except KeyWrongLastSequenceError:
            if await self._still_ours():
                return True
            self.lose("renewal refused: the lease has another holder or expired")
            return False
        self.revision = revision
        self.fence.renewed(sent)
        return True

    async def _still_ours(self) -> bool:
        """After an update that timed out on our side but landed on the server, our revision is
        stale while the key is still ours: adopt its revision (the fence keeps counting from the
        last renewal we saw confirmed)."""
        try:
            entry = await asyncio.wait_for(self._kv.get(LEASE_KEY), self.timeout)
        except KeyNotFoundError:
            return False
        if entry.value == self._holder and entry.revision is not None:
            self.revision = entry.revision
            return True
        return False

    def lose(self, why: str) -> None:
        if self.revision is not None:
            log.warning("lease lost: %s", why)
        self.revision = None
        self.fence.revoke()

    async def release(self) -> None:
        """Give the lease up so a standby need not wait for the TTL. Never raises."""
        revision, self.revision = self.revision, None
        self.fence.revoke()
        if revision is None:
            return
        try:
            await asyncio.wait_for(self._kv.delete(LEASE_KEY, last=revision), self.timeout)
            log.info("lease released (revision %d)", revision)
        except Exception as exc:
            log.warning("lease release failed (%s); it expires with its TTL", exc)
