"""JetStream publishes acknowledged through one inbox of ours.

`JetStreamContext.publish_async` costs about as much per message as everything else the
scheduler does for a dispatch: a NUID and random token per publish, a semaphore wait, a string-
keyed registry, and for every acknowledgement a JSON parse into a dataclass built by
reflection. A burst of 10,000 due slots spends most of its time there. `AckedPublisher` keeps
the same contract (a future per publish that resolves to the `PubAck` or fails with the API
error) with a counter for tokens and a msgspec decoder for acknowledgements.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

log = logging.getLogger(__name__)


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int | None = None
    description: str = ""


class _Ack(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    domain: str | None = None
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_Ack)
_SWEEP_EVERY = 4096


class AckedPublisher:
    """`publish_async` for one connection: each publish gets a reply subject `<inbox>.<n>` and
    a future that the acknowledgement resolves. Call `start` once before publishing."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[PubAck]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        # No pending limit worth hitting: at most the dispatcher's window awaits its acks.
        self._sub = await self._nc.subscribe(
            self._prefix + "*", cb=self._on_ack, pending_msgs_limit=1_000_000
        )

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("acknowledgement inbox unsubscribe failed: %r", exc)
            self._sub = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def publish_async(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Publish; the returned future resolves with the stream's acknowledgement."""
        assert self._sub is not None, "AckedPublisher.start() first"
        token = next(self._tokens)
        if token % _SWEEP_EVERY == 0:
            # Futures given up on (timed out, cancelled) must not stay registered; sweeping now
            # and then is cheaper than a done-callback on every publish.
            self._waiting = {r: f for r, f in self._waiting.items() if not f.done()}
        reply = f"{self._prefix}{token}"
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = future
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except BaseException:
            self._waiting.pop(reply, None)
            raise
        return future

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is None or future.done():
            return
        if not msg.data:
            # A status message: 503 means no stream listens on the subject.
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _ack_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            future.set_exception(exc)
            return
        if ack.error is not None:
            future.set_exception(
                APIError(code=ack.error.code, err_code=ack.error.err_code, description=ack.error.description)
            )
            return
        future.set_result(PubAck(stream=ack.stream, seq=ack.seq, domain=ack.domain, duplicate=ack.duplicate))
