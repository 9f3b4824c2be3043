"""JetStream publishes acknowledged through one inbox of ours, sent in batches.

`JetStreamContext.publish_async` costs about as much per message as everything else the
scheduler does for a dispatch: a NUID and random token per publish, a semaphore wait, a string-
keyed registry, and for every acknowledgement a JSON parse into a dataclass built by
reflection and a future. `Client.publish` under it validates the subject and reply with
regexes, rebuilds the headers byte by byte and is a coroutine chain per message. A burst of
10,000 due slots spent most of its time there.

`AckedPublisher.publish_many` builds the HPUB commands of a whole batch in one pass and queues
them as one write; each message gets a reply subject `<inbox>.<n>` (its key), and the
acknowledgements that arrive are settled together by calling the batch's `on_ack(key,
acknowledgement or error)` for each: once publishing pauses for a turn of the event loop, or
after at most SETTLE_WITHIN seconds. So a burst's publishes go out first and their
acknowledgements are handled after (nothing but the stored time of the last message counts for
how late a burst was).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from cronbus.shared.bus import PubAckWire

log = logging.getLogger(__name__)


# A stream's acknowledgement of a publish, decoded by msgspec.
Acked = PubAckWire


_ack_decoder = msgspec.json.Decoder(Acked)
# What nats-py refuses in a subject (a CR/LF would inject protocol commands).
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
_NEWLINE = re.compile(r"[\r\n]")

# (subject, header block from `header_block`, payload)
Outgoing = tuple[str, bytes, bytes]
# How long acknowledgements may wait for their settlement while publishing goes on. Well inside
# any sensible ack timeout (the dispatcher's is 2s).
SETTLE_WITHIN = 0.5
# Called once per message with its key and its acknowledgement (`duplicate`: JetStream had its
# Nats-Msg-Id already), or the error that kept it from being stored.
OnAck = Callable[[str, "Acked | BaseException"], None]


def header_block(headers: Mapping[str, str]) -> bytes:
    """The NATS header block (`NATS/1.0` line, `Key: value` lines, blank line) of `headers`.
    Keys are ours (constants); a value holding a line break is refused rather than sent."""
    lines = ["NATS/1.0\r\n"]
    for key, value in headers.items():
        if _NEWLINE.search(value):
            raise ValueError(f"header {key} holds a line break: {value!r}")
        lines.append(f"{key}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


class AckedPublisher:
    """Batched JetStream publishes over one connection, acknowledged through one inbox. Call
    `start` once before publishing."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._tokens = itertools.count()
        self._waiting: dict[str, OnAck] = {}
        self._sub: Subscription | None = None
        # Acknowledgements received and not settled yet; whether a settlement is scheduled,
        # since when (loop time), and whether a batch was published since it was last put off.
        self._arrived: list[tuple[str, bytes]] = []
        self._settling = False
        self._settling_since = 0.0
        self._published = False

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        # No pending limit worth hitting: at most the dispatcher's window awaits its acks.
        self._sub = await self._nc.subscribe(
            self._prefix + "*", cb=self._on_ack, pending_msgs_limit=1_000_000
        )

    async def stop(self) -> None:
        """Unsubscribe; every acknowledgement still awaited fails with ConnectionClosedError."""
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:
                log.debug("acknowledgement inbox unsubscribe failed: %r", exc)
            self._sub = None
        self._settle()
        waiting, self._waiting = self._waiting, {}
        for key, on_ack in waiting.items():
            on_ack(key, ConnectionClosedError())

    @property
    def waiting(self) -> int:
        """How many acknowledgements are awaited."""
        return len(self._waiting)

    def forget(self, key: str) -> None:
        """Stop waiting for the acknowledgement of `key` (given up on): it is not reported."""
        self._waiting.pop(key, None)

    async def publish_async(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Publish one message; the returned future resolves with its acknowledgement or fails
        with the error."""
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()

        def on_ack(key: str, outcome: Acked | BaseException) -> None:
            if future.done():
                return
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(
                    PubAck(
                        stream=outcome.stream,
                        seq=outcome.seq,
                        domain=outcome.domain,
                        duplicate=outcome.duplicate,
                    )
                )

        (key,) = await self.publish_many([(subject, header_block(headers or {}), payload)], on_ack)
        future.add_done_callback(lambda _: self.forget(key))
        return future

    async def publish_many(self, messages: Sequence[Outgoing], on_ack: OnAck) -> list[str]:
        """Publish every message of `messages` (subject, `header_block`, payload) in one write;
        returns their keys, in order, and calls `on_ack` for each when its acknowledgement
        arrives (never from inside this call). A message that cannot be sent (a malformed
        subject, too large) is left out and reported as failed.

        Like `Client.publish` on a connection without an outbound buffer (the scheduler's), it
        raises `OutboundBufferLimitError` while disconnected, and then none of the batch is
        sent: the batch is queued in one synchronous step, so a connection cannot drop half way
        through it."""
        assert self._sub is not None, "AckedPublisher.start() first"
        self._published = True
        nc = self._nc
        if nc.is_closed:
            raise ConnectionClosedError
        if nc.is_draining_pubs:
            raise ConnectionDrainingError
        if not nc.is_connected:
            raise OutboundBufferLimitError
        max_payload = nc.max_payload
        waiting = self._waiting
        prefix = self._prefix
        keys: list[str] = []
        commands: list[bytes] = []
        refused: list[tuple[str, BaseException]] = []
        size = 0
        for subject, headers, payload in messages:
            key = f"{prefix}{next(self._tokens)}"
            keys.append(key)
            if not subject or _BAD_SUBJECT.search(subject):
                refused.append((key, BadSubjectError()))
                continue
            if len(payload) > max_payload:
                refused.append((key, MaxPayloadError()))
                continue
            # The HPUB command as nats-py's `hpub_cmd` builds it.
            head = len(headers)
            commands.append(f"HPUB {subject} {key} {head} {head + len(payload)}\r\n".encode())
            commands.append(headers)
            commands.append(payload)
            commands.append(b"\r\n")
            size += len(payload)
            waiting[key] = on_ack
        if commands:
            try:
                await self._write(b"".join(commands))
            except BaseException:
                for key in keys:
                    waiting.pop(key, None)
                raise
            nc.stats["out_msgs"] += len(commands) // 4
            nc.stats["out_bytes"] += size
        for key, error in refused:
            asyncio.get_running_loop().call_soon(on_ack, key, error)
        return keys

    async def _write(self, commands: bytes) -> None:
        """Queue `commands` and wake the connection's writer: what `Client._send_publish` does
        with the one command it builds (nats-py has no public call for bytes already built;
        tests/scheduler/test_dispatch.py holds it to the real server)."""
        nc = self._nc
        await nc._send_command(commands)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()

    async def _on_ack(self, msg: Msg) -> None:
        self._arrived.append((msg.subject, msg.data))
        if not self._settling:
            self._settling = True
            self._published = False
            loop = asyncio.get_running_loop()
            self._settling_since = loop.time()
            loop.call_soon(self._settle_when_paused)

    def _settle_when_paused(self) -> None:
        """Settle now unless a batch was published since the last look (then look again at the
        next turn of the loop), for at most SETTLE_WITHIN seconds."""
        loop = asyncio.get_running_loop()
        if self._published and loop.time() - self._settling_since < SETTLE_WITHIN:
            self._published = False
            loop.call_soon(self._settle_when_paused)
            return
        self._settle()

    def _settle(self) -> None:
        """Report the acknowledgements that arrived since the last settlement."""
        self._settling = False
        arrived, self._arrived = self._arrived, []
        waiting = self._waiting
        for key, data in arrived:
            on_ack = waiting.pop(key, None)
            if on_ack is None:
                continue
            try:
                on_ack(key, _outcome(data))
            except Exception:
                log.exception("handling the acknowledgement of %s failed", key)


def _outcome(data: bytes) -> Acked | BaseException:
    """The acknowledgement in a reply's payload, or the error it reports."""
    if not data:
        # A status message: 503 means no stream listens on the subject.
        return NoStreamResponseError()
    try:
        ack = _ack_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return exc
    if ack.error is not None:
        return APIError(code=ack.error.code, err_code=ack.error.err_code, description=ack.error.description)
    return ack
