"""The primacy lease: one key in the KV bucket `<p>_leader` whose value names the holder.

Acquired with `create` (fails while someone holds it), renewed with a revision-checked
`update` (fails once someone else took it), released on a clean stop with a revision-checked
`delete` so a standby takes over at once. The bucket's TTL expires the key of a holder that
stopped renewing; the holder fences itself before that (see `domain.Fence`).

`Term` is the one answer to "may I publish?": a term of primacy begins with a takeover and
ends for good when the fence closes, the lease is lost or given up, or the connection it
began on drops. Nothing else decides whether a dispatch goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from cronbus.scheduler.domain import Fence
from cronbus.shared import metrics

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


class Term:
    """One term of primacy: from a takeover until the first of

    * the fence closed: no renewal confirmed in time (the lease may expire on the server), or
      the lease lost or released (both revoke the fence);
    * the NATS connection the term began on dropped or was replaced (`connection()` returns
      another epoch, or None while disconnected): publishes of the old connection may be lost
      unacknowledged, so the term's account of what it dispatched is no longer whole;
    * `end()`, e.g. a stop or a dispatch window that stayed full.

    A term never reopens: the lease may outlive it, and the next term starts with its own
    takeover (from the watermark and DISPATCH)."""

    def __init__(self, fence: Fence, connection: Callable[[], int | None], *, revision: int | None) -> None:
        self._fence = fence
        self._connection = connection
        self.revision = revision
        self.epoch = connection()
        self.ended = False
        self.why = ""
        if self.epoch is None:
            self.end("not connected to NATS")
        else:
            metrics.LEASE_HELD.set(1)
            metrics.LEASE_CHANGES.labels("began").inc()

    def may_publish(self, now: float) -> bool:
        """Whether a dispatch may go out at monotonic time `now`; the first False ends the term."""
        if self.ended:
            return False
        if not self._fence.allows(now):
            self.end("no renewal confirmed before the fence closed")
        elif self._connection() != self.epoch:
            self.end("the connection to NATS was interrupted")
        return not self.ended

    def end(self, why: str) -> None:
        if not self.ended:
            log.warning("term of lease revision %s over: %s", self.revision, why)
            self.ended = True
            self.why = why
            metrics.LEASE_HELD.set(0)
            metrics.LEASE_CHANGES.labels("ended").inc()
